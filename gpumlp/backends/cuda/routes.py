"""Which route each GEMM takes: our fused kernel, cuBLAS + our epilogue, or cuBLAS(Lt).

One chooser (:meth:`CapturePaths.run`) serves eager and captured steps alike: per
(operation, shape, dtype) it launches every candidate that can run, times each with CUDA
events (:func:`fastest`), keeps the verdict and launches the winner from then on;
``GPUMLP_GEMM=fused|cublas`` forces a route where it can run.  The candidates differ:

* **eager** (:meth:`CupyBackend._choose`): the fused kernel, or ``cupy.matmul`` followed by
  our epilogue kernel;
* **captured**: ``cupy.matmul`` cannot run inside a stream capture, but cuBLAS and cuBLASLt
  can when called directly (:mod:`gpumlp.backends.cuda.cublas`).  During a runner's
  **warm-up** (recording its step state, not capturing) the direct route is prepared and timed
  against the fused kernel: cuBLAS followed by our epilogue kernel; for a ReLU layer without
  dropout one cuBLASLt call (bias + ReLU keeping the bit-mask forward, dReLU from it
  backward); for a weight gradient one cuBLASLt call with the bias gradient fused — with the
  handles bound to the runner's stream and the plans and masks made there.  During the
  **capture** nothing is timed: the verdict of the warm-up is recorded.  Where the direct
  route is unavailable (no cuBLAS library, an epilogue cuBLASLt has no algorithm for, a
  stream not prepared in the warm-up) the fused kernel is used.

A candidate whose kernel was dropped (it failed to compile or launch) is not offered.
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

#: Launches per candidate when timing the routes of a GEMM (eager and captured alike).
TIMING_REPEATS = 5


def new_api() -> cublas.BlasApi:
    """The library entry points (the tests substitute an emulation here)."""
    return cublas.CtypesBlas()


class CapturePaths:
    """Per-backend state: the GEMM route chooser's verdicts, the direct-BLAS object and its
    prepared streams, and the ReLU masks kept by cuBLASLt forwards."""

    def __init__(self, cupy: Any, preference: str = "auto"):
        self.cupy = cupy
        #: ``GPUMLP_GEMM``: "fused" or "cublas" forces that route where it is available.
        self.preference = preference
        #: The route of each (mode, operation, shape, dtype), eager and captured alike.
        self.verdicts: dict[tuple, str] = {}
        self._blas: cublas.DirectBlas | None = None
        self.unavailable: str | None = None
        self._lock = threading.Lock()
        #: ReLU bit-masks kept by cuBLASLt forwards, by (address, shape) of the activations.
        self.masks: dict[tuple, Any] = {}
        #: The activations whose latest recorded forward wrote its mask (see ForwardRelu).
        self.live_masks: set[tuple] = set()
        #: The stream each mask was made on (the runner that owns it releases them).
        self.mask_streams: dict[tuple, int] = {}
        #: Streams of runs collected without close(), released at the next safe point.
        self.pending: list[Any] = []

    def defer_release(self, streams: Any) -> None:
        """Release ``streams`` later (a finalizer may run inside another run's capture,
        where destroying a handle or freeing memory is not allowed)."""
        with self._lock:
            self.pending.extend(streams)

    def release(self, streams: Any = ()) -> None:
        """Give back what was made for ``streams`` (a closed runner's or captured
        forward's), and for any whose run was collected unclosed: their cuBLAS(Lt) handles
        and workspaces, and the ReLU masks made there.  Call outside any capture."""
        with self._lock:
            streams, self.pending = [*streams, *self.pending], []
            pointers = {cublas.stream_pointer(stream) for stream in streams}
            for key in [k for k, p in self.mask_streams.items() if p in pointers]:
                del self.masks[key], self.mask_streams[key]
                self.live_masks.discard(key)
            if self._blas is not None:
                for stream in streams:
                    self._blas.release(stream)

    def run(self, mode: str, op: str, shape: tuple, dtype: Any,
            candidates: dict[str, Callable[[], None] | None]) -> str | None:
        """The one route chooser: launch ``op`` by the route chosen for its key, choosing
        among the ``candidates`` that can run (not ``None``) the first time: the one
        ``GPUMLP_GEMM`` names, else the one measured fastest (:func:`fastest`).  Inside a
        capture nothing is timed: a key not measured in the warm-up is fused.  Returns the
        route, or ``None`` where no candidate can run."""
        available = {name: launch for name, launch in candidates.items() if launch is not None}
        if not available:
            return None
        key = (mode, op, tuple(shape), np.dtype(dtype).str)
        route = self.verdicts.get(key)
        if route not in available:
            if is_capturing(self.cupy):
                route = "fused" if "fused" in available else next(iter(available))
            else:
                try:
                    route = self._decide(available)
                except cublas.BlasError as exc:  # the library refused a call its plan allowed
                    if "fused" not in available:
                        raise
                    fall_back(op, shape, exc)
                    route = "fused"
                self.verdicts[key] = route
        try:
            available[route]()
        except cublas.BlasError as exc:
            if route == "fused" or "fused" not in available or is_capturing(self.cupy):
                raise
            fall_back(op, shape, exc)
            route = self.verdicts[key] = "fused"
            available[route]()
        return route

    def _decide(self, available: dict[str, Callable[[], None]]) -> str:
        if len(available) == 1:
            return next(iter(available))
        if self.preference == "fused" and "fused" in available:
            return "fused"
        if self.preference == "cublas":
            return next(name for name in available if name != "fused")
        return fastest(self.cupy, available)

    def choices(self, mode: str) -> dict[tuple, str]:
        """The route chosen for each (operation, shape, dtype) of ``mode`` so far."""
        return {key[1:]: route for key, route in self.verdicts.items() if key[0] == mode}

    def blas(self, stream: Any) -> cublas.DirectBlas | None:
        """The direct route bound to ``stream`` (binding it now: call outside capture), or
        ``None`` with :attr:`unavailable` saying why."""
        if self.unavailable is not None:
            return None
        if self.pending:  # outside capture here: a good moment to free collected runs
            self.release()
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
            paths = _PATHS[backend] = CapturePaths(backend.xp, backend.gemm_path)
        return paths


def release_pending() -> None:
    """Release the streams of every run collected without ``close()`` (outside capture)."""
    with _PATHS_LOCK:
        every = list(_PATHS.values())
    for paths in every:
        paths.release()


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


def run(backend: Any, op: str, shape: tuple, dtype: Any, fused: Callable[[], None] | None,
        direct: Callable[[Any], Callable[[], None] | None] | None) -> str | None:
    """Run one GEMM of a recorded step by the route chosen for it (:meth:`CapturePaths.run`,
    the chooser eager GEMMs use too); returns the route, ``None`` where none can run.

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


def _route(backend: Any, op: str, shape: tuple, dtype: Any, fused: Callable[[], None] | None,
           direct: Callable[[Any], Callable[[], None] | None] | None) -> str | None:
    cupy = backend.xp
    paths = paths_of(backend)
    stream = cupy.cuda.get_current_stream()
    # A forward overwrites its activations: a mask kept for them is stale unless this very
    # forward (a cuBLASLt ReLU variant) writes it again.
    paths.live_masks.discard(getattr(direct, "activations_key", None))
    variant = None
    if direct is not None and backend.gemm_path != "fused":
        if is_capturing(cupy):  # only what the warm-up chose and prepared
            blas = paths.prepared(stream)
            if blas is not None and paths.verdicts.get(
                    ("captured", op, tuple(shape), np.dtype(dtype).str)) == "direct":
                variant = direct(blas, paths)
        else:  # the warm-up: bind the stream, make plans and masks
            blas = paths.blas(stream)
            if blas is not None:
                try:
                    variant = direct(blas, paths)
                except cublas.BlasUnsupported:
                    variant = None
                except cublas.BlasError as exc:
                    fall_back(op, shape, exc)
                    variant = None
    return paths.run("captured", op, shape, dtype, {"fused": fused, "direct": variant})


def fall_back(op: str, shape: tuple, error: Exception) -> None:
    """Warn that ``op`` stays on the fused GEMM because the library refused it."""
    warnings.warn(f"{op} at {tuple(shape)} stays on the fused GEMM: cuBLAS(Lt) refused it "
                  f"({error})", RuntimeWarning, stacklevel=4)


def fastest(cupy: Any, candidates: dict[str, Callable[[], None]]) -> str:
    """The candidate whose launches take least device time: each launched once to warm up
    (module load, a library's first call), then timed over :data:`TIMING_REPEATS` launches
    with CUDA events."""
    timings = {}
    for name, launch in candidates.items():
        launch()
        timings[name] = elapsed_ms(cupy, launch, TIMING_REPEATS)
    return min(timings, key=timings.get)


def choices(backend: Any) -> dict[tuple, str]:
    """The route measured for each captured (operation, shape, dtype) so far."""
    return paths_of(backend).choices("captured")


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
                paths.mask_streams[key] = cublas.stream_pointer(stream)
                mask = paths.masks[key] = blas.cupy.zeros(cublas.aux_bytes(m, n),
                                                          dtype=np.uint8)
            if not is_capturing(blas.cupy):
                blas.fused_gemms("forward_relu", x, w, out, stream)

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
                blas.fused_gemms("backward_drelu", h_next, w_next, out, stream)

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
            blas.fused_gemms("weight_grads", a_prev, h, dw, stream, c=w if decay else None)

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
