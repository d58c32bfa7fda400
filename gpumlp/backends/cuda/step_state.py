"""Device-side step state of captured training steps, owned by each graph runner.

A captured CUDA graph replays its kernels with the pointers fixed at capture, so what changes
from step to step (the dropout counter, Adam's step count, the learning rate, the loss being
summed) lives in device scalars that the graph reads and moves on.  Each
:class:`~gpumlp.backends.cuda.graphs.GraphStepRunner` owns its own :class:`StepState`: two models trained in
the same process (threads, interleaved epochs, a grid search) never share one.  While a runner
records its steps, :func:`recording` makes its state the current one for the calling thread
(a context variable), and the backend's operations read it from there; outside a recording
the backend uses per-thread eager scalars and the host values passed to each call.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator

import numpy as np

_current: contextvars.ContextVar["StepState | None"] = contextvars.ContextVar(
    "gpumlp_step_state", default=None)


class StepState:
    """The device scalars one runner's captured steps read.

    ``counter_base`` (int64) is the dropout counter of the step's first layer, ``step``
    (int32) the optimizer's step count, both moved on by the ``advance_step`` kernel inside
    the graph; ``lr`` (the parameter dtype) is written once per epoch; ``loss`` is the
    accumulator the loss kernels add into while recording.
    """

    def __init__(self, xp: Any, dtype: Any):
        self.dtype = np.dtype(dtype)
        self.counter_base = xp.zeros((), dtype=np.int64)
        self.step = xp.zeros((), dtype=np.int32)
        self.lr = xp.zeros((), dtype=self.dtype)
        self.loss: Any = None

    def write(self, counter_base: int, step: int, learning_rate: float) -> None:
        """Set the state from the host (on the current stream; never while recording)."""
        self.counter_base.fill(np.int64(counter_base))
        self.step.fill(np.int32(step))
        self.lr.fill(self.dtype.type(learning_rate))


def current() -> StepState | None:
    """The state being recorded into by this thread, or ``None`` (eager execution)."""
    return _current.get()


@contextlib.contextmanager
def recording(state: StepState, loss_accumulator: Any) -> Iterator[StepState]:
    """Record steps against ``state``, the loss kernels adding into ``loss_accumulator``."""
    previous_loss = state.loss
    state.loss = loss_accumulator
    token = _current.set(state)
    try:
        yield state
    finally:
        _current.reset(token)
        state.loss = previous_loss
