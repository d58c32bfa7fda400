"""``gpumlp bench``: argument parsing; the work is in :mod:`gpumlp.bench.runner`."""

from __future__ import annotations

import argparse


def add_bench_command(commands) -> None:
    bench = commands.add_parser("bench", help="measure training and inference throughput")
    bench.set_defaults(run=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    raise RuntimeError("the benchmark runner is not built yet")
