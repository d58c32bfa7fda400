"""Kernel benchmark (``gpumlp bench --kernels``): each layer operation three ways on the GPU.

For every layer shape of the protocol and batch size, the forward (affine + ReLU), the
backward sensitivity (``(H W^T) ⊙ relu'``) and the weight gradient (``A^T H`` with the bias
gradient) are timed as

* ``fused``: our tiled GEMM with the epilogue in the same kernel (one launch);
* ``cublas``: ``cupy.matmul`` (cuBLAS) then our fused epilogue kernel (two launches);
* ``cupy``: plain CuPy array code (``x @ w + b`` then ``maximum``: three or more launches).

Each is timed with CUDA events over a calibrated number of back-to-back calls; the median of
the repeats is reported in microseconds per call, and as TFLOP/s of the matrix product
(``2 M N K`` floating-point operations; the epilogue is not counted).  The table gives the
fused kernel's tile and split-K factor (:mod:`gpumlp.backends.cuda.plan`) and its ratio to cuBLAS plus
the separate epilogue.  With ``sgemm_size`` a square SGEMM (``M = N = K``, 4096 by default on
the command line) is also timed: our forward GEMM (identity activation, so only a bias add
in the epilogue) against ``cupy.matmul`` alone, the plain cuBLAS SGEMM.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import numpy as np

from . import plan as gemm_plan  # `plan` names a layer's chosen tile
from .backend import CupyBackend
from .routes import elapsed_ms

#: The layer shapes (inputs, outputs) of mlp-256 and mlp-512.
LAYER_SHAPES = ((784, 256), (256, 256), (256, 10), (784, 512), (512, 512), (512, 10))
BATCHES = (64, 256, 1024, 8192)
VARIANTS = ("fused", "cublas", "cupy")
#: Side of the square SGEMM timed by ``gpumlp bench --kernels``.
SGEMM_SIZE = 4096
#: The fused kernel and its (M, N, K) of each operation for a layer d_in -> d_out at a batch.
GEMM_OF = {
    "forward": lambda batch, d_in, d_out: ("gemm_bias_act", batch, d_out, d_in),
    "backward": lambda batch, d_in, d_out: ("gemm_backprop_act", batch, d_in, d_out),
    "weight_grads": lambda batch, d_in, d_out: ("gemm_weight_grads", d_in, d_out, batch),
    "sgemm": lambda batch, d_in, d_out: ("gemm_bias_act", batch, d_out, d_in),
}


def gemm_flops(operation: str, batch: int, d_in: int, d_out: int) -> int:
    """``2 M N K`` of the operation's matrix product."""
    _, M, N, K = GEMM_OF[operation](batch, d_in, d_out)
    return 2 * M * N * K


def tflops(flops: int, us: float) -> float:
    """TFLOP/s of ``flops`` done in ``us`` microseconds."""
    return flops / us / 1e6 if us > 0 else float("inf")


def operations(cupy: Any, backends: dict[str, Any], batch: int, d_in: int, d_out: int,
               rng: np.random.Generator) -> dict[str, dict[str, Callable[[], Any]]]:
    """``{operation: {variant: callable}}`` on fresh random float32 operands."""
    def arr(*shape: int) -> Any:
        return cupy.asarray(rng.standard_normal(shape, dtype=np.float32))

    x, w, b = arr(batch, d_in), arr(d_in, d_out), arr(d_out)
    h, a = arr(batch, d_out), cupy.maximum(arr(batch, d_in), 0)
    out, dx, dw, db = arr(batch, d_out), arr(batch, d_in), arr(d_in, d_out), arr(d_out)
    fused, cublas = backends["fused"], backends["cublas"]
    return {
        "forward": {
            "fused": lambda: fused.affine_act(x, w, b, "relu", out),
            "cublas": lambda: cublas.affine_act(x, w, b, "relu", out),
            "cupy": lambda: cupy.maximum(cupy.matmul(x, w) + b, 0, out=out),
        },
        "backward": {
            "fused": lambda: fused.backprop_hidden(h, w, a, "relu", dx),
            "cublas": lambda: cublas.backprop_hidden(h, w, a, "relu", dx),
            "cupy": lambda: cupy.multiply(cupy.matmul(h, w.T), a > 0, out=dx),
        },
        "weight_grads": {
            "fused": lambda: fused.weight_grads(x, h, dw, db),
            "cublas": lambda: cublas.weight_grads(x, h, dw, db),
            "cupy": lambda: (cupy.matmul(x.T, h, out=dw), cupy.sum(h, axis=0, out=db)),
        },
    }


def time_call(cupy: Any, call: Callable[[], Any], repeats: int = 5,
              min_ms: float = 20.0) -> tuple[float, list[float]]:
    """Median µs per call over ``repeats`` event-timed runs of back-to-back calls."""
    call()  # warm-up: module load, cuBLAS handle, memory pool
    cupy.cuda.get_current_stream().synchronize()
    calls = 1
    while True:  # double the calls until one run lasts min_ms
        elapsed = elapsed_ms(cupy, call, calls)
        if elapsed >= min_ms or calls >= 1 << 16:
            break
        calls *= 2
    runs = [1e3 * elapsed_ms(cupy, call, calls) / calls for _ in range(repeats)]
    return statistics.median(runs), runs


