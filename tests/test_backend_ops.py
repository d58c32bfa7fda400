"""The NumPy backend's in-place fast paths against the generic reference, and its promises:
no allocation in a steady-state step, exact dropout masks, backend selection."""

import tracemalloc

import numpy as np
import pytest

import gpumlp
from gpumlp import config
from gpumlp.backends import get_backend, use_backend
from gpumlp.backends.base import Backend
from gpumlp.dropout import Dropout, keep_mask
from gpumlp.network import Network

FAST, REF = get_backend("numpy"), Backend(np)
ACTS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
TOL = {np.float32: 2e-6, np.float64: 1e-13}


def rand(rng, *shape, dtype=np.float64):
    return rng.normal(size=shape).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("drop", [None, Dropout(keep=0.7, seed=99, counter=3)])
def test_forward_and_backward_ops_match_reference(dtype, act, drop):
    rng = np.random.default_rng(5)
    n, k, m = 17, 33, 9
    x, w, b = rand(rng, n, k, dtype=dtype), rand(rng, k, m, dtype=dtype), rand(rng, m,
                                                                                  dtype=dtype)
    outs = [np.full((n, m), np.nan, dtype) for _ in range(2)]
    for backend, out in zip((FAST, REF), outs):
        backend.affine_act(x, w, b, act, out, drop)
    np.testing.assert_allclose(outs[0], outs[1], rtol=TOL[dtype], atol=TOL[dtype])
    a = outs[1]
    h_next, w_next = rand(rng, n, 5, dtype=dtype), rand(rng, m, 5, dtype=dtype)
    grads = [np.full((n, m), np.nan, dtype) for _ in range(2)]
    for backend, out in zip((FAST, REF), grads):
        backend.backprop_hidden(h_next, w_next, a, act, out, drop)
    np.testing.assert_allclose(grads[0], grads[1], rtol=10 * TOL[dtype], atol=10 * TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("loss", ["softmax_xent", "sigmoid_bce", "squared_error"])
def test_losses_match_reference(dtype, loss):
    rng = np.random.default_rng(6)
    z = rand(rng, 13, 4, dtype=dtype) * 3
    t = (np.eye(4)[rng.integers(0, 4, 13)] if loss == "softmax_xent"
         else rng.uniform(size=(13, 4))).astype(dtype)
    results = []
    for backend in (FAST, REF):
        h = np.full_like(z, np.nan)
        value = getattr(backend, loss)(z, t, h)
        results.append((float(value), h))
    assert results[0][0] == pytest.approx(results[1][0], rel=10 * TOL[dtype])
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=10 * TOL[dtype],
                               atol=TOL[dtype])


def test_softmax_xent_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0, -1000.0]])
    h = np.empty_like(z)
    loss = FAST.softmax_xent(z, np.array([[0.0, 0.0, 1.0]]), h)
    assert float(loss) == pytest.approx(2000.0)
    np.testing.assert_allclose(h, [[1.0, 0.0, -1.0]])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_grads_with_decay(dtype):
    rng = np.random.default_rng(7)
    a, h, w = rand(rng, 11, 6, dtype=dtype), rand(rng, 11, 3, dtype=dtype), rand(rng, 6, 3,
                                                                                  dtype=dtype)
    dw, db = np.empty((6, 3), dtype), np.empty(3, dtype)
    FAST.weight_grads(a, h, dw, db, w, decay=0.25)
    np.testing.assert_allclose(dw, a.T @ h + 0.25 * w, rtol=TOL[dtype] * 10)
    np.testing.assert_allclose(db, h.sum(axis=0), rtol=TOL[dtype] * 10)


def test_dropout_masks_are_reproducible_fresh_and_unbiased():
    drop = Dropout(keep=0.8, seed=2024, counter=7)
    first = keep_mask(np, (300, 200), drop)
    assert np.array_equal(first, keep_mask(np, (300, 200), drop))
    other = keep_mask(np, (300, 200), Dropout(keep=0.8, seed=2024, counter=8))
    assert not np.array_equal(first, other)
    assert abs(first.mean() - 0.8) < 0.01  # 60,000 draws: sd of the mean is 0.0016
    assert abs(np.mean(first == other) - (0.8**2 + 0.2**2)) < 0.01  # independent masks


