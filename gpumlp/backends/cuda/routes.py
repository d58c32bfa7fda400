"""Which GEMM each operation of a *captured* step uses: our fused kernel or captured cuBLAS.

The eager path measures our fused GEMM against ``cupy.matmul`` + epilogue per shape
(:meth:`CupyBackend._choose`).  ``cupy.matmul`` cannot run inside a stream capture, but
cuBLAS and cuBLASLt can when called directly (:mod:`gpumlp.backends.cuda.cublas`), so a
graph runner's step gets the same choice:

* during the runner's **warm-up** (recording its step state, not capturing), each GEMM of the
  step is timed once per (operation, shape, dtype) both ways — the fused kernel, and the
  direct route: cuBLAS followed by our epilogue kernel; for a ReLU layer without dropout one
  cuBLASLt call (bias + ReLU keeping the bit-mask forward, dReLU from it backward); for a
  weight gradient one cuBLASLt call with the bias gradient fused — with the handles bound to
  the runner's stream and the plans and masks made there, outside any capture;
* during the **capture**, the faster one is recorded.  Where the direct route is unavailable
  (no cuBLAS library, an epilogue cuBLASLt has no algorithm for, a stream not prepared in the
  warm-up) the fused kernel is used, as before.

``GPUMLP_GEMM=fused`` keeps every captured GEMM fused; ``cublas`` prefers the direct route.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import warnings
import weakref
from typing import Any, Callable, Iterator

import numpy as np

from . import cublas

#: Launches per variant when timing the two captured-GEMM routes for a shape.
TIMING_REPEATS = 5


def new_api() -> cublas.BlasApi:
    """The library entry points (the tests substitute an emulation here)."""
    return cublas.CtypesBlas()


class CapturePaths:
    """Per-backend state: the direct-BLAS object, prepared streams and measured choices."""

    def __init__(self, cupy: Any):
        self.cupy = cupy
        self.choice: dict[tuple, str] = {}
        self._blas: cublas.DirectBlas | None = None
        self.unavailable: str | None = None
        self._lock = threading.Lock()
        #: ReLU bit-masks kept by cuBLASLt forwards, by (address, shape) of the activations.
        self.masks: dict[tuple, Any] = {}
        #: The activations whose latest recorded forward wrote its mask (see ForwardRelu).
        self.live_masks: set[tuple] = set()

    def blas(self, stream: Any) -> cublas.DirectBlas | None:
        """The direct route bound to ``stream`` (binding it now: call outside capture), or
        ``None`` with :attr:`unavailable` saying why."""
        if self.unavailable is not None:
            return None
        try:
            with self._lock:
                if self._blas is None:
                    self._blas = cublas.DirectBlas(self.cupy, new_api())
                self._blas.prepare(stream)
        except cublas.BlasError as exc:
            self.unavailable = str(exc)
            warnings.warn(f"captured steps use the fused GEMMs only: {exc}", RuntimeWarning,
                          stacklevel=2)
            return None
        return self._blas

    def prepared(self, stream: Any) -> cublas.DirectBlas | None:
        """The direct route if ``stream`` was bound before (never binds: safe in capture)."""
        blas = self._blas
        if blas is None or cublas.stream_pointer(stream) not in blas._streams:
            return None
        return blas


_PATHS: "weakref.WeakKeyDictionary[Any, CapturePaths]" = weakref.WeakKeyDictionary()
_PATHS_LOCK = threading.Lock()


def paths_of(backend: Any) -> CapturePaths:
    with _PATHS_LOCK:
        paths = _PATHS.get(backend)
        if paths is None:
            paths = _PATHS[backend] = CapturePaths(backend.xp)
        return paths


def is_capturing(cupy: Any) -> bool:
    """Whether the current stream is capturing (a runner's capture, not its warm-up)."""
    return bool(cupy.cuda.get_current_stream().is_capturing())


_side_stream: contextvars.ContextVar = contextvars.ContextVar("gpumlp_weight_grads_stream",
                                                              default=None)


@contextlib.contextmanager
def weight_grads_beside(main: Any, side: Any) -> Iterator[None]:
    """Inside, each weight-gradient GEMM of a recorded step runs on ``side``, forked from
    ``main`` (the current stream) by an event just after its input delta is written; at the
    end ``main`` waits for ``side``.  In a capture the weight gradients thus become a parallel
    branch beside the backward chain (nothing on ``main`` reads what they write before the
    join), which shortens the graph's critical path."""
    token = _side_stream.set(side)
    try:
        yield
    finally:
        _side_stream.reset(token)
        main.wait_event(side.record())


def beside(backend: Any, launch: Callable[[], Any]) -> None:
    """Run ``launch`` on the side stream of the enclosing :func:`weight_grads_beside`, forked
    from the current stream now (it sees what is queued before) and joined with the weight
    gradients before the update; outside one, on the current stream.  For work nothing on the
    main stream waits for until the join (a step's L2 term)."""
    side = _side_stream.get()
    if side is None:
        launch()
        return
    side.wait_event(backend.xp.cuda.get_current_stream().record())
    with side:
        launch()


def run(backend: Any, op: str, shape: tuple, dtype: Any, fused: Callable[[], None],
        direct: Callable[[Any], Callable[[], None] | None] | None) -> str:
    """Run one GEMM of a recorded step by the route chosen for it; returns the route.

    ``direct(blas, paths)`` prepares the direct variant (cuBLASLt plans and masks outside
    capture) and returns its launch, or ``None`` when it cannot run this operation.
    Inside :func:`weight_grads_beside`, a weight gradient runs on the side stream.
    """
    side = _side_stream.get()
    if op == "weight_grads" and side is not None:
        side.wait_event(backend.xp.cuda.get_current_stream().record())
        with side:
            return _route(backend, op, shape, dtype, fused, direct)
    return _route(backend, op, shape, dtype, fused, direct)


def _route(backend: Any, op: str, shape: tuple, dtype: Any, fused: Callable[[], None],
           direct: Callable[[Any], Callable[[], None] | None] | None) -> str:
    cupy = backend.xp
    paths = paths_of(backend)
    stream = cupy.cuda.get_current_stream()
    key = (op, shape, np.dtype(dtype).str)
    # A forward overwrites its activations: a mask kept for them is stale unless this very
    # forward (a cuBLASLt ReLU variant) writes it again.
    paths.live_masks.discard(getattr(direct, "activations_key", None))
    if is_capturing(cupy):
        blas = paths.prepared(stream)
        if paths.choice.get(key) == "direct" and blas is not None:
            variant = direct(blas, paths) if direct is not None else None
            if variant is not None:
                variant()
                return "direct"
        fused()
        return "fused"
    # The warm-up: choose once per key.
    variant = None
    if direct is not None and backend.gemm_path != "fused":
        blas = paths.blas(stream)
        if blas is not None:
            try:
                variant = direct(blas, paths)
            except cublas.BlasUnsupported:
                variant = None
    if key not in paths.choice:
        if variant is None:
            paths.choice[key] = "fused"
        elif backend.gemm_path == "cublas":
            paths.choice[key] = "direct"
        else:
            paths.choice[key] = _faster(cupy, fused, variant)
    if paths.choice[key] == "direct" and variant is not None:
        variant()
        return "direct"
    fused()
    return "fused"


def _faster(cupy: Any, fused: Callable[[], None], direct: Callable[[], None]) -> str:
    timings = {}
    for name, launch in (("fused", fused), ("direct", direct)):
        launch()  # warm-up: module load, cuBLAS kernels' first launch
        timings[name] = elapsed_ms(cupy, launch, TIMING_REPEATS)
    return min(timings, key=timings.get)


def choices(backend: Any) -> dict[tuple, str]:
    """The route measured for each captured (operation, shape, dtype) so far."""
    return dict(paths_of(backend).choice)


# ---------------------------------------------------------------- the direct variants
# Each returns ``make(blas, paths)``, which prepares the variant (outside capture: plans and
# masks) and returns the launch, or ``None`` where the variant cannot run.

def _key(array: Any) -> tuple:
    return cublas.pointer(array), tuple(array.shape)


class _Variant:
    """A direct variant's factory; ``activations_key`` names the activations a forward
    writes (their kept ReLU mask, if any, is stale once any other forward writes them)."""

    activations_key: tuple | None = None

    def __init__(self, make: Callable[[Any, CapturePaths], Callable[[], None] | None],
                 activations: Any = None):
        self.make = make
        if activations is not None:
            self.activations_key = _key(activations)

    def __call__(self, blas: Any, paths: CapturePaths) -> Callable[[], None] | None:
        return self.make(blas, paths)


def forward(x: Any, w: Any, out: Any, epilogue: Callable[[], None],
            b: Any = None, relu_mask: bool = False) -> _Variant:
    """``out = x w`` on cuBLAS, then our bias + activation (+ dropout) epilogue kernel; or,
    with ``relu_mask`` (a ReLU layer without dropout), ``out = relu(x w + b)`` in one
    cuBLASLt call that also keeps the ReLU bit-mask for :func:`backward`."""
    def make(blas: Any, paths: CapturePaths) -> Callable[[], None] | None:
        stream = blas.cupy.cuda.get_current_stream()
        if relu_mask:
            key = _key(out)
            mask = paths.masks.get(key)
            if mask is None:
                if is_capturing(blas.cupy):
                    return None  # never made in the warm-up: not this route
                n, m = out.shape
                mask = paths.masks[key] = blas.cupy.zeros(cublas.aux_bytes(m, n),
                                                          dtype=np.uint8)
            if not is_capturing(blas.cupy):
                blas.fused_gemms("forward_relu", x.shape, w.shape, out.dtype, stream)

            def launch_relu() -> None:
                blas.affine_relu(x, w, b, out, mask, stream)
                paths.live_masks.add(key)
            return launch_relu

        def launch() -> None:
            blas.matmul(x, w, out, stream)
            epilogue()
        return launch
    return _Variant(make, out)


def backward(h_next: Any, w_next: Any, out: Any, epilogue: Callable[[], None],
             a: Any = None, relu: bool = False) -> _Variant:
    """``out = h_next w_next^T`` on cuBLAS, then our ``⊙ phi'`` (+ dropout) kernel; or, for a
    ReLU layer whose forward kept its mask in this step, ``DRELU`` in one cuBLASLt call."""
    def make(blas: Any, paths: CapturePaths) -> Callable[[], None] | None:
        stream = blas.cupy.cuda.get_current_stream()
        if relu and a is not None and _key(a) in paths.live_masks:
            mask = paths.masks[_key(a)]
            if not is_capturing(blas.cupy):
                blas.fused_gemms("backward_drelu", h_next.shape, w_next.shape, out.dtype,
                                 stream)

            def launch_drelu() -> None:
                blas.backprop_relu(h_next, w_next, mask, out, stream)
            return launch_drelu

        def launch() -> None:
            blas.matmul(h_next, w_next, out, stream, right_t=True)
            epilogue()
        return launch
    return _Variant(make)


def weight_grads(a_prev: Any, h: Any, dw: Any, db: Any, w: Any, decay: float) -> _Variant:
    """``dw = a_prev^T h + decay w`` and ``db = sum_rows h`` in one cuBLASLt call."""
    def make(blas: Any, paths: CapturePaths) -> Callable[[], None]:
        stream = blas.cupy.cuda.get_current_stream()
        if not is_capturing(blas.cupy):  # the plan (heuristic) is made in the warm-up
            blas.fused_gemms("weight_grads", a_prev.shape, h.shape, h.dtype, stream)

        def launch() -> None:
            blas.weight_grads(a_prev, h, dw, db, stream, w=w if decay else None,
                              decay=decay)
        return launch
    return _Variant(make)


def elapsed_ms(cupy: Any, run: Callable[[], Any], calls: int) -> float:
    """Device milliseconds of ``calls`` back-to-back calls of ``run``, by CUDA events."""
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(calls):
        run()
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop)
