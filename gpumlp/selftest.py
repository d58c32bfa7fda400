"""``gpumlp selftest``: check a GPU install end to end, against the NumPy backend.

What a user runs after installing gpumlp on a CUDA machine.  It reports CuPy, CUDA, driver
and device; compiles every kernel instantiation; runs every fused operation on the device at
the benchmark protocol's shapes (784-256-256-10 and 784-512-512-10 at batch 256), on both GEMM
paths (our fused GEMM, cuBLAS + fused epilogue), in float32 and float64, with and without
dropout, and compares each with the NumPy backend (:mod:`gpumlp.backends.cuda.selftest`);
then trains a few steps replayed from CUDA graphs against the same steps launched eagerly,
with the captured GEMMs fused and on captured cuBLAS / cuBLASLt (with dropout, and without:
cuBLASLt's ReLU epilogues), and checks that the replays allocate nothing.  It prints one
table and exits 0 when everything matches, 1 on any mismatch, and 2 (one line saying why)
where there is no CuPy or no device.

Run it under NVIDIA's compute-sanitizer to check memory accesses, shared-memory races and
barrier use of every kernel on the way (see the README, "Checking a GPU install")::

    compute-sanitizer --tool memcheck gpumlp selftest

Examples
--------
>>> from gpumlp import selftest
>>> selftest.tolerance("float64")
1e-12
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any, Callable, Sequence

import numpy as np

from .backends.cuda import selftest as device_checks
from .backends.cuda import routes as routes_module
from .backends.cuda.backend import CupyBackend
from .backends.cuda.selftest import (BATCH, SHAPES, Check, Report, atomic_sum_tolerance,
                                     check_compile, check_operations, describe_device,
                                     tolerance)
from .bench.environment import git_commit
from .network import Network
from .optim import Adam
from .training import Trainer

#: Exit statuses: all matched, a mismatch, cannot run here.
PASSED, MISMATCH, UNAVAILABLE = 0, 1, 2

__all__ = ["run", "main", "unavailable_reason", "tolerance", "atomic_sum_tolerance",
           "check_graph_training", "add_selftest_command", "PASSED", "MISMATCH", "UNAVAILABLE"]


def unavailable_reason() -> str | None:
    """Why the self-test cannot run here (no CuPy, no device), or ``None``."""
    return device_checks.unavailable_reason()


#: The captured steps compared with eager ones: (GEMM path, dropout).  With ``cublas`` the
#: graph records cuBLAS + epilogue kernels, cuBLASLt's bias-gradient epilogue for the weight
#: gradients and, for ReLU layers without dropout, cuBLASLt's ReLU and dReLU epilogues.
GRAPH_ROUTES = (("fused", 0.1), ("cublas", 0.1), ("cublas", 0.0))


def check_graph_training(report: Report, sizes: list[int], batch: int) -> None:
    """A few steps replayed from CUDA graphs against the same steps launched eagerly, on
    each of :data:`GRAPH_ROUTES`, and the memory pool's bytes over the replays."""
    runs = [_graph_vs_eager(report, sizes, batch, path, dropout)
            for path, dropout in GRAPH_ROUTES]
    _check_replays_allocate_nothing(report, *runs[0])  # fused, keep=0.9


def _graph_vs_eager(report: Report, sizes: list[int], batch: int, path: str,
                    dropout: float) -> tuple[Any, Any]:
    backend = CupyBackend(gemm_path=path)
    cp = backend.xp
    rng = np.random.default_rng(1)
    n = 4 * batch + batch // 3  # full batches and a partial one
    X = cp.asarray(rng.normal(size=(n, sizes[0])).astype(np.float32))
    T = cp.asarray(np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], n)])
    keep = f"keep={1 - dropout:g}"
    trainers = {}
    for mode in ("off", "on"):
        net = Network(sizes, activation="relu", backend=backend, seed=0)
        trainers[mode] = Trainer(net, Adam(backend, net.params, 1e-3), batch_size=batch,
                                 alpha=1e-4, dropout=dropout, seed=0, cuda_graph=mode)
    for epoch in range(2):
        for trainer in trainers.values():
            trainer.run_epoch(X, T)
        report.compare("graph vs eager (epoch loss)", trainers["on"].history.loss[-1],
                       trainers["off"].history.loss[-1], "float32", path, keep, limit=1e-4)
    report.compare("graph vs eager (weights)", trainers["on"].network.get_flat_params(),
                   trainers["off"].network.get_flat_params(), "float32", path, keep,
                   limit=1e-4)
    if path == "cublas":
        routes = list(routes_module.choices(backend).values())
        paths = backend.routes
        report.add(Check("captured GEMMs on cuBLAS(Lt)", "float32", path, keep,
                         passed="direct" in routes,
                         note=f"{routes.count('direct')} of {len(routes)}"
                              + (f"; {paths.unavailable}" if paths.unavailable else "")))
    return trainers["on"].step_graphs, cp