def test_philox_known_answer():
    """Random123's published known-answer vector for Philox4x32-10 (counter and key 0)."""
    from gpumlp.dropout import philox4x32

    counter = [np.zeros(1, dtype=np.uint64) for _ in range(4)]  # updated in place
    words = [int(w[0]) for w in philox4x32(np, *counter, 0, 0)]
    assert words == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]


def test_steady_state_training_step_allocates_nothing():
    from gpumlp.backends.numpy_backend import NumpyBackend

    rng = np.random.default_rng(8)
    backend = NumpyBackend(threads=2)  # the threaded epilogues must not allocate either
    net = Network([64, 128, 128, 10], activation="relu", backend=backend, seed=0)
    opt = gpumlp.Adam(net.backend, net.params, 1e-3)
    x = rng.normal(size=(8192, 64)).astype(np.float32)
    t = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 8192)]
    ws = net.new_workspace(8192)

    def step():
        net.loss_and_gradients(x, t, ws, decay=1e-4 / 8192)
        opt.step(net.params, net.grads)

    step()
    step()
    tracemalloc.start()
    step()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # The smallest per-step array, (8192, 10) float32, is 320 KiB: a step that allocated any
    # array would exceed the bound.  What remains is NumPy's own iterator buffer (8192
    # elements, 32 KiB) in each of the two threads, and small Python objects.
    assert peak < 128 * 1024


def test_backend_selection():
    assert get_backend("numpy") is get_backend("numpy")
    assert get_backend("auto").name in ("numpy", "cupy")
    with use_backend("numpy") as backend:
        assert get_backend() is backend
    with pytest.raises(ValueError, match="backend='tpu'"):
        get_backend("tpu")


def test_cupy_request_without_cupy_is_a_clear_error():
    if gpumlp.available_backends()["cupy"] is None:
        pytest.skip("a CUDA device is present: backend='cupy' is available")
    with pytest.raises(gpumlp.BackendUnavailable, match="backend='cupy' is unavailable"):
        get_backend("cupy")


def test_importing_gpumlp_does_not_import_cupy():
    import subprocess
    import sys

    code = "import sys, gpumlp; print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def test_cupy_backend_module_imports_without_a_device():
    """The GPU backend's module must import (and its helpers work) on any machine."""
    from gpumlp.backends.cuda import backend as cupy_backend

    props = {"multiProcessorCount": 132, "clockRate": 1_980_000}  # H100 SXM: 132 SMs, 1.98 GHz
    assert cupy_backend.fp32_peak_tflops(props, "90") == pytest.approx(66.9, rel=1e-3)
    assert cupy_backend.fp32_peak_tflops(props, "unknown") is None


def test_cuda_graph_mode_is_checked():
    from gpumlp.training import Trainer

    net = Network([3, 4, 2], backend="numpy")
    with pytest.raises(ValueError, match="cuda_graph='always'"):
        Trainer(net, gpumlp.Adam(net.backend, net.params), cuda_graph="always")
    trainer = Trainer(net, gpumlp.Adam(net.backend, net.params), cuda_graph="on", batch_size=2)
    X = np.ones((4, 3), np.float32)
    T = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]
    with pytest.raises(ValueError, match="cuda_graph='on' cannot be honoured: the 'numpy'"):
        trainer.fit(X, T, 1)
    # "auto" quietly trains eagerly where graphs do not apply.
    auto = Trainer(net, gpumlp.Adam(net.backend, net.params), batch_size=2)
    assert len(auto.fit(X, T, 2).loss) == 2


