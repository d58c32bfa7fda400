"""The NumPy backend's Numba-compiled passes against its NumPy passes (the reference).

Exact where both round the same operations in the same order (relu, leaky relu, identity,
hard limit epilogues; every backward; dropout masks; the L2 term; Adam and SGD; the gather).
Stated tolerances where they cannot be: sigmoid and tanh call the C library's ``exp`` and
``tanh`` instead of NumPy's SIMD code (a few units in the last place), and the loss sums rows
in another order.
"""

import math
import platform
import re
import sys

import numpy as np
import pytest

from gpumlp import activations, config
from gpumlp.backends.base import Backend
from gpumlp.backends.cpu_path import choose_cpu_path
from gpumlp.backends.numpy_backend import NumpyBackend
from gpumlp.dropout import Dropout, keep_mask

pytest.importorskip("numba")  # the fallback without Numba is tested below by hiding it

REF = NumpyBackend(cpu_kernels="off")
FAST = NumpyBackend(cpu_kernels="on")
SPLIT = NumpyBackend(threads=2, cpu_kernels="on")  # rows split over two threads
DTYPES = [np.float32, np.float64]
FORWARD_ACTS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh", "hard_limit"]
BACKWARD_ACTS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
#: Units in the last place allowed where a transcendental function differs (sigmoid, tanh).
ULPS = 8
DROPS = [None, Dropout(keep=0.7, seed=99, counter=3),
         Dropout(keep=0.35, seed=2**40 + 7, counter=2**33 + 5)]
#: Odd shapes: rows and columns that are not multiples of 4 (Philox groups straddle rows)
#: or of a vector width, one row, one column; and one large enough for the thread split.
SHAPES = [(1, 1), (3, 5), (17, 33), (7, 130), (65, 301)]


def rand(rng, *shape, dtype=np.float64):
    return rng.normal(size=shape).astype(dtype)


