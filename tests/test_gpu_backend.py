"""The CuPy backend against the NumPy backend, operation by operation and end to end.

Marked ``gpu``: skipped (with the reason) where CuPy or a CUDA device is missing.  Run on a
GPU machine with ``pytest -m gpu``.
"""

import numpy as np
import pytest

from gpumlp import config
from gpumlp.backends import get_backend
from gpumlp.dropout import Dropout, keep_mask
from gpumlp.backends.cuda.selftest import atomic_sum_tolerance

pytestmark = pytest.mark.gpu

ACTS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
SHAPES = [(1, 1, 1), (3, 5, 7), (17, 33, 9), (65, 129, 64), (130, 257, 10), (301, 784, 256)]
# NVRTC contracts a*b+c into FMAs and sums in another order than BLAS: float32 results agree
# to a few ulps of the largest term; float64 far tighter.
TOL = {np.float32: 2e-5, np.float64: 1e-12}


@pytest.fixture(scope="module")
def cp():
    import cupy

    return cupy


@pytest.fixture(params=["fused", "cublas"])
def gpu(request):
    from gpumlp.backends.cuda.backend import CupyBackend

    return CupyBackend(gemm_path=request.param)


CPU = get_backend("numpy")


def both(cp, rng, shape, dtype, scale=1.0):
    host = (rng.normal(size=shape) * scale).astype(dtype)
    return host, cp.asarray(host)


def poisoned(cp, shape, dtype):
    return cp.full(shape, cp.nan, dtype=dtype)


def close(cp, device, host, dtype):
    got = cp.asnumpy(device)
    assert np.isfinite(got).all(), "an output element was not written"
    scale = max(1.0, float(np.abs(host).max()))
    np.testing.assert_allclose(got, host, rtol=TOL[dtype], atol=TOL[dtype] * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("drop", [None, Dropout(keep=0.75, seed=7, counter=11)])
def test_forward_and_backward(cp, gpu, dtype, act, shape, drop):
    rng = np.random.default_rng(hash((act, shape)) % 2**32)
    n, k, m = shape
    x, x_d = both(cp, rng, (n, k), dtype)
    w, w_d = both(cp, rng, (k, m), dtype, scale=k ** -0.5)
    b, b_d = both(cp, rng, (m,), dtype)
    a = CPU.affine_act(x, w, b, act, np.empty((n, m), dtype), drop)
    a_d = gpu.affine_act(x_d, w_d, b_d, act, poisoned(cp, (n, m), dtype), drop)
    close(cp, a_d, a, dtype)
    if drop is not None:
        assert_same_zero_pattern(cp.asnumpy(a_d), a, x, w, b, drop)
    h_next, h_next_d = both(cp, rng, (n, 5), dtype)
    w_next, w_next_d = both(cp, rng, (m, 5), dtype)
    a_d = cp.asarray(a)
    h = CPU.backprop_hidden(h_next, w_next, a, act, np.empty((n, m), dtype), drop)
    h_d = gpu.backprop_hidden(h_next_d, w_next_d, a_d, act, poisoned(cp, (n, m), dtype), drop)
    close(cp, h_d, h, dtype)


def assert_same_zero_pattern(got, want, x, w, b, drop):
    """Dropped elements are zero on both sides: the Philox mask is integer arithmetic, so it
    is bit-identical.  A kept element may be zero on one side only where its pre-activation
    is within rounding of zero: FMA contraction and another summation order move
    ``z = x @ w + b`` by up to ``(k + 2) eps (|x| @ |w| + |b|)``, which can flip the sign
    (and so ReLU's zero) of a ``z`` that small."""
    dropped = ~keep_mask(np, got.shape, drop)
    assert not got[dropped].any() and not want[dropped].any()
    x64, w64, b64 = (np.asarray(v, np.float64) for v in (x, w, b))
    z = x64 @ w64 + b64
    bound = (x.shape[1] + 2) * np.finfo(x.dtype).eps * (np.abs(x64) @ np.abs(w64) + np.abs(b64))
    differ = (got == 0) != (want == 0)
    assert not (differ & (np.abs(z) > bound)).any(), "zero pattern differs away from z = 0"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("decay", [0.0, 0.01])
def test_weight_grads(cp, gpu, dtype, shape, decay):
    rng = np.random.default_rng(3)
    n, k, m = shape
    a, a_d = both(cp, rng, (n, k), dtype)
    h, h_d = both(cp, rng, (n, m), dtype)
    w, w_d = both(cp, rng, (k, m), dtype)
    dw, db = np.empty((k, m), dtype), np.empty(m, dtype)
    CPU.weight_grads(a, h, dw, db, w, decay)
    dw_d, db_d = poisoned(cp, (k, m), dtype), poisoned(cp, (m,), dtype)
    gpu.weight_grads(a_d, h_d, dw_d, db_d, w_d, decay)
    close(cp, dw_d, dw, dtype)
    close(cp, db_d, db, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["softmax_xent", "sigmoid_bce", "squared_error"])
@pytest.mark.parametrize("n, k", [(1, 1), (7, 10), (257, 10), (1000, 33)])
def test_losses(cp, gpu, dtype, loss, n, k):
    rng = np.random.default_rng(4)
    z, z_d = both(cp, rng, (n, k), dtype, scale=3)
    t = (np.eye(k)[rng.integers(0, k, n)] if loss == "softmax_xent"
         else rng.uniform(size=(n, k))).astype(dtype)
    h = np.empty((n, k), dtype)
    value = float(getattr(CPU, loss)(z, t, h))
    h_d = poisoned(cp, (n, k), dtype)
    value_d = float(getattr(gpu, loss)(z_d, cp.asarray(t), h_d))
    # The loss is summed with float atomicAdd, in an order that changes from run to run: one
    # rounding per block on top of the two summation trees (see atomic_sum_tolerance).
    rel = atomic_sum_tolerance(dtype, loss, (n, k))
    assert value_d == pytest.approx(value, rel=rel, abs=TOL[dtype])
    close(cp, h_d, h, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, k, m", [(1, 1, 1), (7, 33, 10), (257, 256, 10), (1000, 64, 16),
                                     (300, 65, 64), (129, 40, 100)])
