"""The NumPy backend's Numba-compiled passes against its NumPy passes (the reference).

Exact where both round the same operations in the same order (relu, leaky relu, identity,
hard limit epilogues; every backward; dropout masks; the L2 term; Adam and SGD; the gather).
Stated tolerances where they cannot be: sigmoid and tanh call the C library's ``exp`` and
``tanh`` instead of NumPy's SIMD code (a few units in the last place), and the loss sums rows
in another order.
"""

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
    with pytest.raises(ImportError, match="GPUMLP_CPU_KERNELS=on needs Numba"):
        choose_cpu_path("on").kernels


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
    """The Adam, epilogue and backward loops use packed float32 instructions (the backward
    in place too: given two names for one array, LLVM's overlap check would pick the scalar
    loop, 9x slower, hence the in-place kernels), and no float32 loop widens to float64 (a Python literal in the arithmetic would: ``cvtss2sd``).  Compiled
    afresh: Numba does not show the assembly of cached code."""
    import numba

    from gpumlp.backends import cpu_kernels

    f32, u64 = np.float32, np.uint64
    one, half = f32(1), f32(0.5)
    flat = np.ones(64, f32)
    out, b, keep = np.ones((4, 16), f32), np.ones(16, f32), np.ones((4, 16), np.bool_)
    cases = {
        "adam": (flat, flat.copy(), flat.copy(), flat.copy(), half, half, half, half, half,
                 half),
        "bias_act_dropout": (out, b, activations.CODES["relu"], keep, 0, u64(1), u64(2),
                             u64(3), u64(4), u64(1 << 31), one, f32(0), one, half),
        "act_grad": (out, out.copy(), out.copy(), activations.CODES["relu"], f32(0), one,
                     half, half),
        "act_grad_in_place": (out, out.copy(), activations.CODES["relu"], f32(0), one, half,
                              half),
    }
    for name, args in cases.items():
        fresh = numba.njit(nogil=True, error_model="numpy")(getattr(cpu_kernels,
                                                                    name).py_func)
        fresh(*args)
        asm = next(iter(fresh.inspect_asm().values()))
        assert re.search(r"\bv?(mul|add|sub|div|max|min)ps\b", asm), name
        assert "cvtss2sd" not in asm, name


def test_warm_up_compiles_every_cpu_pass_before_any_step():
    """A benchmark calls ``backend.warm_up()`` outside its timed region: the NumPy backend
    compiles its passes there (the generic backend has nothing to compile)."""
    backend = NumpyBackend(cpu_kernels="on")
    assert backend.cpu_path.warm_up is None
    backend.warm_up()
    assert backend.cpu_path.warm_up is not None
    assert NumpyBackend(cpu_kernels="off").warm_up() is None
    assert Backend(np).warm_up() is None and Backend(np).arrays_on_host
