"""The device half of ``gpumlp selftest``: every kernel compiled, every fused operation
against the NumPy backend.

At the benchmark protocol's shapes (784-256-256-10 and 784-512-512-10 at batch 256), on both
GEMM paths (our fused GEMM, cuBLAS + fused epilogue), in float32 and float64, with and without
dropout, each operation of the CuPy backend is compared with the NumPy backend's; the rows go
into one :class:`Report`.  The command itself, and its check of captured training steps
against eager ones, is :mod:`gpumlp.selftest`.

Examples
--------
>>> from gpumlp.backends.cuda import selftest
>>> selftest.tolerance("float64")
1e-12
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...dropout import Dropout, keep_mask
from .. import cupy_unavailable_reason, get_backend
from . import kernels
from .backend import CupyBackend

#: The benchmark protocol's networks and batch (benchmarks/README.md).
SHAPES: dict[str, list[int]] = {"mlp-256": [784, 256, 256, 10], "mlp-512": [784, 512, 512, 10]}
BATCH = 256


def atomic_sum_tolerance(dtype: Any, kernel: str, shape: tuple[int, int]) -> float:
    """Relative tolerance of a loss summed on the device with float ``atomicAdd``.

    Each block sums its terms in a tree, then adds its partial sum atomically in an order
    that changes from run to run: the result differs from NumPy's pairwise sum by up to one
    rounding per block plus the two trees' roundings (the terms are non-negative, so no
    cancellation): ``(blocks + 2 log2(terms)) * eps``, never below :func:`tolerance`.
    """
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
    return cupy_unavailable_reason()


# ------------------------------------------------------------------------------ checks
def check_compile(report: Report) -> None:
    """Compile (or load from CuPy's cache) every source with all its instantiations."""
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


def describe_device() -> dict[str, Any]:
    """CuPy, CUDA, driver and device, as the self-test reports them."""
    info = CupyBackend().describe()
    info["cupy"] = info.pop("version", "unknown")
    return info