def test_output_layer_with_softmax_xent(cp, gpu, dtype, n, k, m):
    """affine_softmax_xent (one fused kernel where a block holds whole rows, else the GEMM
    and the loss kernel) against the NumPy backend's affine then softmax_xent."""
    rng = np.random.default_rng(12)
    x, x_d = both(cp, rng, (n, k), dtype)
    w, w_d = both(cp, rng, (k, m), dtype, scale=0.3)
    b, b_d = both(cp, rng, (m,), dtype)
    t = np.eye(m, dtype=dtype)[rng.integers(0, m, n)]
    h, z = np.empty((n, m), dtype), np.empty((n, m), dtype)
    value = float(CPU.affine_softmax_xent(x, w, b, t, z, h))
    h_d = poisoned(cp, (n, m), dtype)
    value_d = float(gpu.affine_softmax_xent(x_d, w_d, b_d, cp.asarray(t),
                                            cp.empty((n, m), dtype), h_d))
    rel = max(TOL[dtype], atomic_sum_tolerance(dtype, "softmax_xent", (n, m)))
    assert value_d == pytest.approx(value, rel=rel, abs=TOL[dtype])
    close(cp, h_d, h, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights_l2_loss(cp, dtype):
    from gpumlp.backends.cuda.backend import CupyBackend
    from gpumlp.network import Network

    net = Network([784, 256, 256, 10], backend="numpy", dtype=dtype, seed=0)
    spans = net.weight_spans()
    want = float(CPU.add_weights_l2_loss(net.params, spans, 1e-4, np.zeros((), dtype)))
    got = CupyBackend().add_weights_l2_loss(cp.asarray(net.params), spans, 1e-4,
                                            cp.zeros((), dtype))
    total = sum(size for _, size in spans)
    assert float(got) == pytest.approx(
        want, rel=atomic_sum_tolerance(dtype, "add_weights_l2_loss", (total,)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_and_gather(cp, gpu, dtype):
    rng = np.random.default_rng(5)
    z, z_d = both(cp, rng, (300, 10), dtype, scale=5)
    out_d = gpu.softmax(z_d, poisoned(cp, (300, 10), dtype))
    close(cp, out_d, CPU.softmax(z, np.empty_like(z)), dtype)
    index = rng.permutation(300)[:77]
    out_d = gpu.gather_rows(z_d, cp.asarray(index), poisoned(cp, (77, 10), dtype))
    assert np.array_equal(cp.asnumpy(out_d), z[index])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("solver", ["adam", "sgd", "nesterov"])
def test_optimizer_updates(cp, gpu, dtype, solver):
    rng = np.random.default_rng(6)
    size = 100_003
    p, p_d = both(cp, rng, size, dtype)
    state = [both(cp, rng, size, dtype) for _ in range(2)]
    for step in (1, 2, 3):
        g, g_d = both(cp, rng, size, dtype)
        if solver == "adam":
            (m, m_d), (v, v_d) = state
            v, v_d = np.abs(v), cp.abs(v_d)
            state[1] = (v, v_d)
            CPU.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, step)
            gpu.adam_step(p_d, g_d, m_d, v_d, 1e-3, 0.9, 0.999, 1e-8, step)
        else:
            (vel, vel_d), _ = state
            CPU.sgd_step(p, g, vel, 0.05, 0.9, solver == "nesterov")
            gpu.sgd_step(p_d, g_d, vel_d, 0.05, 0.9, solver == "nesterov")
    close(cp, p_d, p, dtype)


def test_kernels_compiled_and_described(cp):
    info = get_backend("cupy").describe()
    assert info["kernels"] == "compiled", info["kernels"]
    assert info["sm_count"] > 0 and info["device_name"]


def test_generic_fallback_matches(cp, monkeypatch):
    from gpumlp.backends.cuda.backend import CupyBackend

    monkeypatch.setenv("GPUMLP_KERNELS", "off")
    config.reset()
    fallback = CupyBackend()
    assert not fallback.use_kernels
    rng = np.random.default_rng(8)
    x, x_d = both(cp, rng, (33, 17), np.float32)
    w, w_d = both(cp, rng, (17, 9), np.float32)
    b, b_d = both(cp, rng, (9,), np.float32)
    out_d = fallback.affine_act(x_d, w_d, b_d, "tanh", cp.empty((33, 9), np.float32))
    close(cp, out_d, CPU.affine_act(x, w, b, "tanh", np.empty((33, 9), np.float32)),
          np.float32)


def test_classifier_results_follow_x(cp):
    from gpumlp import MLPClassifier

    rng = np.random.default_rng(9)
    X = rng.normal(size=(500, 20)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    clf = MLPClassifier((32,), max_iter=20, random_state=0, backend="cupy").fit(X, y)
    assert isinstance(clf.predict_proba(X), np.ndarray)
    proba_d = clf.predict_proba(cp.asarray(X))
    assert isinstance(proba_d, cp.ndarray)
    np.testing.assert_allclose(cp.asnumpy(proba_d), clf.predict_proba(X), rtol=1e-6)
    assert clf.score(X, y) > 0.9


def test_same_seed_same_initial_weights_on_both_backends(cp):
    from gpumlp.network import Network

    cpu = Network([784, 64, 10], seed=3, backend="numpy")
    gpu = Network([784, 64, 10], seed=3, backend="cupy")
    assert np.array_equal(cpu.get_flat_params(), gpu.get_flat_params())


@pytest.mark.slow
def test_fashion_mnist_accuracy_matches_numpy_backend(cp):
    """Same recipe on both backends: test accuracies within 0.5 percentage points."""
    import warnings

    from gpumlp import ConvergenceWarning, MLPClassifier
    from gpumlp.data import load_dataset

    data = load_dataset("fashion-mnist", download=False)
    scores = {}
    for backend in ("numpy", "cupy"):
        clf = MLPClassifier((256,), batch_size=128, max_iter=5, random_state=0,
                            backend=backend, dropout=0.1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(data.X_train, data.y_train)
        scores[backend] = clf.score(data.X_test, data.y_test)
    assert abs(scores["cupy"] - scores["numpy"]) <= 0.005, scores
    assert scores["cupy"] > 0.85
