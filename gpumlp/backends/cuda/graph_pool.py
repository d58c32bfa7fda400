"""Captured-step runners kept between fits, so a refit of the same step replays at once.

Capturing a step costs a warm-up (each GEMM's route timed on the device), three stream
captures and their instantiation, all done before the first replay.  A refit of the same model on data of the same shape — ``fit`` called again, the next fold of a
cross-validation, a clone in a grid search — needs exactly the same graphs, so when a
trainer is done with its runner (:meth:`gpumlp.training.Trainer.release`) the runner waits
here, and the next trainer whose step has the same key takes it instead of capturing anew
(:meth:`gpumlp.backends.cuda.graphs.GraphStepRunner.key_for`: data shapes, batch, hyper-parameters,
network structure, optimizer constants, backend and device).

A runner holds device memory (its copy of the data, twins of the parameters and optimizer
state, step buffers), so at most :attr:`IdleRunners.capacity` idle runners are kept, the
least recently used dropped first; ``GPUMLP_IDLE_GRAPHS`` sets the number (0 keeps none) and
:func:`clear` frees them all.  A runner is in at most one trainer's hands at a time: taking
one removes it from the pool (thread-safe).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from ... import config
from . import routes

#: Idle runners kept when ``GPUMLP_IDLE_GRAPHS`` is unset.
DEFAULT_CAPACITY = config.DEFAULT_IDLE_GRAPHS


class IdleRunners:
    """Runners no trainer is using, by key, least recently used first (thread-safe)."""

    def __init__(self, capacity: int | None = None):
        self._capacity = capacity
        self._runners: OrderedDict[int, tuple[tuple, Any]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def capacity(self) -> int:
        """How many idle runners are kept (``GPUMLP_IDLE_GRAPHS``, read at first use so that
        a bad value is reported before a fit, not at import)."""
        if self._capacity is None:
            self._capacity = config.get("GPUMLP_IDLE_GRAPHS")
        return self._capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        if int(value) != value or value < 0:
            raise ValueError(f"capacity={value!r} must be an integer >= 0")
        self._capacity = int(value)

    def take(self, key: tuple) -> Any | None:
        """Remove and return an idle runner of ``key``, or ``None``."""
        self.capacity  # noqa: B018 -- a bad GPUMLP_IDLE_GRAPHS fails here, before training
        with self._lock:
            for ident, (runner_key, runner) in self._runners.items():
                if runner_key == key:
                    del self._runners[ident]
                    return runner
        return None

    def keep(self, runner: Any) -> None:
        """Keep ``runner`` (no longer used by any trainer) for a later fit of its key."""
        runner.bind(None)
        capacity = self.capacity
        evicted = []
        with self._lock:
            self._runners[id(runner)] = (runner.key, runner)
            self._runners.move_to_end(id(runner))
            while len(self._runners) > capacity:
                evicted.append(self._runners.popitem(last=False)[1][1])
        for old in evicted:  # outside the lock: closing waits for the runner's stream
            old.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._runners)

    def clear(self) -> None:
        """Close every idle runner: their device memory returns to CuPy's pool and their
        cuBLAS(Lt) handles are destroyed."""
        with self._lock:
            runners = [runner for _, runner in self._runners.values()]
            self._runners.clear()
        for runner in runners:
            runner.close()
        routes.release_orphans()  # and what runs collected without close() left


#: The process-wide pool the trainers use.
IDLE = IdleRunners()


def clear() -> None:
    """Free the captured graphs kept for later fits (see the module docstring)."""
    IDLE.clear()
