"""Row-chunked threading for the NumPy backend's elementwise work.

NumPy's matrix products already use every core through BLAS, but its ufuncs run on one
thread; after each product the bias, activation, ``⊙ phi'`` and the optimizer update leave
the other cores to BLAS's worker threads, which spin for a while after every product.
NumPy releases the GIL inside ufuncs, and so do the compiled passes of
:mod:`gpumlp.backends.cpu_kernels` (``nogil``), so that work can be split into disjoint row
ranges over a small pool — the NumPy backend does so only when asked (``GPUMLP_NUM_THREADS``
or ``threads=``), because on two cores one thread is faster at every size measured.  The
compiled Adam update (L2 term folded in) of a float32 flat buffer, timed right after a BLAS
product (a 784x128 by 128x512 weight gradient, so OpenBLAS's two threads are still spinning):
the kernel on the calling thread, split by :class:`RowChunks` over two threads, and a Numba
``prange`` over two chunks on the OpenMP threading layer; median of 40 interleaved repeats
(``benchmarks/cpu_update_threads.py --layer omp``, alone on the 2-core Intel Xeon, AVX-512,
OpenBLAS 0.3.31, Numba 0.68; one-minute load average 1.0):

=========  ==========  ================  ==========================
elements   one thread  RowChunks(2)      ``prange``, OpenMP 2
=========  ==========  ================  ==========================
670,000    0.50 ms     0.57 ms           1.96 ms (p75 17.6 ms)
270,000    0.24 ms     0.34 ms           5.36 ms (p75 22.0 ms)
60,000     0.055 ms    0.057 ms          2.68 ms
=========  ==========  ================  ==========================

Our second thread finds the second core busy with a BLAS thread that spins for a while
after every product; OpenMP's threads spin too and fight BLAS's for the two cores (TBB is
not installed).  So the compiled passes stay serial and do not use Numba's parallel loops,
whose default layer (workqueue) may not be entered from two threads at once either.  On a
machine with more cores than BLAS keeps busy the split may pay: ``GPUMLP_NUM_THREADS``
asks for it, and BLAS's threads plus ours should not exceed the cores.

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
