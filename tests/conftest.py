"""Small synthetic data sets shared by the estimator, bad-input and save/load tests.

Each one is tiny (a few hundred rows, a handful of features) so that training for a few
epochs takes milliseconds on the CPU, yet separable enough that a fitted model is clearly
better than chance.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest


def _blobs(n_per_class: int, n_classes: int, n_features: int, seed: int,
           spread: float = 4.0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around random centres ``spread`` apart (on average): easy to classify."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(n_classes, n_features))
    y = np.repeat(np.arange(n_classes), n_per_class)
    X = centres[y] + rng.normal(size=(len(y), n_features))
    order = rng.permutation(len(y))
    return X[order].astype(np.float32), y[order]


@pytest.fixture
def binary_data() -> tuple[np.ndarray, np.ndarray]:
    """120 rows, 4 features, labels 0/1."""
    return _blobs(60, 2, 4, seed=1)


@pytest.fixture
def multiclass_data() -> tuple[np.ndarray, np.ndarray]:
    """150 rows, 5 features, labels 0/1/2."""
    return _blobs(50, 3, 5, seed=2)


@pytest.fixture
def regression_data() -> tuple[np.ndarray, np.ndarray]:
    """200 rows, 3 features; y is a smooth function of X (R^2 near 1 is reachable)."""
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, size=(200, 3)).astype(np.float32)
    y = (1.5 * X[:, 0] - 2.0 * X[:, 1] + 0.5 * X[:, 2] + 0.3).astype(np.float32)
    return X, y


@pytest.fixture
def make_blobs():
    """``make_blobs(n_per_class, n_classes, n_features, seed)`` -> ``(X float32, y int)``."""
    return _blobs


@pytest.fixture(autouse=True)
def fresh_settings():
    """Every test reads the environment variables anew (gpumlp.config keeps what it parsed);
    a test that changes one mid-way calls ``config.reset()`` itself."""
    from gpumlp import config

    config.reset()
    yield
    config.reset()


def pytest_collection_modifyitems(config, items):
    """Skip ``@pytest.mark.gpu`` tests, with the reason, where CuPy or a device is missing."""
    from gpumlp.backends import cupy_unavailable_reason

    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    reason = cupy_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA device: {reason}")
    for item in gpu_items:
        item.add_marker(skip)


def load_support(name: str):
    """A module of ``tests/kernels/`` (loaded by path: the name ``kernels`` is the CUDA folder)."""
    key = f"gpumlp_test_{name}"
    if key in sys.modules:  # one copy per session: its classes and state are shared
        return sys.modules[key]
    path = Path(__file__).parent / "kernels" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[key]
        raise
    return module


@pytest.fixture(scope="session")
def host():
    """The CPU build of the CUDA kernels (tests/kernels/harness.cpp), built once a session."""
    harness = load_support("harness")
    try:
        return harness.Harness(harness.build())
    except harness.HarnessUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture
def emulated_gpu(host, monkeypatch):
    """``(cupy, emulated)``: CuPy replaced by ``tests/kernels/emulated_cupy.py`` (kernels run
    on the CPU harness, streams, captures and the memory pool checked), and its module."""
    from gpumlp.backends.cuda import graph_pool, kernels

    emulated = load_support("emulated_cupy")
    module, get_kernel = emulated.make_cupy(host)
    monkeypatch.setattr(graph_pool, "IDLE", graph_pool.IdleRunners())  # none from other tests
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setattr(kernels, "get_kernel", get_kernel)
    monkeypatch.setattr(kernels, "load_module", lambda source: None)
    yield module, emulated
    emulated.reset()


@pytest.fixture
def cp(emulated_gpu):
    """The emulated CuPy module of :func:`emulated_gpu`."""
    return emulated_gpu[0]
