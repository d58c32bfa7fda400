"""``gpumlp bench``: argument parsing; the work is in :mod:`gpumlp.bench.runner`."""

from __future__ import annotations

import argparse
import dataclasses

from .protocol import CONFIGS, FULL_BATCHES, QUICK_BATCHES


def add_bench_command(commands) -> None:
    bench = commands.add_parser(
        "bench", help="measure training and inference throughput (CPU, GPU and peers)",
        description="Measure training and inference samples/s of MNIST-sized MLPs on every "
                    "available backend, optionally beside PyTorch and scikit-learn on the "
                    "same data, shapes and optimizer (Adam, float32). The quick default "
                    "takes about two minutes on a 2-core CPU; --full runs the whole protocol.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    bench.add_argument("--full", action="store_true",
                       help=f"both configs, batches {', '.join(map(str, FULL_BATCHES))}")
    bench.add_argument("--configs", default=None,
                       help=f"comma-separated subset of {', '.join(CONFIGS)}")
    bench.add_argument("--batches", default=None, help="comma-separated batch sizes")
    bench.add_argument("--backends", default="available",
                       help="comma-separated gpumlp backends (numpy, cupy), or 'available'")
    bench.add_argument("--peers", default="", help="comma-separated peers: torch, sklearn")
    bench.add_argument("--repeats", type=int, default=5, help="timed repeats (median kept)")
    bench.add_argument("--min-time", type=float, default=None,
                       help="seconds per repeat at least (default 0.2, --full 0.5)")
    bench.add_argument("--dataset", default=None,
                       help="time on a real dataset (e.g. fashion-mnist) instead of synthetic")
    bench.add_argument("--kernels", action="store_true",
                       help="instead: time each layer operation as fused kernel, cuBLAS + "
                            "fused epilogue and plain CuPy at the protocol's layer shapes "
                            "(needs a GPU)")
    bench.add_argument("--out", default=".", help="folder for the JSON, markdown and PNG")
    from .tta import add_tta_arguments

    add_tta_arguments(bench, otherwise=_run_bench)  # --tta: time to accuracy instead


def _run_kernel_bench(args: argparse.Namespace) -> int:
    import json
    import re
    import sys
    from pathlib import Path

    from ..atomic import atomic_write
    from ..backends import cupy_unavailable_reason
    from .environment import environment
    from .kernel_bench import BATCHES, markdown, run_kernel_bench, speedups

    reason = cupy_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"--kernels needs a CUDA GPU: {reason}")
    batches = ([_positive_int("--batches", b) for b in _split(args.batches)] if args.batches
               else list(BATCHES))
    env = environment({})
    results = run_kernel_bench(batches=batches, repeats=args.repeats, out=sys.stdout)
    rows = speedups(results)
    table = markdown(rows, results)
    print(table)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["gpu"]["device_name"]).strip("-").lower()[:40]
    stem = Path(args.out) / f"kernels-{env['date'][:10]}-{slug}"
    with atomic_write(f"{stem}.json") as handle:
        handle.write(json.dumps({"environment": env, "results": results, "speedups": rows},
                                indent=2).encode())
    with atomic_write(f"{stem}.md") as handle:
        handle.write(table.encode())
    print(f"json: {stem}.json\nmarkdown: {stem}.md")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    if args.kernels:
        return _run_kernel_bench(args)
    from ..backends import available_backends
    from .environment import environment
    from .report import markdown_table, percent_of_peak, ratios, write_outputs
    from .runner import PEERS, Plan, run_plan

    configs = _split(args.configs) or (list(CONFIGS) if args.full else ["mlp-256", "mlp-512"])
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        raise ValueError(f"--configs has unknown {unknown}; choose from {list(CONFIGS)}")
    batches = ([_positive_int("--batches", b) for b in _split(args.batches)] if args.batches
               else list(FULL_BATCHES if args.full else QUICK_BATCHES))
    if args.backends == "available":
        backends = [name for name, reason in available_backends().items() if reason is None]
    else:
        backends = _split(args.backends)
    peers = _split(args.peers)
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise ValueError(f"--peers has unknown {bad}; choose from {list(PEERS)}")
    if args.repeats < 1:
        raise ValueError(f"--repeats={args.repeats} must be at least 1")
    plan = Plan(configs, batches, backends, peers, args.repeats,
                args.min_time or (0.5 if args.full else 0.2), args.dataset)
    peer_modules = {}
    for name in peers:
        try:
            peer_modules[name] = __import__(name)
        except ImportError:
            pass
    env = environment(peer_modules)  # before the run: the commit and tree it measures
    results = run_plan(plan)
    ratios(results)
    percent_of_peak(results, env)
    print()
    print(markdown_table(results, env))
    paths = write_outputs(results, env, dataclasses.asdict(plan), args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    if "plot" not in paths:
        print("plot: skipped (pip install matplotlib, or gpumlp[plot])")
    return 0


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _positive_int(name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} value {text!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{name} value {value} must be positive")
    return value