def sgemm_operations(cupy: Any, backends: dict[str, Any], size: int,
                     rng: np.random.Generator) -> dict[str, Callable[[], Any]]:
    """The square SGEMM: our forward GEMM (identity) and cuBLAS (``matmul`` alone)."""
    def arr(*shape: int) -> Any:
        return cupy.asarray(rng.standard_normal(shape, dtype=np.float32))

    x, w, b, out = arr(size, size), arr(size, size), arr(size), arr(size, size)
    fused = backends["fused"]
    return {"fused": lambda: fused.affine_act(x, w, b, "identity", out),
            "cublas": lambda: cupy.matmul(x, w, out=out)}


def _record(op: str, variant: str, batch: int, d_in: int, d_out: int, median: float,
            runs: list[float], plan: plan.GemmPlan) -> dict[str, Any]:
    flops = gemm_flops(op, batch, d_in, d_out)
    return {"operation": op, "variant": variant, "batch": batch, "d_in": d_in,
            "d_out": d_out, "us_per_call": median, "repeats_us": runs, "flops": flops,
            "tflops": tflops(flops, median),
            **({"tile": plan.tile, "splits": plan.splits} if variant == "fused" else {})}


def run_kernel_bench(shapes=LAYER_SHAPES, batches=BATCHES, repeats: int = 5,
                     min_ms: float = 20.0, out=None, sgemm_size: int | None = None
                     ) -> list[dict[str, Any]]:
    """Time every operation x variant x shape x batch (and the square SGEMM of side
    ``sgemm_size`` when given); one record per measurement."""
    import cupy

    # Each bound to a run of its own: the device state the operations need is made by the
    # first call, not inside the timed ones.
    backends = {path: CupyBackend(gemm_path=path).open_run().backend
                for path in ("fused", "cublas")}
    sm_count = gemm_plan.device_sm_count(cupy)
    rng = np.random.default_rng(0)
    results = []

    def measure(op, variants, batch, d_in, d_out):
        kernel, M, N, K = GEMM_OF[op](batch, d_in, d_out)
        plan = gemm_plan.choose(kernel, np.float32, M, N, K, sm_count)
        times = {}
        for variant, call in variants.items():
            median, runs = time_call(cupy, call, repeats, min_ms)
            times[variant] = median
            results.append(_record(op, variant, batch, d_in, d_out, median, runs, plan))
        if out is not None:
            flops = gemm_flops(op, batch, d_in, d_out)
            print(f"{op:<12} {d_in:>4}x{d_out:<4} batch {batch:>5}: " + "  ".join(
                f"{v} {t:8.1f} µs ({tflops(flops, t):5.1f} TFLOP/s)" for v, t in times.items())
                + f"  [tile {plan.tile}, split {plan.splits}]", file=out, flush=True)

    for d_in, d_out in shapes:
        for batch in batches:
            for op, variants in operations(cupy, backends, batch, d_in, d_out, rng).items():
                measure(op, variants, batch, d_in, d_out)
    if sgemm_size:
        measure("sgemm", sgemm_operations(cupy, backends, sgemm_size, rng), sgemm_size,
                sgemm_size, sgemm_size)
    return results


def speedups(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (operation, shape, batch): the fused variant's speed-up over the others (cuBLAS +
    separate epilogue, plain CuPy; for the square SGEMM, cuBLAS alone) and its TFLOP/s."""
    cells: dict[tuple, dict[str, float]] = {}
    for r in results:
        key = (r["operation"], r["d_in"], r["d_out"], r["batch"])
        cells.setdefault(key, {})[r["variant"]] = r["us_per_call"]
    rows = []
    for (op, d_in, d_out, batch), t in cells.items():
        if "fused" not in t or "cublas" not in t:
            continue
        flops = gemm_flops(op, batch, d_in, d_out)
        row = {"operation": op, "d_in": d_in, "d_out": d_out, "batch": batch,
               "fused_tflops": tflops(flops, t["fused"]),
               "cublas_tflops": tflops(flops, t["cublas"]),
               "fused_vs_cublas": t["cublas"] / t["fused"]}
        if "cupy" in t:
            row["fused_vs_cupy"] = t["cupy"] / t["fused"]
        rows.append(row)
    return rows


def markdown(speedup_rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    """The table: times, TFLOP/s and ratios per operation, layer and batch (the square
    SGEMM's 'cuBLAS' is ``matmul`` alone, without an epilogue)."""
    times = {(r["operation"], r["d_in"], r["d_out"], r["batch"], r["variant"]): r["us_per_call"]
             for r in results}
    plans = {(r["operation"], r["d_in"], r["d_out"], r["batch"]): (r.get("tile"), r.get("splits"))
             for r in results if r["variant"] == "fused"}
    lines = ["| operation | layer | batch | tile / split | fused µs | cuBLAS+epilogue µs | "
             "plain CuPy µs | fused TFLOP/s | cuBLAS+epilogue TFLOP/s | fused vs cuBLAS | "
             "fused vs CuPy |", "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for s in speedup_rows:
        key = (s["operation"], s["d_in"], s["d_out"], s["batch"])
        tile, splits = plans.get(key, (None, None))
        cells = [f"{times[(*key, v)]:.1f}" if (*key, v) in times else "–" for v in VARIANTS]
        vs_cupy = f"{s['fused_vs_cupy']:.2f}x" if "fused_vs_cupy" in s else "–"
        lines.append(f"| {s['operation']} | {s['d_in']}→{s['d_out']} | {s['batch']} | "
                     f"{tile} / {splits} | " + " | ".join(cells)
                     + f" | {s['fused_tflops']:.2f} | {s['cublas_tflops']:.2f}"
                     f" | {s['fused_vs_cublas']:.2f}x | {vs_cupy} |")
    return "\n".join(lines) + "\n"
