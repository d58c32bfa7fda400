"""``gpumlp selftest``: check a GPU install end to end, against the NumPy backend.

What a user runs after installing gpumlp on a CUDA machine.  It reports CuPy, CUDA, driver
and device; compiles every kernel instantiation; runs every fused operation on the device at
the benchmark protocol's shapes (784-256-256-10 and 784-512-512-10 at batch 256), on both GEMM
paths (our fused GEMM, cuBLAS + fused epilogue), in float32 and float64, with and without
dropout, and compares each with the NumPy backend; then trains a few steps replayed from CUDA
graphs against the same steps launched eagerly, and checks that the replays allocate nothing.
It prints one table and exits 0 when everything matches, 1 on any mismatch, and 2 (one line
saying why) where there is no CuPy or no device.

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
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ...dropout import Dropout, keep_mask

#: Exit statuses: all matched, a mismatch, cannot run here.
PASSED, MISMATCH, UNAVAILABLE = 0, 1, 2
#: The benchmark protocol's networks and batch (DESIGN.md §8).
SHAPES: dict[str, list[int]] = {"mlp-256": [784, 256, 256, 10], "mlp-512": [784, 512, 512, 10]}
BATCH = 256


def atomic_sum_tolerance(dtype: Any, kernel: str, shape: tuple[int, int]) -> float:
    """Relative tolerance of a loss summed on the device with float ``atomicAdd``.

    Each block sums its terms in a tree, then adds its partial sum atomically in an order
    that changes from run to run: the result differs from NumPy's pairwise sum by up to one
    rounding per block plus the two trees' roundings (the terms are non-negative, so no
    cancellation): ``(blocks + 2 log2(terms)) * eps``, never below :func:`tolerance`.
    """
    from . import kernels

    blocks = kernels.launch_config(kernel, *shape)[0][0]
    terms = max(2, int(np.prod(shape)))
    bound = (blocks + 2 * np.log2(terms)) * float(np.finfo(np.dtype(dtype)).eps)
    return max(tolerance(dtype), float(bound))


def tolerance(dtype: Any) -> float:
    """Relative tolerance (of the largest magnitude) for one comparison with NumPy.

    The GPU contracts ``a*b+c`` into FMAs and sums in another order than BLAS: float32
    results agree to a few ulps of the largest term over sums of up to 784 products;
    float64 far tighter.
    """
    return 2e-5 if np.dtype(dtype) == np.float32 else 1e-12


@dataclass
class Check:
    """One row of the table: a comparison, its largest error and whether it passed."""

    name: str
    dtype: str = ""
    path: str = ""
    dropout: str = ""
    error: float = 0.0
    limit: float = 0.0
    passed: bool = True
    note: str = ""


class Report:
    """The rows so far; one row per (check, dtype, path, dropout) keeps the worst error."""

    def __init__(self) -> None:
        self.rows: dict[tuple, Check] = {}

    def add(self, check: Check) -> None:
        key = (check.name, check.dtype, check.path, check.dropout)
        old = self.rows.get(key)
        if old is None or (old.passed and (not check.passed or check.error > old.error)):
            self.rows[key] = check

    def compare(self, name: str, got: Any, want: np.ndarray, dtype: Any, path: str = "",
                dropout: str = "", limit: float | None = None) -> None:
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        limit = tolerance(dtype) if limit is None else limit
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        finite = bool(np.isfinite(got).all())
        error = float(np.abs(got - want).max(initial=0.0)) / scale if finite else float("inf")
        self.add(Check(name, np.dtype(dtype).name, path, dropout, error, limit,
                       finite and error <= limit, "" if finite else "non-finite output"))

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.rows.values())

    def table(self) -> str:
        lines = [f"{'check':<30} {'dtype':<8} {'path':<7} {'dropout':<8} {'max error':>10} "
                 f"{'limit':>8}  result", "-" * 86]
        for c in self.rows.values():
            error = f"{c.error:10.2e}" if c.limit else f"{'':>10}"
            limit = f"{c.limit:8.0e}" if c.limit else f"{'':>8}"
            result = "ok" if c.passed else "MISMATCH"
            lines.append(f"{c.name:<30} {c.dtype:<8} {c.path:<7} {c.dropout:<8} {error} "
                         f"{limit}  {result}" + (f"  ({c.note})" if c.note else ""))
        return "\n".join(lines)


def unavailable_reason() -> str | None:
    """Why the self-test cannot run here (no CuPy, no device), or ``None``."""
    from .. import cupy_unavailable_reason

    return cupy_unavailable_reason()


# ------------------------------------------------------------------------------ checks
def check_compile(report: Report) -> None:
    """Compile (or load from CuPy's cache) every source with all its instantiations."""
    from . import kernels

    for source in kernels.sources():
        start = time.perf_counter()
        try:
            kernels.load_module(source)
        except kernels.KernelsUnavailable as exc:
            report.add(Check(f"compile {source}", passed=False, note=str(exc)[:200]))
            continue
        count = len(kernels.name_expressions(source))
        report.add(Check(f"compile {source}", note=f"{count} instantiations, "
                                                  f"{time.perf_counter() - start:.1f} s"))


def check_operations(report: Report, shapes: dict[str, list[int]], batch: int) -> None:
    """Every fused operation against the NumPy backend on both GEMM paths."""
    from .. import get_backend
    from .backend import CupyBackend

    cpu = get_backend("numpy")
    for path in ("fused", "cublas"):
        gpu = CupyBackend(gemm_path=path)
        cp = gpu.xp
        for dtype in (np.float32, np.float64):
            rng = np.random.default_rng(0)
            for sizes in shapes.values():
                for drop in (None, Dropout(keep=0.8, seed=11, counter=3)):
                    _layer_checks(report, cpu, gpu, cp, rng, sizes, batch, dtype, path, drop)
            size = max(k * m + m for sizes in shapes.values()
                       for k, m in zip(sizes[:-1], sizes[1:]))  # the largest layer
            _loss_and_optimizer_checks(report, cpu, gpu, cp, rng, batch, dtype, path, size)


def _layer_checks(report, cpu, gpu, cp, rng, sizes, batch, dtype, path, drop) -> None:
    label = "none" if drop is None else f"keep={drop.keep}"
    for layer, (k, m) in enumerate(zip(sizes[:-1], sizes[1:])):
        x = rng.normal(size=(batch, k)).astype(dtype)
        w = (rng.normal(size=(k, m)) * k ** -0.5).astype(dtype)
        b = rng.normal(size=m).astype(dtype)
        layer_drop = drop if layer < len(sizes) - 2 else None
        want = cpu.affine_act(x, w, b, "relu", np.empty((batch, m), dtype), layer_drop)
        got = gpu.affine_act(cp.asarray(x), cp.asarray(w), cp.asarray(b), "relu",
                             cp.full((batch, m), np.nan, dtype), layer_drop)
        report.compare("affine_act (relu)", cp.asnumpy(got), want, dtype, path, label)
        h = rng.normal(size=(batch, m)).astype(dtype)
        dw, db = np.empty((k, m), dtype), np.empty(m, dtype)
        cpu.weight_grads(x, h, dw, db, w, 1e-4)
        dw_d, db_d = cp.full((k, m), np.nan, dtype), cp.full(m, np.nan, dtype)
        gpu.weight_grads(cp.asarray(x), cp.asarray(h), dw_d, db_d, cp.asarray(w), 1e-4)
        report.compare("weight_grads (dw)", cp.asnumpy(dw_d), dw, dtype, path)
        report.compare("weight_grads (db)", cp.asnumpy(db_d), db, dtype, path)
        if layer > 0:  # the sensitivity of the layer below, through this layer's weights
            a = np.maximum(x, 0)
            if drop is not None:  # the layer below's output as training leaves it: dropped
                a = a * keep_mask(np, a.shape, drop) / a.dtype.type(drop.keep)
            want = cpu.backprop_hidden(h, w, a, "relu", np.empty((batch, k), dtype), drop)
            got = gpu.backprop_hidden(cp.asarray(h), cp.asarray(w), cp.asarray(a), "relu",
                                      cp.full((batch, k), np.nan, dtype), drop)
            report.compare("backprop_hidden (relu)", cp.asnumpy(got), want, dtype, path, label)


def _loss_and_optimizer_checks(report, cpu, gpu, cp, rng, batch, dtype, path, size) -> None:
    classes = 10
    z = (rng.normal(size=(batch, classes)) * 3).astype(dtype)
    t = np.eye(classes, dtype=dtype)[rng.integers(0, classes, batch)]
    for name, target in (("softmax_xent", t), ("sigmoid_bce", t),
                         ("squared_error", rng.uniform(size=z.shape).astype(dtype))):
        h = np.empty_like(z)
        want = float(getattr(cpu, name)(z, target, h))
        h_d = cp.full(z.shape, np.nan, dtype)
        got = float(getattr(gpu, name)(cp.asarray(z), cp.asarray(target), h_d))
        limit = atomic_sum_tolerance(dtype, name, z.shape)
        report.compare(f"{name} (loss)", got, want, dtype, path, limit=limit)
        report.compare(f"{name} (gradient)", cp.asnumpy(h_d), h, dtype, path)
    # The output layer with its loss: one fused kernel where a block holds whole rows.
    x = rng.normal(size=(batch, 64)).astype(dtype)
    w = (rng.normal(size=(64, classes)) / 8).astype(dtype)
    b = rng.normal(size=classes).astype(dtype)
    h = np.empty_like(z)
    want = float(cpu.affine_softmax_xent(x, w, b, t, np.empty_like(z), h))
    h_d = cp.full(z.shape, np.nan, dtype)
    got = float(gpu.affine_softmax_xent(cp.asarray(x), cp.asarray(w), cp.asarray(b),
                                        cp.asarray(t), cp.empty(z.shape, dtype), h_d))
    limit = max(tolerance(dtype), atomic_sum_tolerance(dtype, "softmax_xent", z.shape))
    report.compare("affine_softmax_xent (loss)", got, want, dtype, path, limit=limit)
    report.compare("affine_softmax_xent (gradient)", cp.asnumpy(h_d), h, dtype, path)
    out = gpu.softmax(cp.asarray(z), cp.full(z.shape, np.nan, dtype))
    report.compare("softmax", cp.asnumpy(out), cpu.softmax(z, np.empty_like(z)), dtype, path)
    index = rng.permutation(batch)[: batch // 2].astype(np.int64)
    got = gpu.gather_rows(cp.asarray(z), cp.asarray(index),
                          cp.full((len(index), classes), np.nan, dtype))
    report.compare("gather_rows", cp.asnumpy(got), z[index], dtype, path, limit=0.0)
    for solver in ("adam", "sgd"):
        p, g = rng.normal(size=size).astype(dtype), rng.normal(size=size).astype(dtype)
        s1, s2 = np.zeros(size, dtype), np.zeros(size, dtype)
        p_d, g_d, s1_d, s2_d = (cp.asarray(a) for a in (p, g, s1, s2))
        for step in (1, 2):
            if solver == "adam":
                cpu.adam_step(p, g, s1, s2, 1e-3, 0.9, 0.999, 1e-8, step)
                gpu.adam_step(p_d, g_d, s1_d, s2_d, 1e-3, 0.9, 0.999, 1e-8, step)
            else:
                cpu.sgd_step(p, g, s1, 0.05, 0.9, True)
                gpu.sgd_step(p_d, g_d, s1_d, 0.05, 0.9, True)
        report.compare(f"{solver}_step", cp.asnumpy(p_d), p, dtype, path)


def check_graph_training(report: Report, sizes: list[int], batch: int) -> None:
    """A few steps replayed from CUDA graphs against the same steps launched eagerly, and
    the memory pool's bytes over the replays."""
    from .backend import CupyBackend
    from ...network import Network
    from ...optim import Adam
    from ...training import Trainer

    backend = CupyBackend(gemm_path="fused")
    cp = backend.xp
    rng = np.random.default_rng(1)
    n = 4 * batch + batch // 3  # full batches and a partial one
    X = cp.asarray(rng.normal(size=(n, sizes[0])).astype(np.float32))
    T = cp.asarray(np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], n)])
    trainers = {}
    for mode in ("off", "on"):
        net = Network(sizes, activation="relu", backend=backend, seed=0)
        trainers[mode] = Trainer(net, Adam(backend, net.params, 1e-3), batch_size=batch,
                                 alpha=1e-4, dropout=0.1, seed=0, cuda_graph=mode)
    for epoch in range(2):
        for trainer in trainers.values():
            trainer.run_epoch(X, T)
        report.compare("graph vs eager (epoch loss)", trainers["on"].history.loss[-1],
                       trainers["off"].history.loss[-1], "float32", "fused", "keep=0.9",
                       limit=1e-4)
    report.compare("graph vs eager (weights)", trainers["on"].network.get_flat_params(),
                   trainers["off"].network.get_flat_params(), "float32", "fused", "keep=0.9",
                   limit=1e-4)
    runner = trainers["on"]._graph_runner
    runner = runner[1] if isinstance(runner, tuple) else runner
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


# ------------------------------------------------------------------------------- driver
def describe_device() -> dict[str, Any]:
    from .backend import CupyBackend

    info = CupyBackend().describe()
    info["cupy"] = info.pop("version", "unknown")
    return info


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
    from ...bench.environment import git_commit

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
