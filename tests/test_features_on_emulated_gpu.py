"""sample_weight, sparse X and lbfgs on the CuPy backend, run on the emulated CuPy
(``tests/kernels/emulated_cupy.py``: NumPy memory, the CUDA kernels on the CPU harness):
the same results as the NumPy backend, and CuPy arrays in give CuPy arrays out."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gpumlp

pytestmark = pytest.mark.kernels


def cupy_backend():
    # The cuBLAS path: these tests are about the training loop and the generic operations
    # (weighted loss, sparse batches, lbfgs's buffer traffic), not the fused GEMMs, which
    # tests/test_cupy_emulated.py checks against NumPy.
    from gpumlp.backends.cuda.backend import CupyBackend

    return CupyBackend(gemm_path="cublas")


@pytest.fixture
def data():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(48, 5))
    y = (X[:, 0] - X[:, 2] > 0).astype(int)
    return X, y, rng.integers(1, 4, size=48).astype(float)


def fit_pair(cp, make, X, y, **fit):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpumlp.ConvergenceWarning)
        host = make(backend="numpy").fit(X, y, **fit)
        device = make(backend=cupy_backend()).fit(cp.asarray(X), y, **fit)
    return host, device


def test_sample_weights_and_lbfgs_match_numpy(emulated_gpu, data):
    cp, _ = emulated_gpu
    X, y, weights = data
    for solver in ("adam", "lbfgs"):
        def make(**backend):
            return gpumlp.MLPClassifier((8,), solver=solver, dtype="float64", max_iter=6,
                                        batch_size=16, alpha=1e-2, random_state=0,
                                        cuda_graph="off", **backend)

        host, device = fit_pair(cp, make, X, y, sample_weight=weights)
        out = device.predict_proba(cp.asarray(X))
        assert isinstance(out, cp.ndarray)
        np.testing.assert_allclose(cp.asnumpy(out), host.predict_proba(X), rtol=1e-9,
                                   atol=1e-12)
        if solver == "adam":
            np.testing.assert_allclose(device.loss_curve_, host.loss_curve_, rtol=1e-9)


def test_sparse_X_on_the_cupy_backend(emulated_gpu, data):
    sparse = pytest.importorskip("scipy.sparse")
    cp, _ = emulated_gpu
    X, y, _ = data
    X = X * (np.abs(X) > 1)
    options = dict(hidden_layer_sizes=(8,), dtype="float64", max_iter=4, batch_size=16,
                   random_state=0, cuda_graph="off")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpumlp.ConvergenceWarning)
        host = gpumlp.MLPRegressor(backend="numpy", **options).fit(X, X[:, 1])
        device = gpumlp.MLPRegressor(backend=cupy_backend(), **options)
        device.fit(sparse.csr_matrix(X), X[:, 1])
    np.testing.assert_allclose(device.predict(sparse.csr_matrix(X)), host.predict(X),
                               rtol=1e-9, atol=1e-12)