def assert_close_ulps(got, expected, ulps):
    """Equal within ``ulps`` units in the last place of ``expected`` (NaN where NaN)."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    spacing = np.spacing(np.abs(expected).astype(expected.dtype))
    finite = ~np.isnan(expected)
    worst = np.max(np.abs(got - expected)[finite] / spacing[finite], initial=0)
    assert worst <= ulps, f"{worst} units in the last place apart (allowed {ulps})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", FORWARD_ACTS)
@pytest.mark.parametrize("drop", DROPS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bias_activation_dropout_epilogue_matches_numpy(dtype, act, drop, shape):
    rng = np.random.default_rng(1)
    n, m = shape
    x, w, b = rand(rng, n, 9, dtype=dtype), rand(rng, 9, m, dtype=dtype), rand(rng, m,
                                                                                dtype=dtype)
    expected = REF.affine_act(x, w, b, act, np.full((n, m), np.nan, dtype), drop)
    for backend in (FAST, SPLIT):
        got = backend.affine_act(x, w, b, act, np.full((n, m), np.nan, dtype), drop)
        if act in ("sigmoid", "tanh"):
            assert_close_ulps(got, expected, ULPS)
        else:
            np.testing.assert_array_equal(got, expected)
        if drop is not None:  # the same elements dropped: the mask is exact
            dropped = keep_mask(np, (n, m), drop) == 0
            assert np.all(got[dropped] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", BACKWARD_ACTS)
@pytest.mark.parametrize("drop", DROPS)
@pytest.mark.parametrize("shape", SHAPES)
def test_delta_times_derivative_matches_numpy_exactly(dtype, act, drop, shape):
    """``delta ⊙ phi'(a)`` (with the dropout mask) bit for bit, special values included,
    with the mask kept from the forward pass or drawn again in compiled code."""
    rng = np.random.default_rng(2)
    n, m = shape
    x, w, b = rand(rng, n, 9, dtype=dtype), rand(rng, 9, m, dtype=dtype), rand(rng, m,
                                                                                dtype=dtype)
    a = REF.affine_act(x, w, b, act, np.empty((n, m), dtype), drop)
    delta = rand(rng, n, m, dtype=dtype)
    delta.reshape(-1)[:4] = [np.nan, np.inf, -np.inf, -0.0][:delta.size]
    with np.errstate(invalid="ignore", over="ignore"):
        expected = REF.act_grad(delta, a, act, np.empty_like(delta), drop)
        for backend in (FAST, SPLIT):
            if drop is not None:  # keeps its own forward mask for the first backward
                backend.affine_act(x, w, b, act, np.empty((n, m), dtype), drop)
            for _ in range(2):  # kept mask, then drawn again
                got = backend.act_grad(delta, a, act, np.full_like(delta, 7), drop)
                np.testing.assert_array_equal(got, expected)
        in_place = delta.copy()
        FAST.act_grad(in_place, a, act, in_place, drop)
        np.testing.assert_array_equal(in_place, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_hard_limit_backward_is_still_refused(dtype):
    a = np.ones((2, 3), dtype)
    with pytest.raises(ValueError, match="hard_limit"):
        FAST.act_grad(a, a, "hard_limit", np.empty_like(a))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (33, 17), (130, 7)])
def test_weight_gradient_with_l2_term_matches_numpy_exactly(dtype, shape):
    rng = np.random.default_rng(3)
    k, m = shape
    a_prev, h, w = rand(rng, 11, k, dtype=dtype), rand(rng, 11, m, dtype=dtype), rand(
        rng, k, m, dtype=dtype)
    results = []
    for backend in (REF, FAST, SPLIT):
        dw, db = np.empty((k, m), dtype), np.empty(m, dtype)
        backend.weight_grads(a_prev, h, dw, db, w, decay=3e-4)
        results.append((dw, db))
    for dw, db in results[1:]:
        np.testing.assert_array_equal(dw, results[0][0])
        np.testing.assert_array_equal(db, results[0][1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2), (13, 10), (64, 3), (5, 129)])
def test_softmax_cross_entropy_matches_numpy(dtype, shape):
    """Loss within a few float roundings of the reference (rows summed in another order);
    ``H`` within a few units in the last place (exp from the C library)."""
    rng = np.random.default_rng(4)
    n, m = shape
    x, w, b = rand(rng, n, 7, dtype=dtype), rand(rng, 7, m, dtype=dtype), rand(rng, m,
                                                                                dtype=dtype)
    t = np.eye(m, dtype=dtype)[rng.integers(0, m, n)]
    z = np.empty((n, m), dtype)
    h_ref, h_fast = np.empty((n, m), dtype), np.full((n, m), np.nan, dtype)
    loss_ref = REF.affine_softmax_xent(x, w, b, t, z, h_ref)
    logits = z.copy()
    loss_fast = FAST.affine_softmax_xent(x, w, b, t, np.empty((n, m), dtype), h_fast)
    eps = float(np.finfo(dtype).eps)
    assert loss_fast.dtype == dtype and loss_fast.shape == ()
    assert float(loss_fast) == pytest.approx(float(loss_ref), rel=16 * m * eps, abs=16 * eps)
    np.testing.assert_allclose(h_fast, h_ref, rtol=8 * eps, atol=8 * eps / n)
    h_plain = np.full((n, m), np.nan, dtype)
    loss_plain = FAST.softmax_xent(logits, t, h_plain)  # logits given: left unchanged
    np.testing.assert_array_equal(logits, z)
    assert float(loss_plain) == float(loss_fast)
    np.testing.assert_array_equal(h_plain, h_fast)


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, 0.0, -1e4], [-3e38, 3e38, 0.0]], np.float32)
    t = np.eye(3, dtype=np.float32)[[0, 1]]
    h = np.empty_like(z)
    loss = FAST.softmax_xent(z, t, h)
    assert np.isfinite(loss) and np.all(np.isfinite(h))
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", [1, 7, 1000, 70001])
def test_adam_update_matches_numpy_exactly(dtype, size):
    rng = np.random.default_rng(5)
    start = [rand(rng, size, dtype=dtype) for _ in range(3)] + [
        np.abs(rand(rng, size, dtype=dtype))]
    states = [[s.copy() for s in start] for _ in range(3)]
    for step in range(1, 4):
        grads = rand(rng, size, dtype=dtype)
        for backend, (p, _, m, v) in zip((REF, FAST, SPLIT), states):
            backend.adam_step(p, grads, m, v, 1e-3, 0.9, 0.999, 1e-8, step)
    for state in states[1:]:
        for got, expected in zip(state, states[0]):
            np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("size", [1, 7, 70001])
def test_sgd_update_matches_numpy_exactly(dtype, nesterov, size):
    rng = np.random.default_rng(6)
    start = [rand(rng, size, dtype=dtype) for _ in range(2)]
    states = [[s.copy() for s in start] for _ in range(3)]
    for _ in range(3):
        grads = rand(rng, size, dtype=dtype)
        for backend, (p, vel) in zip((REF, FAST, SPLIT), states):
            backend.sgd_step(p, grads, vel, 0.05, 0.9, nesterov)
    for state in states[1:]:
        for got, expected in zip(state, states[0]):
            np.testing.assert_array_equal(got, expected)


#: Weight spans of a flat buffer: odd sizes, gaps between them (biases, alignment), one
#: span larger than the update's block (cpu_kernels.L2_BLOCK) and one given out of order.
FOLD_LAYOUTS = [((0, 1),), ((0, 7), (9, 3)), ((20001, 5000), (3, 11), (40, 9999)),
                ((0, 70001),)]
#: The L2 loss term sums squares in another order than the reference's dot products.
L2_SUM_RTOL = {np.float32: 2e-6, np.float64: 1e-13}


def _run_update(backend, solver, state, grads, step, l2):
    p, s1, s2 = state
    if solver == "adam":
        backend.adam_step(p, grads, s1, s2, 1e-3, 0.9, 0.999, 1e-8, step, l2=l2)
    else:
        backend.sgd_step(p, grads, s1, 0.05, 0.9, solver == "nesterov", l2=l2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", ["adam", "sgd", "nesterov"])
@pytest.mark.parametrize("spans", FOLD_LAYOUTS)
def test_update_with_the_l2_term_folded_in_matches_numpy(dtype, solver, spans):
    """The compiled update adds ``decay * W`` to the weights' gradients (not the biases' or
    the gaps') and sums ``W * W`` of the weights it starts from, in its one pass: the
    parameters and optimizer state bit for bit the reference's separate passes, the loss
    term within :data:`L2_SUM_RTOL` of the exact sum (another summation order)."""
    from gpumlp.backends import L2Term

    rng = np.random.default_rng(11)
    size = 70001
    start = [rand(rng, size, dtype=dtype), rand(rng, size, dtype=dtype),
             np.abs(rand(rng, size, dtype=dtype))]
    states = [[s.copy() for s in start] for _ in range(3)]
    accs = [np.zeros((), dtype) for _ in range(3)]
    expected_sum = 0.0
    decay, scale = 3e-2, 0.25
    for step in range(1, 4):
        grads = rand(rng, size, dtype=dtype)
        weights = states[0][0]
        expected_sum += scale * math.fsum(float(x) ** 2 for offset, length in spans
                                          for x in weights[offset:offset + length])
        for backend, state, acc in zip((REF, FAST, SPLIT), states, accs):
            g = grads.copy()
            _run_update(backend, solver, state, g, step, L2Term(spans, decay, scale, acc))
    assert FAST.folds_l2_into_update(states[1][0]) and not REF.folds_l2_into_update(
        states[0][0])
    for state in states[1:]:
        for got, expected in zip(state, states[0]):
            np.testing.assert_array_equal(got, expected)
    for acc in accs:
        assert acc.dtype == dtype
        assert float(acc) == pytest.approx(expected_sum, rel=L2_SUM_RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", ["adam", "sgd", "nesterov"])
def test_update_without_an_l2_term_leaves_the_gradient_alone(dtype, solver):
    """No ``l2``: the plain update, bit for bit the reference, gradients unchanged."""
    rng = np.random.default_rng(12)
    start = [rand(rng, 1001, dtype=dtype), rand(rng, 1001, dtype=dtype),
             np.abs(rand(rng, 1001, dtype=dtype))]
    states = [[s.copy() for s in start] for _ in range(2)]
    grads = rand(rng, 1001, dtype=dtype)
    for backend, state in zip((REF, FAST), states):
        g = grads.copy()
        _run_update(backend, solver, state, g, 1, None)
        np.testing.assert_array_equal(g, grads)
    for got, expected in zip(*states):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", ["adam", "sgd", "nesterov"])
def test_compiled_update_stores_subnormal_results_as_zero(dtype, solver):
    """Weights whose only gradient is the L2 term, and the moments of units that no longer
    learn, decay into the subnormal range, where x86 arithmetic is slow: the compiled update
    stores such results as zero and every normal result as the reference does."""
    from gpumlp.backends import L2Term

    tiny = np.finfo(dtype).tiny
    rng = np.random.default_rng(14)
    size = 4099
    params = rand(rng, size, dtype=dtype)
    params[::3] = dtype(tiny) * dtype(1.5)  # one step of decay takes these below tiny
    state = [params, np.zeros(size, dtype), np.zeros(size, dtype)]
    state[1][1::3] = dtype(tiny) * dtype(1.01)  # m (Adam) or velocity (SGD), about to decay
    reference = [s.copy() for s in state]
    grads = np.zeros(size, dtype)
    spans = ((0, size),)
    _run_update(FAST, solver, state, grads.copy(), 1,
                L2Term(spans, 0.5, 0.25, np.zeros((), dtype)))
    _run_update(REF, solver, reference, grads.copy(), 1,
                L2Term(spans, 0.5, 0.25, np.zeros((), dtype)))
    flushed = 0
    for got, expected in zip(state, reference):
        subnormal = (expected != 0) & (np.abs(expected) < tiny)
        flushed += int(subnormal.sum())
        np.testing.assert_array_equal(got[subnormal], 0)
        np.testing.assert_array_equal(got[~subnormal], expected[~subnormal])
    assert flushed >= size // 3  # the reference keeps subnormals: the case is exercised
    nan = np.full(3, np.nan, dtype)
    _run_update(FAST, solver, [nan, np.zeros(3, dtype), np.zeros(3, dtype)],
                np.zeros(3, dtype), 1, None)
    assert np.isnan(nan).all()  # NaN is not flushed: divergence stays visible


def test_folded_update_refuses_overlapping_or_outside_spans():
    from gpumlp.backends import L2Term

    p = np.ones(10)
    acc = np.zeros(())
    with pytest.raises(ValueError, match=r"overlaps the one at offset 3"):
        FAST.adam_step(p, p.copy(), p.copy(), p.copy(), 1e-3, 0.9, 0.999, 1e-8, 1,
                       l2=L2Term(((0, 4), (3, 2)), 1e-3, 1e-3, acc))
    with pytest.raises(ValueError, match=r"span \(offset=8, size=3\) does not lie inside"):
        FAST.sgd_step(p, p.copy(), p.copy(), 0.1, 0.9, False,
                      l2=L2Term(((8, 3),), 1e-3, 1e-3, acc))


@pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", ["adam", "sgd", "nesterov"])
@pytest.mark.parametrize("alpha", [0.0, 1e-2])
def test_training_step_with_the_folded_l2_term_equals_the_separate_passes(
        monkeypatch, dtype, solver, alpha):
    """The trainer's step on the compiled path (L2 term in the update) against the same
    step with the term in the weight gradients and a loss pass of its own: equal weights
    and optimizer state, losses within the L2 sum's tolerance."""
    from gpumlp.network import Network
    from gpumlp.optim import SGD, Adam
    from gpumlp.step import StepSettings, TrainingStep

    rng = np.random.default_rng(13)
    X = rand(rng, 40, 13, dtype=dtype)
    T = np.eye(5, dtype=dtype)[rng.integers(0, 5, 40)]
    runs = []
    for folds in (True, False):
        backend = NumpyBackend(cpu_kernels="on")
        if not folds:
            monkeypatch.setattr(backend, "folds_l2_into_update", lambda params: False)
        net = Network([13, 9, 6, 5], activation="relu", backend=backend, seed=1, dtype=dtype)
        optimizer = (Adam(backend, net.params, 1e-2) if solver == "adam" else
                     SGD(backend, net.params, 0.1, nesterov=solver == "nesterov"))
        step = TrainingStep(net, optimizer, StepSettings(alpha=alpha, dropout=0.2,
                                                         dropout_seed=4))
        buffers = step.new_buffers(rows=8, x_columns=13, t_columns=5)
        losses = []
        for number in range(5):
            def gather(b, number=number):
                b.x[...], b.t[...] = X[8 * number:8 * number + 8], T[8 * number:8 * number + 8]
            losses.append(float(step(gather, buffers, step=number)))
        runs.append((net.params.copy(), optimizer.state_buffers(), losses))
    (params, state, losses), (params_ref, state_ref, losses_ref) = runs
    np.testing.assert_array_equal(params, params_ref)
    for name in state:
        np.testing.assert_array_equal(state[name], state_ref[name])
    np.testing.assert_allclose(losses, losses_ref, rtol=L2_SUM_RTOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_row_gather_matches_numpy_and_keeps_its_errors(dtype):
    rng = np.random.default_rng(7)
    src = rand(rng, 50, 13, dtype=dtype)
    index = rng.permutation(50)[:17].astype(np.int64)
    got = FAST.gather_rows(src, index, np.empty((17, 13), dtype))
    np.testing.assert_array_equal(got, src[index])
    wrapped = FAST.gather_rows(src, np.array([-1, 0], np.int64), np.empty((2, 13), dtype))
    np.testing.assert_array_equal(wrapped, src[[-1, 0]])  # np.take's meaning, kept
    with pytest.raises(IndexError):
        FAST.gather_rows(src, np.array([0, 50], np.int64), np.empty((2, 13), dtype))


@pytest.mark.parametrize("first, size", [(0, 1), (0, 4), (1, 2), (3, 9), (6, 301),
                                         (4 * 2**32 - 3, 10)])
@pytest.mark.parametrize("drop", [Dropout(keep=0.8, seed=2024, counter=7),
                                  Dropout(keep=0.3, seed=2**63 - 25, counter=2**40 + 3),
                                  Dropout(keep=1.0, seed=1, counter=0)])
def test_compiled_philox_flags_are_the_definition(first, size, drop):
    """Any element range, including groups cut at either end and group indices past
    2**32 (the counter's high word), bit for bit :func:`gpumlp.dropout.random_words`."""
    from gpumlp.backends.numpy_backend import _philox_arguments
    from gpumlp.dropout import keep_threshold, random_words

    kernels = FAST.cpu_path.kernels
    flags = np.zeros(size, np.bool_)
    kernels.keep_flags(flags, first, *_philox_arguments(drop))
    groups = np.arange(first // 4, (first + size + 3) // 4, dtype=np.uint64)
    words = np.empty((groups.size, 4), np.uint64)
    from gpumlp.dropout import philox4x32

    counter = [groups & np.uint64(0xFFFFFFFF), groups >> np.uint64(32),
               np.full_like(groups, drop.counter & 0xFFFFFFFF),
               np.full_like(groups, (drop.counter >> 32) & 0xFFFFFFFF)]
    for lane, word in enumerate(philox4x32(np, *counter, drop.seed & 0xFFFFFFFF,
                                           (drop.seed >> 32) & 0xFFFFFFFF)):
        words[:, lane] = word
    offset = first - 4 * (first // 4)
    expected = (words.reshape(-1)[offset:offset + size] >> np.uint64(8)) < keep_threshold(
        drop.keep)
    np.testing.assert_array_equal(flags, expected)
    if first == 0:
        np.testing.assert_array_equal(
            flags, (random_words(np, size, drop.seed, drop.counter) >> np.uint64(8))
            < keep_threshold(drop.keep))


@pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")
def test_training_runs_equal_with_and_without_compiled_passes():
    """A few epochs of the default recipe's kind (relu, dropout, L2, Adam) agree: relu's
    passes are exact, only the loss's exp differs by units in the last place."""
    from gpumlp import MLPClassifier

    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 20)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    models = [MLPClassifier((32, 16), alpha=1e-3, dropout=0.2, batch_size=64, max_iter=3,
                            random_state=0, backend=backend).fit(X, y)
              for backend in (REF, FAST)]
    np.testing.assert_allclose(models[1].network_.get_flat_params(),
                               models[0].network_.get_flat_params(), rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------ the path's switch
def test_cpu_kernels_setting_is_validated(monkeypatch):
    monkeypatch.setenv("GPUMLP_CPU_KERNELS", "fast")
    with pytest.raises(ValueError, match=r"GPUMLP_CPU_KERNELS='fast' is not valid; "
                                         r"allowed: auto, on, off"):
        NumpyBackend()
    with pytest.raises(ValueError, match="cpu_kernels=1 is not valid"):
        NumpyBackend(cpu_kernels=1)
    monkeypatch.setenv("GPUMLP_CPU_KERNELS", "OFF")
    config.reset()
    backend = NumpyBackend()
    assert backend.cpu_path.kernels is None
    assert backend.describe()["cpu_path"] == "NumPy passes (GPUMLP_CPU_KERNELS=off)"
    monkeypatch.delenv("GPUMLP_CPU_KERNELS")
    config.reset()
    assert NumpyBackend().describe()["cpu_path"].startswith("Numba ")


def test_the_cpu_path_names_where_its_setting_came_from(monkeypatch):
    """The argument, not the environment, when ``cpu_kernels`` was passed (the environment
    saying ``auto`` or nothing at all)."""
    monkeypatch.setenv("GPUMLP_CPU_KERNELS", "auto")
    config.reset()
    assert (NumpyBackend(cpu_kernels="off").describe()["cpu_path"]
            == "NumPy passes (cpu_kernels='off')")
    monkeypatch.setenv("GPUMLP_CPU_KERNELS", "off")
    config.reset()
    assert (NumpyBackend().describe()["cpu_path"]
            == "NumPy passes (GPUMLP_CPU_KERNELS=off)")


def test_without_numba_the_numpy_passes_run(monkeypatch):
    """``auto`` falls back (saying why); ``on`` is a clear error."""
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now fails
    monkeypatch.delitem(sys.modules, "gpumlp.backends.cpu_kernels", raising=False)
    path = choose_cpu_path("auto")
    assert path.kernels is None
    assert "Numba is not importable" in path.describe()
    backend = NumpyBackend(cpu_kernels="auto")
    rng = np.random.default_rng(9)
    x, w, b = rand(rng, 5, 4), rand(rng, 4, 3), rand(rng, 3)
    expected = Backend(np).affine_act(x, w, b, "relu", np.empty((5, 3)))
    np.testing.assert_array_equal(backend.affine_act(x, w, b, "relu", np.empty((5, 3))),
                                  expected)
    with pytest.raises(ImportError, match=r"cpu_kernels='on' needs Numba.*use "
                                          r"cpu_kernels='auto'"):
        choose_cpu_path("on").kernels
    monkeypatch.setenv("GPUMLP_CPU_KERNELS", "on")
    config.reset()
    try:
        with pytest.raises(ImportError, match="GPUMLP_CPU_KERNELS=on needs Numba.*use "
                                              "GPUMLP_CPU_KERNELS=auto"):
            choose_cpu_path().kernels
    finally:
        monkeypatch.delenv("GPUMLP_CPU_KERNELS")
        config.reset()


def test_importing_gpumlp_does_not_import_numba():
    import subprocess

    code = ("import sys, gpumlp; gpumlp.get_backend('numpy'); "
            "print('numba' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------- how the code compiles
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="reads x86-64 assembly")
def test_float32_loops_vectorise_and_stay_in_float32():
    """The Adam and SGD, epilogue and backward loops use packed float32 instructions (the
    backward in place too: given two names for one array, LLVM's overlap check would pick
    the scalar loop, 9x slower, hence the in-place kernels), and no float32 update or pass
    widens to float64 (a Python literal in the arithmetic would: ``cvtss2sd``).  The folded
    update's sum of squares widens on purpose (float64 partial sums) and is split over
    vector lanes (packed double adds).  Compiled afresh: Numba does not show the assembly of
    cached code."""
    import numba

    from gpumlp.backends import cpu_kernels

    f32, u64 = np.float32, np.uint64
    one, half = f32(1), f32(0.5)
    flat = np.ones(64, f32)
    out, b, keep = np.ones((4, 16), f32), np.ones(16, f32), np.ones((4, 16), np.bool_)
    spans = np.array([[0, 40]], np.int64)
    tiny = f32(np.finfo(f32).tiny)
    # name: (arguments, whether its own loops must stay in float32)
    cases = {
        "adam": ((flat, flat.copy(), flat.copy(), flat.copy(), 0, 64, spans, half, half,
                  half, half, half, half, half, tiny), False),
        "sgd": ((flat, flat.copy(), flat.copy(), 0, 64, spans, half, half, half, True, tiny),
                False),
        # The update loops themselves (``decayed`` a run-time flag: both loops compiled).
        "_adam_range": ((flat, flat.copy(), flat.copy(), flat.copy(), 3, 61, half, half,
                         half, half, half, half, half, tiny, f32(0), True), True),
        "_sgd_range": ((flat, flat.copy(), flat.copy(), 3, 61, half, half, half, True, tiny,
                        f32(0), True), True),
        "bias_act_dropout": ((out, b, activations.CODES["relu"], keep, 0, u64(1), u64(2),
                              u64(3), u64(4), u64(1 << 31), one, f32(0), one, half), True),
        "act_grad": ((out, out.copy(), out.copy(), activations.CODES["relu"], f32(0), one,
                      half, half), True),
        "act_grad_in_place": ((out, out.copy(), activations.CODES["relu"], f32(0), one, half,
                               half), True),
    }
    for name, (args, float32_only) in cases.items():
        fresh = numba.njit(nogil=True, error_model="numpy")(getattr(cpu_kernels,
                                                                    name).py_func)
        fresh(*args)
        asm = next(iter(fresh.inspect_asm().values()))
        assert re.search(r"\bv?(mul|add|sub|div|max|min)ps\b", asm), name
        if float32_only:
            assert "cvtss2sd" not in asm, name
    squares = numba.njit(nogil=True, error_model="numpy", fastmath={"reassoc"})(
        cpu_kernels._sum_squares.py_func)
    assert squares(np.arange(5, dtype=f32), 1, 4) == 1 + 4 + 9
    assert re.search(r"\bv?addpd\s+%[yz]mm", next(iter(squares.inspect_asm().values())))


def test_warm_up_compiles_every_cpu_pass_before_any_step():
    """A benchmark calls ``backend.warm_up()`` outside its timed region: the NumPy backend
    compiles its passes there (the generic backend has nothing to compile)."""
    backend = NumpyBackend(cpu_kernels="on")
    assert backend.cpu_path.warm_up is None
    backend.warm_up()
    assert backend.cpu_path.warm_up is not None
    assert NumpyBackend(cpu_kernels="off").warm_up() is None
    assert Backend(np).warm_up() is None and Backend(np).arrays_on_host
