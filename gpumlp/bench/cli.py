"""``gpumlp bench``: argument parsing; the work is in :mod:`gpumlp.bench.runner`."""

from __future__ import annotations

import argparse
import dataclasses
import time

from ..backends import available_backends, cupy_unavailable_reason
from ..backends.cuda.kernel_bench import (BATCHES, SGEMM_SIZE, markdown, run_kernel_bench,
                                          speedups)
from ..cli_args import (HelpFormatter, OptionError, check_writable_dir, integer, integers, names,
                        real)
from ..data import DATASETS
from .environment import environment, load_average
from .protocol import CONFIGS, FULL_BATCHES, QUICK_BATCHES
from .report import (markdown_table, percent_of_peak, ratios, reserve_stem, write_outputs,
                     write_text)
from . import runner  # run_plan through the module: tests substitute it
from .runner import PEERS, Plan
from .tta import add_tta_arguments


def add_bench_command(commands) -> None:
    bench = commands.add_parser(
        "bench", help="measure training and inference throughput (CPU, GPU and peers)",
        description="Measure training and inference samples/s of MNIST-sized MLPs on every "
                    "available backend, optionally beside PyTorch and scikit-learn on the "
                    "same data, shapes and optimizer (Adam, float32). The quick default "
                    "takes about two minutes on a 2-core CPU; --full runs the whole protocol. "
                    "Results go to new files (bench-DATE-DEVICE.json, .md, .png, numbered "
                    "-2, -3, ... when taken): no earlier result is ever overwritten.",
        formatter_class=HelpFormatter)
    bench.add_argument("--full", action="store_true",
                       help=f"both configs, batches {', '.join(map(str, FULL_BATCHES))}")
    bench.add_argument("--configs", default=None, metavar="LIST",
                       help=f"comma-separated subset of {', '.join(CONFIGS)} "
                            "(default: all of them)")
    bench.add_argument("--batches", default=None, metavar="LIST",
                       help="comma-separated batch sizes (default: "
                            f"{','.join(map(str, QUICK_BATCHES))}, with --full "
                            f"{','.join(map(str, FULL_BATCHES))})")
    bench.add_argument("--backends", default="available", metavar="LIST",
                       help=f"comma-separated gpumlp backends ({', '.join(BACKENDS)}), or "
                            "'available' for those that run here (the default); one that "
                            "cannot run here is an error")
    bench.add_argument("--peers", default="", metavar="LIST",
                       help=f"comma-separated peers to time alongside: {', '.join(PEERS)}")
    bench.add_argument("--repeats", type=integer("--repeats", 1), default=5,
                       help="timed repeats (the median is kept)")
    bench.add_argument("--min-time", type=real("--min-time", 0, low_open=True), default=None,
                       metavar="SECONDS",
                       help="seconds per repeat at least (default 0.2, with --full 0.5)")
    bench.add_argument("--dataset", default=None, choices=_dataset_names(),
                       help="time on a real dataset instead of synthetic data")
    bench.add_argument("--kernels", action="store_true",
                       help="instead: time each layer operation as fused kernel, cuBLAS + "
                            "fused epilogue and plain CuPy at the protocol's layer shapes "
                            "(needs a GPU)")
    bench.add_argument("--out", default=".", metavar="DIR",
                       help="folder for the JSON, markdown and PNG (created if missing)")

    add_tta_arguments(bench, otherwise=_run_bench)  # --tta: time to accuracy instead


def _run_kernel_bench(args: argparse.Namespace) -> int:
    import json
    import re
    import sys

    reason = cupy_unavailable_reason()
    if reason is not None:
        raise OptionError(f"--kernels needs a CUDA GPU: {reason}")
    batches = _batches(args.batches) or list(BATCHES)
    check_writable_dir("--out", args.out)
    env = environment({})
    results = run_kernel_bench(batches=batches, repeats=args.repeats, out=sys.stdout,
                               sgemm_size=SGEMM_SIZE)
    rows = speedups(results)
    table = markdown(rows, results)
    print(table)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", env["gpu"]["device_name"]).strip("-").lower()[:40]
    stem = reserve_stem(args.out, f"kernels-{env['date'][:10]}-{slug}", (".json", ".md"))
    write_text(stem.with_name(stem.name + ".json"), json.dumps(
        {"environment": env, "results": results, "speedups": rows}, indent=2))
    write_text(stem.with_name(stem.name + ".md"), table)
    print(f"json: {stem}.json\nmarkdown: {stem}.md")
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    if args.kernels:
        return _run_kernel_bench(args)

    # Everything is checked before the first measurement: a run takes minutes.
    configs = (_parse(names("--configs", list(CONFIGS)), args.configs) if args.configs
               else list(CONFIGS))
    batches = _batches(args.batches) or list(FULL_BATCHES if args.full else QUICK_BATCHES)
    backends = selected_backends(args.backends)
    peers = _parse(names("--peers", PEERS), args.peers) if args.peers else []
    check_writable_dir("--out", args.out)
    plan = Plan(configs, batches, backends, peers, args.repeats,
                args.min_time or (0.5 if args.full else 0.2), args.dataset)
    peer_modules = {}
    for name in peers:
        try:
            peer_modules[name] = __import__(name)
        except ImportError:
            pass
    env = environment(peer_modules)  # before the run: the commit and tree it measures
    started = time.monotonic()
    results = runner.run_plan(plan)
    env["run_seconds"] = round(time.monotonic() - started, 1)
    env["load_average_after"] = load_average()
    ratios(results)
    percent_of_peak(results, env)
    print()
    print(markdown_table(results, env))
    if not any("error" not in r for r in results):
        raise RuntimeError(f"every measurement failed ({len(results)} of {len(results)}); "
                           "no results file written")
    paths = write_outputs(results, env, dataclasses.asdict(plan), args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    print(f"measured in {env['run_seconds']:.0f} s")
    if "plot" not in paths:
        print("plot: skipped (pip install matplotlib, or gpumlp[plot])")
    failed = sum("error" in r for r in results)
    if failed:
        print(f"{failed} of {len(results)} measurements failed (see the table)")
    return 0


def selected_backends(text: str) -> list[str]:
    """The gpumlp backends ``--backends TEXT`` asks for: ``available`` means those that run
    here; a named backend that cannot run here is an error that says why (before any work).
    """
    reasons = available_backends()
    if text == "available":
        return [name for name, reason in reasons.items() if reason is None]
    backends = _parse(names("--backends", BACKENDS, extra=("available",)), text)
    for name in backends:
        if reasons.get(name) is not None:
            raise OptionError(f"--backends {name} is unavailable: {reasons[name]}")
    return list(dict.fromkeys(backends))


#: The gpumlp backends a benchmark can time.
BACKENDS = ("numpy", "cupy")


def _dataset_names() -> list[str]:
    return list(DATASETS)


def _batches(text: str | None) -> list[int]:
    return _parse(integers("--batches", 1), text) if text else []


def _parse(parse, text: str):
    """Apply an argparse ``type`` here, turning its error into an :class:`OptionError`."""
    try:
        return parse(text)
    except argparse.ArgumentTypeError as exc:
        raise OptionError(str(exc)) from None