def _reference_mask(shape, drop):
    """keep_mask's definition, straight from philox4x32 (the known-answer-tested rounds)."""
    from gpumlp.dropout import keep_threshold, philox4x32

    size = int(np.prod(shape))
    groups = np.arange((size + 3) // 4, dtype=np.uint64)
    mask32 = np.uint64(0xFFFFFFFF)
    counter = [groups & mask32, groups >> np.uint64(32),
               np.full(groups.shape, drop.counter & 0xFFFFFFFF, np.uint64),
               np.full(groups.shape, drop.counter >> 32, np.uint64)]
    words = np.stack(philox4x32(np, *counter, drop.seed & 0xFFFFFFFF, drop.seed >> 32), axis=1)
    flags = (words.reshape(-1)[:size] >> np.uint64(8)) < np.uint64(keep_threshold(drop.keep))
    return flags.reshape(shape)


@pytest.mark.parametrize("shape", [(1,), (3,), (5, 7), (128, 512), (33, 10)])
@pytest.mark.parametrize("drop", [Dropout(keep=0.8, seed=2024, counter=7),
                                  Dropout(keep=0.3, seed=2**63 - 25, counter=2**40 + 3),
                                  Dropout(keep=0.999, seed=2**32 + 1, counter=2**32 - 1),
                                  Dropout(keep=1.0, seed=1, counter=0)])
def test_numpy_keep_mask_is_the_philox_definition(shape, drop):
    """NumPy's fast Philox (scalar first rounds, split words, direct comparison) bit for bit."""
    np.testing.assert_array_equal(keep_mask(np, shape, drop), _reference_mask(shape, drop))


def test_keep_flags_fill_any_group_range():
    """Ranges filled separately (as threads fill them) give the whole mask."""
    from gpumlp.dropout import fill_keep_flags

    drop = Dropout(keep=0.6, seed=77, counter=2**33 + 5)
    whole = _reference_mask((1001 * 4,), drop)
    flags = np.zeros(1001 * 4, bool)
    for first, stop in [(0, 1), (1, 250), (250, 1001)]:
        fill_keep_flags(flags[4 * first:4 * stop], first, drop)
    np.testing.assert_array_equal(flags, whole)
    with pytest.raises(ValueError, match="out: a contiguous boolean vector"):
        fill_keep_flags(np.zeros(6, bool), 0, drop)
    with pytest.raises(ValueError, match="out: a contiguous boolean vector"):
        fill_keep_flags(np.zeros(8, np.uint8), 0, drop)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS)
def test_dropout_forward_and_backward_are_bit_exact(dtype, act):
    """The NumPy backend's dropout, split over threads or not, computes exactly
    (A * mask) / keep forward and (delta * phi'(a * keep)) * mask / keep backward, specials
    included, whether or not ``a`` is the forward's output (the GPU self-test passes others)."""
    from gpumlp.backends.numpy_backend import NumpyBackend

    rng = np.random.default_rng(11)
    n, k, m = 64, 20, 300  # 19,200 outputs: split over two threads
    x, w, b = rand(rng, n, k, dtype=dtype), rand(rng, k, m, dtype=dtype), rand(rng, m,
                                                                                  dtype=dtype)
    drop = Dropout(keep=0.7, seed=5, counter=2**35 + 1)
    mask = _reference_mask((n, m), drop)
    scale = dtype(1.0 / drop.keep)
    backend = NumpyBackend(threads=2)
    a = np.empty((n, m), dtype)
    backend.affine_act(x, w, b, act, a, drop)
    plain = np.empty((n, m), dtype)
    backend.affine_act(x, w, b, act, plain)
    np.testing.assert_array_equal(a, (plain * mask) * scale)

    delta = rand(rng, n, m, dtype=dtype)
    delta[0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    with np.errstate(invalid="ignore", over="ignore"):  # inf * 0 in the special values
        expected = np.empty_like(delta)
        Backend(np).act_grad(delta, a * dtype(drop.keep), act, expected)
        expected = (expected * mask) * scale
        for fresh in (False, True):  # the mask kept from the forward pass, or drawn again
            if fresh:
                backend = NumpyBackend(threads=2)
            got = np.full_like(delta, np.nan)
            backend.act_grad(delta, a, act, got, drop)
            np.testing.assert_array_equal(got, expected)
        other = np.abs(plain) if act == "relu" else plain  # not zero where the mask drops
        expected = np.empty_like(delta)
        Backend(np).act_grad(delta, other * dtype(drop.keep), act, expected)
        expected = (expected * mask) * scale
        backend.affine_act(x, w, b, act, np.empty_like(a), drop)  # the mask kept again
        for backend in (backend, NumpyBackend(threads=1)):
            got = np.full_like(delta, np.nan)
            backend.act_grad(delta, other, act, got, drop)
            np.testing.assert_array_equal(got, expected)


def test_elementwise_threads_default_to_one_unless_asked(monkeypatch):
    """BLAS's spinning workers make a split slower by default; the variable or the
    argument still asks for one."""
    from gpumlp.backends.numpy_backend import NumpyBackend

    monkeypatch.delenv("GPUMLP_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # for BLAS; not a request for a split
    assert NumpyBackend().chunks.threads == 1
    assert NumpyBackend(threads=2).chunks.threads == 2
    monkeypatch.setenv("GPUMLP_NUM_THREADS", "3")
    config.reset()
    assert NumpyBackend().chunks.threads == 3
    assert NumpyBackend().describe()["elementwise_threads"] == 3
