"""The device scalars a step's kernels read: step count, learning rate, dropout counter, loss.

A captured CUDA graph replays its kernels with the pointers fixed at capture, so what changes
from step to step (the dropout counter, Adam's step count, the learning rate, the loss being
summed) lives in device scalars that the graph reads and moves on.  Eager launches read the
same kernels' arguments from device scalars too (written just before the launch), so one
kernel serves both.  Each :class:`~gpumlp.backends.cuda.run.DeviceRun` owns its
:class:`StepState` objects: two models trained in the same process (threads, interleaved
epochs, a grid search) never share one.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class StepState:
    """The device scalars one run's steps read.

    ``counter_base`` (int64) is the dropout counter of the step's first layer, ``step``
    (int32) the optimizer's step count, both moved on by the ``advance_step`` kernel inside
    a captured graph (eager launches leave the base at zero); ``lr`` (the parameter dtype)
    is written once per epoch, or before each eager launch; ``loss`` is the accumulator the
    loss kernels add into while a step is recorded (``None`` otherwise).
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

    def nbytes(self) -> int:
        """Device bytes of the scalars."""
        return sum(a.nbytes for a in (self.counter_base, self.step, self.lr))
