"""The device state one run owns, and gives back.

A run is whatever executes a model's operations for a while: a graph runner's warm-up,
captures and replays, a network's captured forward, the eager epochs of a fit, one
prediction.  Its kernels read device scalars (:class:`~gpumlp.backends.cuda.step_state.
StepState`: step, learning rate, dropout counter, loss accumulator), write split-K scratch
and read span tables that must keep their addresses for as long as a captured graph may
replay; its captured steps run on streams of their own, and where a GEMM takes the direct
cuBLAS(Lt) route it uses handles bound to those streams with a workspace each, and the ReLU
masks cuBLASLt keeps (:class:`~gpumlp.backends.cuda.routes.LibraryRoute`).  A
:class:`DeviceRun` holds all of it for its owner.

Nothing reaches the state through a global: the owner passes :attr:`DeviceRun.backend` — a
view of the shared backend bound to this run — to the operations it runs (the network's
``forward``, the optimizer's ``step``, :class:`gpumlp.step.TrainingStep`), and closes the run
when done (``close()`` or ``with``); a run nobody closed is closed when it is collected.
Only the route verdicts and cuBLASLt plans, measurements rather than resources, are the
backend's (:class:`~gpumlp.backends.cuda.routes.RouteChooser`).  So a grid search of many
fits ends with the device memory and the library handles it started with.

Examples
--------
>>> with backend.open_run("float32") as run:  # doctest: +SKIP
...     network.forward(x, workspace, backend=run.backend)
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator

import numpy as np

from ..base import Run
from . import routes
from .step_state import StepState


class DeviceRun(Run):
    """The device state of one run on ``backend`` (the shared CuPy backend): ``streams`` new
    non-blocking streams, step states of ``dtype`` made on first use, split-K scratch, span
    tables and the direct route's handles, workspaces and masks; :meth:`close` gives them
    back (idempotent).  Used by one thread at a time."""

    def __init__(self, backend: Any, dtype: Any = None, streams: int = 0):
        self._shared = backend
        self.xp = backend.xp
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.streams = tuple(self.xp.cuda.Stream(non_blocking=True) for _ in range(streams))
        #: Split-K workspaces and tile counters by plan (:func:`gemm_plan.scratch`).
        self.scratch: dict[tuple, tuple[Any, Any]] = {}
        #: Device ``(offset, size)`` tables of ``add_weights_l2_loss``, by spans.
        self.span_tables: dict[tuple, Any] = {}
        #: Handles, workspaces and ReLU masks of the direct cuBLAS(Lt) route.
        self.library = routes.LibraryRoute(backend.routes)
        #: Whether the operations record a step into :attr:`state` (:meth:`recording`).
        self.recording_step = False
        #: The stream of the weight gradients inside :meth:`weight_grads_beside`.
        self.side_stream: Any = None
        self._state: StepState | None = None
        self._eager: dict[str, StepState] = {}
        self._view: Callable[[], Any] | None = None
        # Collected unclosed: its handles are destroyed at the next safe point (a finalizer
        # may run inside another run's capture, where nothing may be freed); its memory
        # returns to CuPy's pool with the arrays.
        self._finalizer = weakref.finalize(self, routes.orphan, self.library)

    @property
    def backend(self) -> Any:
        """The shared backend bound to this run: pass it to the operations of the run."""
        view = self._view() if self._view is not None else None
        if view is None:  # held by its users, not by the run: no reference cycle
            view = self._shared.bound_to(self)
            self._view = weakref.ref(view)
        return view

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    # ------------------------------------------------------------------------ step state
    @property
    def state(self) -> StepState:
        """The step state recorded steps read (made on first use, of the run's dtype)."""
        if self._state is None:
            if self.dtype is None:
                raise RuntimeError("a run that records steps needs its dtype: "
                                   "DeviceRun(backend, dtype, ...)")
            self._state = StepState(self.xp, self.dtype)
        return self._state

    def eager_state(self, dtype: Any) -> StepState:
        """The scalars eager launches of ``dtype`` read (the dropout base stays zero; the
        learning rate and step are written before each launch that reads them)."""
        key = np.dtype(dtype).str
        state = self._eager.get(key)
        if state is None:
            state = self._eager[key] = StepState(self.xp, dtype)
        return state

    @contextlib.contextmanager
    def recording(self, loss_accumulator: Any) -> Iterator[StepState]:
        """Record steps against :attr:`state`, the loss kernels adding into
        ``loss_accumulator``: a runner's warm-up and captures."""
        state = self.state
        previous = state.loss, self.recording_step
        state.loss, self.recording_step = loss_accumulator, True
        try:
            yield state
        finally:
            state.loss, self.recording_step = previous

    # --------------------------------------------------------------- the weight-grad branch
    @contextlib.contextmanager
    def weight_grads_beside(self, main: Any, side: Any) -> Iterator[None]:
        """Inside, each weight-gradient GEMM of a recorded step runs on ``side``, forked
        from ``main`` (the current stream) by an event just after its input delta is
        written; at the end ``main`` waits for ``side``.  In a capture the weight gradients
        thus become a parallel branch beside the backward chain (nothing on ``main`` reads
        what they write before the join), which shortens the graph's critical path."""
        previous, self.side_stream = self.side_stream, side
        try:
            yield
        finally:
            self.side_stream = previous
            main.wait_event(side.record())

    def beside(self, launch: Callable[[], Any]) -> None:
        """Run ``launch`` on the side stream of the enclosing :meth:`weight_grads_beside`,
        forked from the current stream now (it sees what is queued before) and joined with
        the weight gradients before the update; outside one, on the current stream.  For
        work nothing on the main stream waits for until the join (a step's L2 term)."""
        side = self.side_stream
        if side is None:
            launch()
            return
        side.wait_event(self.xp.cuda.get_current_stream().record())
        with side:
            launch()

    # --------------------------------------------------------------------------- release
    def nbytes(self) -> int:
        """Device bytes the run holds: step scalars, split-K scratch, span tables, masks
        and the direct route's workspaces."""
        states = [*self._eager.values(), *([self._state] if self._state else [])]
        arrays = [a for pair in self.scratch.values() for a in pair]
        arrays += [*self.span_tables.values(), *self.library.masks.values()]
        return (sum(s.nbytes() for s in states) + sum(a.nbytes for a in arrays)
                + self.library.workspace_nbytes())

    def close(self) -> None:
        """Destroy the run's cuBLAS(Lt) handles (after its streams' queued work) and drop
        its workspaces, masks, scratch, span tables and step scalars (and give back what
        runs collected unclosed left); call outside any capture.  Idempotent."""
        if self._finalizer.detach() is not None:
            self.library.release()
            self.scratch.clear()
            self.span_tables.clear()
            self._state = None
            self._eager.clear()
        if not routes.is_capturing(self.xp):
            routes.release_orphans()