def _check_replays_allocate_nothing(report: Report, runner: Any, cp: Any) -> None:
    if runner is None:
        report.add(Check("graph replays", "float32", "fused", passed=False,
                         note="no graph runner was built"))
        return
    pool = cp.get_default_memory_pool()
    runner.synchronize()
    before = pool.used_bytes(), pool.total_bytes()
    runner.run_steps(runner.full_steps)
    runner.synchronize()
    after = pool.used_bytes(), pool.total_bytes()
    report.add(Check("graph replays allocate nothing", "float32", "fused", "keep=0.9",
                     passed=after == before,
                     note="" if after == before else f"pool bytes {before} -> {after}"))


def run(shapes: dict[str, list[int]] | None = None, batch: int = BATCH,
        json_path: str | None = None, out: Callable[[str], Any] = print) -> int:
    """Run every check, print the environment and one table; returns the exit status."""
    reason = unavailable_reason()
    if reason is not None:
        line = " ".join(str(reason).split())
        print(f"gpumlp selftest: cannot run here: {line}", file=sys.stderr)
        return UNAVAILABLE
    shapes = shapes or SHAPES
    env = describe_device()
    for key in ("device_name", "compute_capability", "cupy", "cuda_runtime", "cuda_driver",
                "kernels", "gemm_path"):
        out(f"{key:>20}: {env.get(key)}")
    report = Report()
    check_compile(report)
    check_operations(report, shapes, batch)
    check_graph_training(report, next(iter(shapes.values())), batch)
    out(report.table())
    failed = sum(not c.passed for c in report.rows.values())
    out(f"{len(report.rows) - failed} of {len(report.rows)} checks passed"
        + ("" if not failed else f"; {failed} MISMATCH"))
    if json_path:
        _write_json(json_path, {"environment": _jsonable(env), "shapes": shapes, "batch": batch,
                                "passed": report.passed,
                                "checks": [asdict(c) for c in report.rows.values()]})
    return PASSED if report.passed else MISMATCH


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _write_json(path: str, payload: dict) -> None:
    """Write ``payload`` atomically (a reader never sees half a file)."""
    payload = {"commit": git_commit(), **payload}
    partial = f"{path}.{os.getpid()}.partial"
    with open(partial, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, default=str)
        handle.write("\n")
    os.replace(partial, path)


def add_selftest_command(commands: Any) -> None:
    """Register ``gpumlp selftest`` on the CLI's sub-command parsers."""
    parser = commands.add_parser(
        "selftest", help="check the GPU install: compile every kernel, compare every fused "
                         "operation and graph training with NumPy",
        description="Check a GPU install: report CuPy, CUDA, driver and device, compile every "
                    "kernel, run every fused operation at the benchmark shapes (both GEMM "
                    "paths, float32 and float64, with and without dropout) against NumPy, and "
                    "train a few CUDA-graph steps against eager ones. Exit status 0: all "
                    "matched; 1: a mismatch; 2: no CuPy or no CUDA device here. Run it under "
                    "`compute-sanitizer --tool memcheck|racecheck|synccheck` for a deeper check.")
    _options(parser)
    parser.set_defaults(run=_run_args)


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the environment and every check as JSON to PATH")
    parser.add_argument("--quick", action="store_true",
                        help="mlp-256 only (for slow runs, e.g. under compute-sanitizer)")


def _run_args(args: argparse.Namespace) -> int:
    shapes = {"mlp-256": SHAPES["mlp-256"]} if args.quick else SHAPES
    return run(shapes=shapes, json_path=args.json)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gpumlp.selftest [--json PATH] [--quick]``."""
    parser = argparse.ArgumentParser(prog="gpumlp selftest")
    _options(parser)
    return _run_args(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
