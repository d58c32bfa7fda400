"""The eight matrix products of a default-recipe step in NumPy's BLAS against PyTorch's (MKL
on x86), on the same NumPy memory.

    PYTHONPATH=. python benchmarks/cpu_gemm_blas.py [--batch 128] [--repeats 30]

784-512-512-10 at ``--batch`` rows, float32: the forward products, the weight gradients
(``A^T H`` on transposed views) and the backward products (``H W^T``), each written into
preallocated NumPy arrays (``np.matmul(out=)`` and ``torch.matmul(out=)`` on
``torch.from_numpy`` views: no copies).  Prints, per library, the median of the whole
sequence of eight interleaved with the other library's, then each product's median timed
right after the same library's previous call, and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    import threadpoolctl
    import torch

    rng, f, n = np.random.default_rng(0), np.float32, args.batch
    X = rng.random((n, 784), dtype=f)
    W1, W2, W3 = (rng.random(shape, dtype=f) for shape in ((784, 512), (512, 512), (512, 10)))
    A1, A2, Z = np.empty((n, 512), f), np.empty((n, 512), f), np.empty((n, 10), f)
    H3, H2, H1 = rng.random((n, 10), dtype=f), np.empty((n, 512), f), np.empty((n, 512), f)
    dW1, dW2, dW3 = np.empty_like(W1), np.empty_like(W2), np.empty_like(W3)
    products = [("X W1", X, W1, A1), ("A1 W2", A1, W2, A2), ("A2 W3", A2, W3, Z),
                ("A2^T H3", A2.T, H3, dW3), ("H3 W3^T", H3, W3.T, H2),
                ("A1^T H2", A1.T, H2, dW2), ("H2 W2^T", H2, W2.T, H1),
                ("X^T H1", X.T, H1, dW1)]

    def tensor(a: np.ndarray):
        return torch.from_numpy(a) if a.flags.c_contiguous else torch.from_numpy(a.T).T

    libraries = {"numpy": (np.matmul, products),
                 "torch": (torch.matmul, [(name, tensor(a), tensor(b), tensor(o))
                                          for name, a, b, o in products])}

    def sequence(library: str) -> None:
        matmul, ops = libraries[library]
        for _, a, b, out in ops:
            matmul(a, b, out=out)

    sequence("numpy")
    expected = [out.copy() for *_, out in products]
    sequence("torch")
    worst = max(float(np.max(np.abs(out - e) / (np.abs(e) + 1e-3)))
                for (*_, out), e in zip(products, expected))
    blas = threadpoolctl.threadpool_info()
    print(f"batch {n}; NumPy {np.__version__} ({blas[0]['internal_api']} "
          f"{blas[0]['version']}, {blas[0]['num_threads']} threads); PyTorch "
          f"{torch.__version__} (MKL {torch.backends.mkl.is_available()}, "
          f"{torch.get_num_threads()} threads); largest relative difference {worst:.1e}; "
          f"load {os.getloadavg()}")
    whole = {name: [] for name in libraries}
    each = {name: {p[0]: [] for p in products} for name in libraries}
    for _ in range(args.repeats):
        for name, (matmul, ops) in libraries.items():
            start = time.perf_counter()
            sequence(name)
            whole[name].append(time.perf_counter() - start)
            for label, a, b, out in ops:
                start = time.perf_counter()
                matmul(a, b, out=out)
                each[name][label].append(time.perf_counter() - start)
    for name, times in whole.items():
        total = sum(statistics.median(t) for t in each[name].values())
        print(f"{name}: sequence of 8 after the other library's: median "
              f"{1e3 * statistics.median(times):.3f} ms (p75 {1e3 * np.percentile(times, 75):.3f}); "
              f"sum of each product's median {1e3 * total:.3f} ms")
    for label in each["numpy"]:
        print(f"  {label:8} numpy {1e3 * statistics.median(each['numpy'][label]):.3f} ms   "
              f"torch {1e3 * statistics.median(each['torch'][label]):.3f} ms")
    print(f"load {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
