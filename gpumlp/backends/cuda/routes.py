"""Which route each GEMM takes: our fused kernel, cuBLAS + our epilogue, or cuBLAS(Lt).

One chooser (:meth:`RouteChooser.run`) serves eager and captured steps alike: per
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

The verdicts and cuBLASLt plans are the backend's (:class:`RouteChooser`, a cache of
measurements); the handles, workspaces and masks of the direct route are the run's
(:class:`LibraryRoute`, held by :class:`gpumlp.backends.cuda.run.DeviceRun`), made for its
streams and given back when it closes.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any, Callable

import numpy as np

from . import cublas

#: Launches per candidate when timing the routes of a GEMM (eager and captured alike).
TIMING_REPEATS = 5


def new_api() -> cublas.BlasApi:
    """The library entry points (the tests substitute an emulation here)."""
    return cublas.CtypesBlas()


class RouteChooser:
    """The GEMM route chooser of one backend: the verdict of each (mode, operation, shape,
    dtype), and the library's entry points and cuBLASLt plans.

    Shared by every run of the backend on purpose: a verdict is a measurement of the device
    (which route is faster for a GEMM of this shape), not a resource — timing it again per
    fit would cost each fit of a grid search its warm-up launches and could only reach the
    same answer.  Likewise a cuBLASLt plan (descriptors and the heuristic's algorithm) is
    host-side and usable with any handle of the device.  Everything that holds device
    memory or a library handle — the handles bound to a run's streams, their workspaces, the
    ReLU masks — belongs to the run (:class:`LibraryRoute`, owned by
    :class:`gpumlp.backends.cuda.run.DeviceRun`).
    """

    def __init__(self, cupy: Any, preference: str = "auto"):
        self.cupy = cupy
        #: ``GPUMLP_GEMM``: "fused" or "cublas" forces that route where it is available.
        self.preference = preference
        #: The route of each (mode, operation, shape, dtype), eager and captured alike.
        self.verdicts: dict[tuple, str] = {}
        #: cuBLASLt plans by (operation, dtype, GEMM, alignments) (:meth:`DirectBlas.plan`).
        self.plans: dict[tuple, Any] = {}
        #: Why the direct route is unavailable (no cuBLAS library), once found.
        self.unavailable: str | None = None
        self._api: cublas.BlasApi | None = None
        self._lock = threading.Lock()

    def api(self) -> cublas.BlasApi | None:
        """The library's entry points (loaded once), or ``None`` with :attr:`unavailable`
        saying why (warned once)."""
        with self._lock:
            if self._api is None and self.unavailable is None:
                try:
                    self._api = new_api()
                except cublas.BlasError as exc:
                    self.unavailable = str(exc)
                    warnings.warn(f"captured steps use the fused GEMMs only: {exc}",
                                  RuntimeWarning, stacklevel=4)
            return self._api

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


class LibraryRoute:
    """One run's direct cuBLAS(Lt) route: handles bound to the run's streams with a
    workspace each, and the ReLU masks its cuBLASLt forwards keep; :meth:`release` gives
    them back."""

    def __init__(self, chooser: RouteChooser):
        self.chooser = chooser
        self._blas: cublas.DirectBlas | None = None
        #: ReLU bit-masks kept by cuBLASLt forwards, by (address, shape) of the activations.
        self.masks: dict[tuple, Any] = {}
        #: The activations whose latest recorded forward wrote its mask (see :func:`forward`).
        self.live_masks: set[tuple] = set()

    def blas(self, stream: Any) -> cublas.DirectBlas | None:
        """The direct route bound to ``stream`` (binding it now: call outside capture), or
        ``None`` where the library is unavailable (:attr:`RouteChooser.unavailable`)."""
        release_orphans()  # outside capture here: a good moment to free collected runs
        if self._blas is None:
            api = self.chooser.api()
            if api is None:
                return None
            self._blas = cublas.DirectBlas(self.chooser.cupy, api, plans=self.chooser.plans)
        try:
            self._blas.prepare(stream)
        except cublas.BlasError as exc:
            self.chooser.unavailable = str(exc)
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

    def workspace_nbytes(self) -> int:
        """Device bytes of the workspaces bound to the run's streams."""
        return 0 if self._blas is None else self._blas.workspace_nbytes()

    def release(self) -> None:
        """Destroy the handles (after their streams' queued work), drop the workspaces and
        the masks.  Call outside any capture."""
        self.masks.clear()
        self.live_masks.clear()
        if self._blas is not None:
            self._blas.release_all()


#: Library routes of runs collected without ``close()``: a finalizer may run inside another
#: run's capture, where destroying a handle or freeing memory is not allowed, so they wait
#: here for the next safe point (:func:`release_orphans`).  Nothing else is kept here.
_ORPHANS: list[LibraryRoute] = []
_ORPHANS_LOCK = threading.Lock()


def orphan(library: LibraryRoute) -> None:
    """Release ``library`` (a collected run's) at the next safe point."""
    with _ORPHANS_LOCK:
        _ORPHANS.append(library)


def release_orphans() -> None:
    """Release the library routes of every run collected without ``close()`` (call outside
    any capture)."""
    with _ORPHANS_LOCK:
        orphans, _ORPHANS[:] = list(_ORPHANS), []
    for library in orphans:
        library.release()


def is_capturing(cupy: Any) -> bool:
    """Whether the current stream is capturing (a runner's capture, not its warm-up)."""
    return bool(cupy.cuda.get_current_stream().is_capturing())


def run(backend: Any, device_run: Any, op: str, shape: tuple, dtype: Any,
        fused: Callable[[], None] | None,
        direct: Callable[[Any], Callable[[], None] | None] | None) -> str | None:
    """Run one GEMM of a step recorded by ``device_run`` by the route chosen for it
    (:meth:`RouteChooser.run`, the chooser eager GEMMs use too); returns the route, ``None``
    where none can run.

    ``direct(blas, library)`` prepares the direct variant (cuBLASLt plans and masks outside
    capture) and returns its launch, or ``None`` when it cannot run this operation.
    Inside the run's :meth:`~gpumlp.backends.cuda.run.DeviceRun.weight_grads_beside`, a
    weight gradient runs on the side stream.
    """
    side = device_run.side_stream
    if op == "weight_grads" and side is not None:
        side.wait_event(backend.xp.cuda.get_current_stream().record())
        with side:
            return _route(backend, device_run.library, op, shape, dtype, fused, direct)
    return _route(backend, device_run.library, op, shape, dtype, fused, direct)


def _route(backend: Any, library: LibraryRoute, op: str, shape: tuple, dtype: Any,
           fused: Callable[[], None] | None,
           direct: Callable[[Any], Callable[[], None] | None] | None) -> str | None:
    cupy = backend.xp
    chooser = library.chooser
    stream = cupy.cuda.get_current_stream()
    # A forward overwrites its activations: a mask kept for them is stale unless this very
    # forward (a cuBLASLt ReLU variant) writes it again.
    library.live_masks.discard(getattr(direct, "activations_key", None))
    variant = None
    if direct is not None and backend.gemm_path != "fused":
        if is_capturing(cupy):  # only what the warm-up chose and prepared
            blas = library.prepared(stream)
            if blas is not None and chooser.verdicts.get(
                    ("captured", op, tuple(shape), np.dtype(dtype).str)) == "direct":
                variant = direct(blas, library)
        else:  # the warm-up: bind the stream, make plans and masks
            blas = library.blas(stream)
            if blas is not None:
                try:
                    variant = direct(blas, library)
                except cublas.BlasUnsupported:
                    variant = None
                except cublas.BlasError as exc:
                    fall_back(op, shape, exc)
                    variant = None
    return chooser.run("captured", op, shape, dtype, {"fused": fused, "direct": variant})


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
    return backend.routes.choices("captured")


# ---------------------------------------------------------------- the direct variants
# Each returns ``make(blas, library)``, which prepares the variant (outside capture: plans and
# masks) and returns the launch, or ``None`` where the variant cannot run.

def _key(array: Any) -> tuple:
    return cublas.pointer(array), tuple(array.shape)


class _Variant:
    """A direct variant's factory; ``activations_key`` names the activations a forward
    writes (their kept ReLU mask, if any, is stale once any other forward writes them)."""

    activations_key: tuple | None = None

    def __init__(self, make: Callable[[Any, LibraryRoute], Callable[[], None] | None],
                 activations: Any = None):
        self.make = make
        if activations is not None:
            self.activations_key = _key(activations)

    def __call__(self, blas: Any, library: LibraryRoute) -> Callable[[], None] | None:
        return self.make(blas, library)


def forward(x: Any, w: Any, out: Any, epilogue: Callable[[], None],
            b: Any = None, relu_mask: bool = False) -> _Variant:
    """``out = x w`` on cuBLAS, then our bias + activation (+ dropout) epilogue kernel; or,
    with ``relu_mask`` (a ReLU layer without dropout), ``out = relu(x w + b)`` in one
    cuBLASLt call that also keeps the ReLU bit-mask for :func:`backward`."""
    def make(blas: Any, library: LibraryRoute) -> Callable[[], None] | None:
        stream = blas.cupy.cuda.get_current_stream()
        if relu_mask:
            key = _key(out)
            mask = library.masks.get(key)
            if mask is None:
                if is_capturing(blas.cupy):
                    return None  # never made in the warm-up: not this route
                n, m = out.shape
                mask = library.masks[key] = blas.cupy.zeros(cublas.aux_bytes(m, n),
                                                            dtype=np.uint8)
            if not is_capturing(blas.cupy):
                blas.fused_gemms("forward_relu", x, w, out, stream)

            def launch_relu() -> None:
                blas.affine_relu(x, w, b, out, mask, stream)
                library.live_masks.add(key)
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
    def make(blas: Any, library: LibraryRoute) -> Callable[[], None] | None:
        stream = blas.cupy.cuda.get_current_stream()
        if relu and a is not None and _key(a) in library.live_masks:
            mask = library.masks[_key(a)]
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
    def make(blas: Any, library: LibraryRoute) -> Callable[[], None]:
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
