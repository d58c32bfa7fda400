"""The CuPy (GPU) backend: every operation is one or two launches of the fused kernels.

Each matrix product of a step can run two ways:

* ``fused``: our tiled GEMM with the epilogue (bias + activation + dropout, or ``⊙ phi'``, or
  the bias gradient) in the same kernel: one launch, and capturable in a CUDA graph;
* ``cublas``: ``cupy.matmul`` (cuBLAS) followed by a fused epilogue kernel: two launches,
  faster for large shapes.

``GPUMLP_GEMM=fused|cublas|auto`` chooses; with ``auto`` (the default) both are timed once per
(operation, shape, dtype) with CUDA events and the faster is cached.  When the kernels cannot
be compiled or loaded (or ``GPUMLP_KERNELS=off``), every operation falls back to the generic
CuPy implementation of the base class, with one warning.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from .. import kernels
from ..dropout import Dropout
from .base import Backend

GEMM_PATHS = ("auto", "fused", "cublas")
#: Launches per variant when timing the two GEMM paths for a shape.
_TIMING_REPEATS = 5


class CupyBackend(Backend):
    """GPU backend on CuPy with fused raw CUDA kernels; float32 and float64."""

    name = "cupy"

    def __init__(self, gemm_path: str | None = None) -> None:
        import cupy

        super().__init__(cupy)
        self.gemm_path = gemm_path or os.environ.get("GPUMLP_GEMM", "auto").strip().lower()
        if self.gemm_path not in GEMM_PATHS:
            raise ValueError(f"GPUMLP_GEMM={self.gemm_path!r} is not valid; choose one of "
                             f"{GEMM_PATHS}")
        self.use_kernels = kernels.kernels_enabled()
        self._path_choice: dict[tuple, str] = {}
        # Device scalars the kernels read (so a captured graph sees their current values).
        self._zero_counter = cupy.zeros((), dtype=cupy.int64)
        self._counter_base = cupy.zeros((), dtype=cupy.int64)
        self._lr: dict[str, Any] = {}
        self._step = cupy.zeros((), dtype=cupy.int32)
        # Set by gpumlp.graph while it records a step: only fused kernels, the step state read
        # from device memory, and the loss added into `loss_accumulator` (no allocation).
        self.capturing = False
        self.loss_accumulator: Any = None

    # ----------------------------------------------------------------- arrays and devices
    def to_numpy(self, x: Any) -> np.ndarray:
        return self.xp.asnumpy(x) if isinstance(x, self.xp.ndarray) else np.asarray(x)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def describe(self) -> dict:
        cupy = self.xp
        info = super().describe()
        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
        name = props["name"]
        info.update({
            "device_name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": device.compute_capability,
            "sm_count": props["multiProcessorCount"],
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "fp32_peak_tflops": fp32_peak_tflops(props, device.compute_capability),
            "kernels": self.kernel_status(),
            "gemm_path": self.gemm_path,
        })
        return info

    def kernel_status(self) -> str:
        """``"compiled"``, or why the generic path is used."""
        if not self.use_kernels:
            return "off (GPUMLP_KERNELS=off)"
        try:
            for source in kernels.sources():
                kernels.load_module(source)
        except kernels.KernelsUnavailable as exc:
            return f"unavailable: {exc}"
        return "compiled"

    # ------------------------------------------------------------------ kernel launching
    def _kernel(self, name: str, dtype: Any, **params: Any) -> Any | None:
        """The kernel, or None when the generic path must be used."""
        if not self.use_kernels:
            return None
        try:
            return kernels.get_kernel(name, dtype, **params)
        except kernels.KernelsUnavailable:
            if self.capturing:
                raise
            self.use_kernels = False  # warned once by gpumlp.kernels
            return None

    def _dropout_args(self, dtype: Any, dropout: Dropout | None) -> tuple:
        # Eager: the counter is all in `dropout.counter`; captured: it is an offset from the
        # device-side base that the graph advances every step.
        base = self._counter_base if self.capturing else self._zero_counter
        if dropout is None:
            return (dtype.type(1), np.uint64(0), base, np.int64(0))
        return (dtype.type(dropout.keep), np.uint64(dropout.seed), base,
                np.int64(dropout.counter))

    def _choose(self, op: str, shape: tuple, dtype: Any, fused: Callable[[], None],
                cublas: Callable[[], None]) -> None:
        """Run ``op`` by the path chosen for its shape (timing both once under ``auto``)."""
        if self.capturing or self.gemm_path == "fused":
            fused()
            return
        if self.gemm_path == "cublas":
            cublas()
            return
        key = (op, shape, np.dtype(dtype).str)
        choice = self._path_choice.get(key)
        if choice is None:
            choice = self._path_choice[key] = self._time_paths(fused, cublas)
        (fused if choice == "fused" else cublas)()

    def _time_paths(self, fused: Callable[[], None], cublas: Callable[[], None]) -> str:
        timings = {}
        for name, run in (("fused", fused), ("cublas", cublas)):
            run()  # warm-up: module load, cuBLAS handle, caches
            timings[name] = elapsed_ms(self.xp, run, _TIMING_REPEATS)
        return min(timings, key=timings.get)

    def path_choices(self) -> dict[tuple, str]:
        """The GEMM path measured for each (operation, shape, dtype) so far."""
        return dict(self._path_choice)

    # ----------------------------------------------------------------------------- forward
    def affine_act(self, x, w, b, act, out, dropout: Dropout | None = None):
        n, k = x.shape
        m = w.shape[1]
        dropped = dropout is not None
        fused_fn = self._kernel("gemm_bias_act", x.dtype, act=act, dropout=dropped)
        epilogue = self._kernel("bias_act", x.dtype, act=act, dropout=dropped)
        if fused_fn is None or epilogue is None:
            return super().affine_act(x, w, b, act, out, dropout)
        drop = self._dropout_args(x.dtype, dropout)
        sizes = (np.int64(n), np.int64(k), np.int64(m))

        def fused():
            grid, block = kernels.launch_config("gemm_bias_act", n, m)
            fused_fn(grid, block, (out, x, w, b, *sizes, *drop))

        def cublas():
            self.xp.matmul(x, w, out=out)
            grid, block = kernels.launch_config("bias_act", n, m)
            epilogue(grid, block, (out, b, np.int64(n), np.int64(m), *drop))

        self._choose("forward", (n, k, m), x.dtype, fused, cublas)
        return out

    def softmax(self, z, out):
        fn = self._kernel("softmax_rows", z.dtype)
        if fn is None:
            return super().softmax(z, out)
        grid, block = kernels.launch_config("softmax_rows", *z.shape)
        fn(grid, block, (out, z, np.int64(z.shape[0]), np.int64(z.shape[1])))
        return out

    # ---------------------------------------------------------------------------- backward
    def act_grad(self, delta, a, act, out, dropout: Dropout | None = None):
        fn = self._kernel("act_grad", a.dtype, act=act, dropout=dropout is not None)
        if fn is None:
            return super().act_grad(delta, a, act, out, dropout)
        grid, block = kernels.launch_config("act_grad", a.size)
        fn(grid, block, (out, delta, a, np.int64(a.size), *self._dropout_args(a.dtype, dropout)))
        return out

    def backprop_hidden(self, h_next, w_next, a, act, out, dropout: Dropout | None = None):
        n, m = h_next.shape
        k = w_next.shape[0]
        fused_fn = self._kernel("gemm_backprop_act", a.dtype, act=act,
                                dropout=dropout is not None)
        if fused_fn is None:
            return super().backprop_hidden(h_next, w_next, a, act, out, dropout)
        drop = self._dropout_args(a.dtype, dropout)

        def fused():
            grid, block = kernels.launch_config("gemm_backprop_act", n, k)
            fused_fn(grid, block, (out, h_next, w_next, a, np.int64(n), np.int64(k),
                                   np.int64(m), *drop))

        def cublas():
            self.xp.matmul(h_next, w_next.T, out=out)
            self.act_grad(out, a, act, out, dropout)

        self._choose("backward", (n, k, m), a.dtype, fused, cublas)
        return out

    def weight_grads(self, a_prev, h, dw, db, w=None, decay: float = 0.0):
        n, k = a_prev.shape
        m = h.shape[1]
        fused_fn = self._kernel("gemm_weight_grads", h.dtype)
        if fused_fn is None:
            return super().weight_grads(a_prev, h, dw, db, w, decay)
        dt = h.dtype.type
        # w is read only when decay != 0; a null pointer is passed as integer 0.
        w_arg = w if decay else np.uint64(0)

        def fused():
            grid, block = kernels.launch_config("gemm_weight_grads", k, m)
            fused_fn(grid, block, (dw, db, a_prev, h, w_arg, np.int64(n), np.int64(k),
                                   np.int64(m), dt(decay)))

        def cublas():
            self.xp.matmul(a_prev.T, h, out=dw)
            if decay:
                self.xp.add(dw, dt(decay) * w, out=dw)
            h.sum(axis=0, out=db)

        self._choose("weight_grads", (n, k, m), h.dtype, fused, cublas)

    # ------------------------------------------------------------------------------ losses
    def _loss(self, name: str, x, t, h_out):
        fn = self._kernel(name, x.dtype)
        if fn is None:
            return getattr(super(), name)(x, t, h_out)
        loss = self.loss_accumulator
        if loss is None:
            loss = self.xp.zeros((), dtype=x.dtype)  # the kernel adds into it
        shape = x.shape if name == "softmax_xent" else (x.size,)
        grid, block = kernels.launch_config(name, *shape)
        fn(grid, block, (h_out, loss, x, t, np.int64(x.shape[0]), np.int64(x.shape[1])))
        return loss

    def softmax_xent(self, z, t, h_out):
        return self._loss("softmax_xent", z, t, h_out)

    def sigmoid_bce(self, z, t, h_out):
        return self._loss("sigmoid_bce", z, t, h_out)

    def squared_error(self, a, t, h_out):
        return self._loss("squared_error", a, t, h_out)

    # --------------------------------------------------------------------------- optimizer
    def _device_lr(self, dtype: Any, lr: float) -> Any:
        """The device scalar holding the learning rate; written unless a step is captured
        (a captured step reads the rate written once per epoch by :meth:`set_step_state`)."""
        key = np.dtype(dtype).str
        if key not in self._lr:
            self._lr[key] = self.xp.zeros((), dtype=dtype)
        if not self.capturing:
            self._lr[key].fill(np.dtype(dtype).type(lr))
        return self._lr[key]

    def sgd_step(self, params, grads, velocity, lr, momentum, nesterov):
        fn = self._kernel("sgd_step", params.dtype, nesterov=bool(nesterov))
        if fn is None:
            return super().sgd_step(params, grads, velocity, lr, momentum, nesterov)
        grid, block = kernels.launch_config("sgd_step", params.size)
        fn(grid, block, (params, velocity, grads, np.int64(params.size),
                         self._device_lr(params.dtype, lr), float(momentum)))

    def adam_step(self, params, grads, m, v, lr, beta1, beta2, eps, step):
        fn = self._kernel("adam_step", params.dtype)
        if fn is None:
            return super().adam_step(params, grads, m, v, lr, beta1, beta2, eps, step)
        if not self.capturing:  # a captured step's count is advanced on the device
            self._step.fill(np.int32(step))
        grid, block = kernels.launch_config("adam_step", params.size)
        fn(grid, block, (params, m, v, grads, np.int64(params.size),
                         self._device_lr(params.dtype, lr), self._step, float(beta1),
                         float(beta2), float(eps)))

    # ----------------------------------------------------------------------- data movement
    def gather_rows(self, src, index, out):
        fn = self._kernel("gather_rows", src.dtype)
        if fn is None or index.dtype != self.xp.int64:
            return super().gather_rows(src, index, out)
        rows, cols = out.shape
        grid, block = kernels.launch_config("gather_rows", rows * cols)
        fn(grid, block, (out, src, index, np.uint64(0), np.int64(rows), np.int64(cols)))
        return out

    def gather_rows_at(self, src, perm, start, out):
        """``out[i] = src[perm[start + i]]`` with ``start`` a device scalar (graph steps)."""
        fn = kernels.get_kernel("gather_rows", src.dtype)
        rows, cols = out.shape
        grid, block = kernels.launch_config("gather_rows", rows * cols)
        fn(grid, block, (out, src, perm, start, np.int64(rows), np.int64(cols)))
        return out

    def advance_step(self, start, rows: int, counters_per_step: int) -> None:
        """Move the device step state on: batch start, dropout counter base, step count."""
        fn = kernels.get_kernel("advance_step")
        grid, block = kernels.launch_config("advance_step", 1)
        fn(grid, block, (start, np.int64(rows), self._counter_base,
                         np.int64(counters_per_step), self._step))

    def set_step_state(self, counter_base: int, step: int, learning_rate: float,
                       dtype: Any) -> None:
        """Write the step state captured steps read (on the current stream)."""
        self._counter_base.fill(np.int64(counter_base))
        self._step.fill(np.int32(step))
        capturing, self.capturing = self.capturing, False
        self._device_lr(dtype, learning_rate)
        self.capturing = capturing

    def permutation(self, n: int, rng: Any) -> Any:
        return self.xp.asarray(rng.permutation(n).astype(np.int64))


def elapsed_ms(cupy: Any, run: Callable[[], Any], calls: int) -> float:
    """Device milliseconds of ``calls`` back-to-back calls of ``run``, by CUDA events."""
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(calls):
        run()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop)


def fp32_peak_tflops(props: dict, capability: str) -> float | None:
    """FP32 (non-tensor) peak: SMs x FP32 lanes per SM x 2 (FMA) x boost clock.

    Lanes per SM by architecture: 64 on sm_60/sm_70/sm_80 (A100), 128 on sm_86/sm_89/sm_90.
    """
    lanes = {"60": 64, "70": 64, "75": 64, "80": 64, "86": 128, "89": 128, "90": 128,
             "100": 128, "120": 128}.get(str(capability))
    if lanes is None:
        return None
    return props["multiProcessorCount"] * lanes * 2 * props["clockRate"] * 1e3 / 1e12
