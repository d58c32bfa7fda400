"""The device state one run owns, and gives back.

A graph runner's captured steps and a network's captured forward each run on streams of
their own, read device scalars of their own (:class:`~gpumlp.backends.cuda.step_state.
StepState`: step, learning rate, dropout counter, loss; with its split-K scratch and span
tables), and, where a GEMM takes the direct cuBLAS(Lt) route, use handles bound to those
streams with a workspace each, and the ReLU masks cuBLASLt keeps.  A :class:`DeviceRun`
holds all of it for its owner, which passes it where it is needed and closes it when done
(``close()`` or ``with``); a run nobody closed is closed when it is collected.  So a grid
search of many fits ends with the device memory and the library handles it started with.

Examples
--------
>>> from gpumlp.backends.cuda import run  # doctest: +SKIP
>>> with run.DeviceRun(backend, "float32", streams=2) as device_run:  # doctest: +SKIP
...     main, side = device_run.streams
"""

from __future__ import annotations

import weakref
from typing import Any

from . import routes


class DeviceRun:
    """``streams`` new non-blocking streams and a step state of ``dtype`` on ``backend``;
    :meth:`close` destroys the cuBLAS(Lt) handles, drops the workspaces and masks made for
    the streams (idempotent)."""

    def __init__(self, backend: Any, dtype: Any, streams: int):
        cupy = backend.xp
        self.streams = tuple(cupy.cuda.Stream(non_blocking=True) for _ in range(streams))
        self.state = backend.new_step_state(dtype)
        self._paths = routes.paths_of(backend)
        # Collected unclosed: its streams are released at the next safe point (a finalizer
        # may run inside another run's capture, where nothing may be freed).
        self._finalizer = weakref.finalize(self, self._paths.defer_release, self.streams)

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Destroy the handles and drop the workspaces and masks of this run's streams (and
        of runs collected unclosed); call outside any capture."""
        if self._finalizer.detach() is not None:
            self._paths.release(self.streams)

    def __enter__(self) -> "DeviceRun":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
