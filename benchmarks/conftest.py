"""pytest-benchmark suite: `pytest benchmarks/` (kept apart from the test suite).

Compare runs with `pytest benchmarks/ --benchmark-autosave` then `--benchmark-compare`.
"""

import numpy as np
import pytest

from gpumlp.backends import available_backends, get_backend
from gpumlp.bench.protocol import CONFIGS

BACKENDS = [name for name, reason in available_backends().items() if reason is None]
BATCHES = (64, 256, 1024, 8192)


@pytest.fixture(params=BACKENDS)
def backend(request):
    # Bound to one run for the test (as a fit's epoch is): the device state the operations
    # need is made by the first call, not by every timed one.
    with get_backend(request.param).open_run(np.float32) as run:
        yield run.backend


@pytest.fixture(params=sorted(CONFIGS))
def sizes(request):
    return CONFIGS[request.param]


@pytest.fixture(params=BATCHES)
def batch(request):
    return request.param


def synced(backend, fn):
    """Wrap ``fn`` so each timed call waits for the device (a no-op on the CPU)."""
    def call():
        fn()
        backend.synchronize()
    return call


def random_batch(backend, batch, sizes, seed=0):
    rng = np.random.default_rng(seed)
    x = backend.asarray(rng.uniform(size=(batch, sizes[0])).astype(np.float32))
    t = backend.asarray(np.eye(sizes[-1], dtype=np.float32)[rng.integers(0, sizes[-1], batch)])
    return x, t
