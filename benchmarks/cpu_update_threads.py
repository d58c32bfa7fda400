"""The compiled optimizer update on one thread against two, right after a BLAS product.

    PYTHONPATH=. python benchmarks/cpu_update_threads.py [--layer omp] [--repeats 40]

Times :func:`gpumlp.backends.cpu_kernels.adam` (the L2 term folded in) over float32 flat
buffers of 670k, 270k and 60k parameters (mlp-512, mlp-256 and a small network), each call
right after a weight-gradient product (784x128 by 128x512) so BLAS's threads are still
spinning, as in a training step: the kernel on the calling thread, split over two threads
by :class:`gpumlp.backends.threads.RowChunks`, and a Numba ``prange`` over two chunks on the
threading layer ``--layer`` (``omp`` or ``tbb``, where installed).  Prints the median and
quartiles of the interleaved repeats and the load average; the figures behind the choice in
:mod:`gpumlp.backends.threads` come from it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", default="omp", help="Numba threading layer for prange")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args(argv)
    import time

    import numba

    numba.config.THREADING_LAYER = args.layer
    from gpumlp.backends import cpu_kernels as kernels
    from gpumlp.backends.threads import RowChunks

    @numba.njit(parallel=True, nogil=True)
    def adam_prange(p, g, m, v, spans, decay, b1, c1, b2, c2, eps, lr, tiny, chunks):
        n = p.shape[0]
        sums = np.zeros(chunks)
        for c in numba.prange(chunks):
            sums[c] = kernels.adam(p, g, m, v, n * c // chunks, n * (c + 1) // chunks, spans,
                                   decay, b1, c1, b2, c2, eps, lr, tiny)
        return sums.sum()

    f = np.float32
    constants = (f(1e-6), f(0.9), f(0.1), f(0.999), f(0.001), f(1e-8), f(1e-5),
                 f(np.finfo(f).tiny))
    rng = np.random.default_rng(0)
    a, h = rng.random((128, 784), dtype=f), rng.random((128, 512), dtype=f)
    dw = np.empty((784, 512), f)
    pool = RowChunks(2)
    print(f"numba {numba.__version__}, layer {args.layer}, load {os.getloadavg()}")
    for n in (670_000, 270_000, 60_000):
        p = rng.normal(size=n).astype(f) * f(0.05)
        g = rng.normal(size=n).astype(f) * f(1e-3)
        m, v = np.zeros_like(p), np.full_like(p, 1e-6)
        spans = np.array([[0, n * 9 // 10]], np.int64)  # weights; the rest as biases

        def one_thread() -> None:
            kernels.adam(p, g, m, v, 0, n, spans, *constants)

        def two_threads() -> None:
            sums: dict[int, float] = {}

            def work(lo: int, hi: int) -> None:
                sums[lo] = kernels.adam(p, g, m, v, lo, hi, spans, *constants)

            pool.run(work, n, 1)

        def prange_two() -> None:
            adam_prange(p, g, m, v, spans, *constants, 2)

        subjects = {"one thread": one_thread, "RowChunks(2)": two_threads,
                    f"prange {args.layer} 2": prange_two}
        for run in subjects.values():
            run()  # compiles
        times: dict[str, list[float]] = {name: [] for name in subjects}
        for _ in range(args.repeats):
            for name, run in subjects.items():
                np.matmul(a.T, h, out=dw)  # BLAS's threads spin after this
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        print(f"{n:>8} elements: " + "   ".join(
            f"{name} {1e3 * statistics.median(t):.3f} ms (p25 {1e3 * np.percentile(t, 25):.3f},"
            f" p75 {1e3 * np.percentile(t, 75):.3f})" for name, t in times.items()))
    print(f"threading layer: {numba.threading_layer()}, load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
