"""Kernel benchmark (``gpumlp bench --kernels``): each layer operation three ways on the GPU.

For every layer shape of the protocol and batch size, the forward (affine + ReLU), the
backward sensitivity (``(H W^T) ⊙ relu'``) and the weight gradient (``A^T H`` with the bias
gradient) are timed as

* ``fused``: our tiled GEMM with the epilogue in the same kernel (one launch);
* ``cublas``: ``cupy.matmul`` (cuBLAS) then our fused epilogue kernel (two launches);
* ``cupy``: plain CuPy array code (``x @ w + b`` then ``maximum``: three or more launches).

Each is timed with CUDA events over a calibrated number of back-to-back calls; the median of
the repeats is reported in microseconds per call.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable

import numpy as np

from ..backends.cupy_backend import elapsed_ms

#: The layer shapes (inputs, outputs) of mlp-256 and mlp-512.
LAYER_SHAPES = ((784, 256), (256, 256), (256, 10), (784, 512), (512, 512), (512, 10))
BATCHES = (64, 256, 1024, 8192)
VARIANTS = ("fused", "cublas", "cupy")


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


def run_kernel_bench(shapes=LAYER_SHAPES, batches=BATCHES, repeats: int = 5,
                     min_ms: float = 20.0, out=None) -> list[dict[str, Any]]:
    """Time every operation x variant x shape x batch; one record per measurement."""
    import cupy

    from ..backends.cupy_backend import CupyBackend

    backends = {path: CupyBackend(gemm_path=path) for path in ("fused", "cublas")}
    rng = np.random.default_rng(0)
    results = []
    for d_in, d_out in shapes:
        for batch in batches:
            for op, variants in operations(cupy, backends, batch, d_in, d_out, rng).items():
                times = {}
                for variant, call in variants.items():
                    median, runs = time_call(cupy, call, repeats, min_ms)
                    times[variant] = median
                    results.append({"operation": op, "variant": variant, "batch": batch,
                                    "d_in": d_in, "d_out": d_out, "us_per_call": median,
                                    "repeats_us": runs})
                if out is not None:
                    print(f"{op:<12} {d_in:>4}x{d_out:<4} batch {batch:>5}: " + "  ".join(
                        f"{v} {t:8.1f} µs" for v, t in times.items()), file=out, flush=True)
    return results


def speedups(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (operation, shape, batch): the fused variant's speed-up over the other two."""
    cells: dict[tuple, dict[str, float]] = {}
    for r in results:
        key = (r["operation"], r["d_in"], r["d_out"], r["batch"])
        cells.setdefault(key, {})[r["variant"]] = r["us_per_call"]
    return [{"operation": op, "d_in": d_in, "d_out": d_out, "batch": batch,
             "fused_vs_cublas": t["cublas"] / t["fused"], "fused_vs_cupy": t["cupy"] / t["fused"]}
            for (op, d_in, d_out, batch), t in cells.items() if set(t) == set(VARIANTS)]


def markdown(speedup_rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> str:
    times = {(r["operation"], r["d_in"], r["d_out"], r["batch"], r["variant"]): r["us_per_call"]
             for r in results}
    lines = ["| operation | layer | batch | fused µs | cuBLAS+epilogue µs | plain CuPy µs | "
             "fused vs cuBLAS | fused vs CuPy |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for s in speedup_rows:
        key = (s["operation"], s["d_in"], s["d_out"], s["batch"])
        lines.append(f"| {s['operation']} | {s['d_in']}→{s['d_out']} | {s['batch']} | "
                     + " | ".join(f"{times[(*key, v)]:.1f}" for v in VARIANTS)
                     + f" | {s['fused_vs_cublas']:.2f}x | {s['fused_vs_cupy']:.2f}x |")
    return "\n".join(lines) + "\n"
