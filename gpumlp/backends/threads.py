"""Row-chunked threading for the NumPy backend's elementwise work.

NumPy's matrix products already use every core through BLAS, but its ufuncs run on one
thread; after each product the bias, activation, ``⊙ phi'`` and the optimizer update leave
the other cores to BLAS's worker threads, which spin for a while after every product.
NumPy releases the GIL inside ufuncs, and so do the compiled passes of
:mod:`gpumlp.backends.cpu_kernels` (``nogil``), so that work can be split into disjoint row
ranges over a small pool — the NumPy backend does so only when asked (``GPUMLP_NUM_THREADS``
or ``threads=``; see :class:`~gpumlp.backends.numpy_backend.NumpyBackend` for why one thread
is the default).  The compiled passes do not use Numba's own parallel loops either: on the
2-core Xeon shared with other work (load average 130-160), the Adam update of 670k float32
parameters right after a BLAS product took at best 0.44 ms on Numba's two OpenMP threads
against 0.57 ms on one thread, but 23.8 ms against 1.0 ms in the median of 60 repeats, and
Numba's default threading layer (workqueue) may not be entered from two threads at once.

:func:`default_threads`, the count when a split is asked for without a number, follows
``GPUMLP_NUM_THREADS``, else ``OMP_NUM_THREADS`` (the variable BLAS libraries read), else the
CPUs this process may run on.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from .. import config

#: Below this many elements a chunk is not worth a thread hand-off (about 20 µs).
MIN_CHUNK_ELEMENTS = 1 << 15


def default_threads() -> int:
    asked = config.get("GPUMLP_NUM_THREADS") or config.get("OMP_NUM_THREADS")
    if asked is not None:
        return asked
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class RowChunks:
    """Runs ``work(start, stop)`` over disjoint row ranges on ``threads`` threads."""

    def __init__(self, threads: int | None = None):
        self.threads = max(1, threads or default_threads())
        self._pool = (ThreadPoolExecutor(self.threads - 1, thread_name_prefix="gpumlp")
                      if self.threads > 1 else None)

    def run(self, work: Callable[[int, int], None], rows: int, row_elements: int) -> None:
        """Split ``rows`` rows of ``row_elements`` elements each; the caller's thread takes
        the first chunk and waits for the others."""
        chunks = min(self.threads, rows * row_elements // MIN_CHUNK_ELEMENTS, rows)
        if chunks <= 1 or self._pool is None:
            work(0, rows)
            return
        bounds = [rows * i // chunks for i in range(chunks + 1)]
        pending = [self._pool.submit(work, bounds[i], bounds[i + 1]) for i in range(1, chunks)]
        work(bounds[0], bounds[1])
        for future in pending:
            future.result()
