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
    bench.add_argument("--out", default=".", help="folder for the JSON, markdown and PNG")
    bench.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
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
    results = run_plan(plan)
    ratios(results)
    peer_modules = {}
    for name in peers:
        try:
            peer_modules[name] = __import__(name)
        except ImportError:
            pass
    env = environment(peer_modules)
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
