"""precision="tf32": validation on the estimators, the network and the command line; the NumPy
backend's emulated TF32 rounding; the CuPy backend's TF32 tensor-core kernels, run on the
emulated CuPy (tests/kernels/emulated_cupy.py: the kernels execute on the CPU harness, whose
wmma emulation rounds the inputs as the tensor cores do)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gpumlp import MLPClassifier, cli
from gpumlp.backends.cuda import kernels
from gpumlp.backends import get_backend
from gpumlp.backends.base import Backend
from gpumlp.dropout import Dropout
from gpumlp.network import Network
from gpumlp.optim import Adam
from gpumlp.precision import round_to_tf32
from gpumlp.training import Trainer

from conftest import load_support

CPU = get_backend("numpy")
REF = Backend(np)


# ------------------------------------------------------------------------------ validation
def test_network_checks_precision_and_dtype():
    with pytest.raises(ValueError, match=r"precision='fp16'.*choose one of \('float32', 'tf32'\)"):
        Network([4, 3], precision="fp16", backend="numpy")
    with pytest.raises(ValueError, match="precision='tf32' needs dtype float32.*float64"):
        Network([4, 3], dtype=np.float64, precision="tf32", backend="numpy")
    assert Network([4, 3], backend="numpy").precision == "float32"


def test_estimator_checks_precision_at_fit_and_keeps_it():
    X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    y = np.arange(20) % 2
    with pytest.raises(ValueError, match=r"precision='half' is not valid"):
        MLPClassifier((5,), precision="half", backend="numpy").fit(X, y)
    with pytest.raises(ValueError, match="precision='tf32' needs dtype float32"):
        MLPClassifier((5,), precision="tf32", dtype="float64", backend="numpy").fit(X, y)
    clf = MLPClassifier((5,), precision="tf32", backend="numpy", max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    assert clf.get_params()["precision"] == "tf32" and clf.network_.precision == "tf32"
    assert MLPClassifier().precision == "float32"


def test_saved_model_keeps_its_precision(tmp_path):
    from gpumlp import load

    X = np.random.default_rng(1).normal(size=(30, 5)).astype(np.float32)
    y = np.arange(30) % 3
    clf = MLPClassifier((6,), precision="tf32", backend="numpy", max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    clf.save(tmp_path / "m.npz")
    loaded = load(tmp_path / "m.npz", backend="numpy")
    assert loaded.precision == loaded.network_.precision == "tf32"
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))


def test_cli_refuses_tf32_with_float64_before_loading_data(capsys):
    assert cli.main(["train", "--precision", "tf32", "--dtype", "float64", "--no-save"]) == 2
    assert "--precision tf32 needs --dtype float32, got --dtype float64" in capsys.readouterr().err
    assert cli.main(["train", "--precision", "bf16"]) == 2
    assert "invalid choice: 'bf16'" in capsys.readouterr().err


# ------------------------------------------------------------------- NumPy emulation
def test_numpy_backend_rounds_gemm_inputs_to_tf32():
    """The NumPy backend's TF32 products are float32 products of TF32-rounded inputs (the
    generic reference), and differ from the float32 products."""
    rng = np.random.default_rng(2)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in ((33, 40), (40, 17), (17,)))
    drop = Dropout(keep=0.8, seed=3, counter=1)
    got = CPU.affine_act(x, w, b, "relu", np.empty((33, 17), np.float32), drop, "tf32")
    want = REF.affine_act(round_to_tf32(np, x), round_to_tf32(np, w), b, "relu",
                          np.empty((33, 17), np.float32), drop)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    fp32 = CPU.affine_act(x, w, b, "relu", np.empty((33, 17), np.float32), drop)
    assert np.abs(got - fp32).max() > 1e-4

    h, a = rng.normal(size=(33, 17)).astype(np.float32), rng.uniform(-1, 1, (33, 40))
    a = a.astype(np.float32)
    got = CPU.backprop_hidden(h, w, a, "tanh", np.empty_like(a), None, "tf32")
    want = REF.backprop_hidden(round_to_tf32(np, h), round_to_tf32(np, w), a, "tanh",
                               np.empty_like(a))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    dw, db = np.empty((40, 17), np.float32), np.empty(17, np.float32)
    CPU.weight_grads(x, h, dw, db, w, 0.01, "tf32")
    want_dw, want_db = np.empty_like(dw), np.empty_like(db)
    REF.weight_grads(round_to_tf32(np, x), round_to_tf32(np, h), want_dw, want_db, w, 0.01)
    np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, h.sum(axis=0), rtol=1e-5)  # the bias gradient is not rounded


def test_tf32_operands_must_be_float32():
    with pytest.raises(ValueError, match="precision='tf32' needs dtype float32"):
        CPU.affine_act(np.ones((2, 2)), np.ones((2, 2)), np.ones(2), "relu",
                       np.empty((2, 2)), None, "tf32")


# --------------------------------------------------------------- CuPy backend (emulated)
emulated = load_support("emulated_cupy")


def gemm_tiles_launched() -> set:
    return {dict(params).get("tile") for (name, _, params) in kernels.get_kernel.cache
            if name.startswith("gemm")}


@pytest.mark.kernels
@pytest.mark.parametrize("path", ["fused", "cublas", "auto"])
def test_cupy_backend_runs_tf32_kernels_on_every_gemm_path(cp, path):
    from gpumlp.backends.cuda.backend import CupyBackend

    gpu = CupyBackend(gemm_path=path)
    rng = np.random.default_rng(4)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in ((37, 29), (29, 21), (21,)))
    h = rng.normal(size=(37, 21)).astype(np.float32)
    a = rng.uniform(-1, 1, (37, 29)).astype(np.float32)
    drop = Dropout(keep=0.75, seed=9, counter=2)
    tol = dict(rtol=2e-5, atol=2e-5 * 10)

    out = gpu.affine_act(cp.asarray(x), cp.asarray(w), cp.asarray(b), "tanh",
                         cp.empty((37, 21), np.float32), drop, "tf32")
    want = CPU.affine_act(x, w, b, "tanh", np.empty((37, 21), np.float32), drop, "tf32")
    np.testing.assert_allclose(np.asarray(out), want, **tol)

    out = gpu.backprop_hidden(cp.asarray(h), cp.asarray(w), cp.asarray(a), "tanh",
                              cp.empty((37, 29), np.float32), drop, "tf32")
    want = CPU.backprop_hidden(h, w, a, "tanh", np.empty((37, 29), np.float32), drop, "tf32")
    np.testing.assert_allclose(np.asarray(out), want, **tol)

    dw, db = cp.empty((29, 21), np.float32), cp.empty(21, np.float32)
    gpu.weight_grads(cp.asarray(a), cp.asarray(h), dw, db, cp.asarray(w), 0.01, "tf32")
    want_dw, want_db = np.empty((29, 21), np.float32), np.empty(21, np.float32)
    CPU.weight_grads(a, h, want_dw, want_db, w, 0.01, "tf32")
    np.testing.assert_allclose(np.asarray(dw), want_dw, **tol)
    np.testing.assert_allclose(np.asarray(db), want_db, **tol)
    assert gemm_tiles_launched() == {3}, "TF32 must use the tensor-core tile on every path"


def make_trainer(backend, cuda_graph, precision):
    net = Network([12, 16, 8, 3], activation="relu", backend=backend, seed=0,
                  precision=precision)
    return Trainer(net, Adam(backend, net.params, 1e-2), batch_size=16, alpha=1e-3,
                   dropout=0.25, seed=0, cuda_graph=cuda_graph)


@pytest.mark.kernels
def test_tf32_training_on_the_emulated_gpu_matches_numpy_tf32(cp):
    """Eager and graph-captured TF32 epochs on the CuPy backend follow the NumPy backend's
    emulated TF32 (to float32 rounding noise, which TF32 rounding can enlarge to one TF32
    step in an element), and TF32 really changes the result against float32."""
    from gpumlp.backends.cuda.backend import CupyBackend

    rng = np.random.default_rng(5)
    X = rng.normal(size=(70, 12)).astype(np.float32)
    T = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 70)]
    eager = make_trainer(CupyBackend(gemm_path="auto"), "off", "tf32")
    graph = make_trainer(CupyBackend(gemm_path="auto"), "on", "tf32")
    reference = make_trainer(CPU, "off", "tf32")
    fp32 = make_trainer(CPU, "off", "float32")
    for _ in range(2):
        losses = [t.run_epoch(cp.asarray(X) if t in (eager, graph) else X,
                              cp.asarray(T) if t in (eager, graph) else T)
                  for t in (eager, graph, reference, fp32)]
        assert losses[0] == pytest.approx(losses[2], rel=1e-3)
        assert losses[1] == pytest.approx(losses[2], rel=1e-3)
    assert gemm_tiles_launched() == {3}
    params = {name: t.network.get_flat_params()
              for name, t in (("eager", eager), ("graph", graph), ("ref", reference),
                              ("fp32", fp32))}
    np.testing.assert_allclose(params["eager"], params["ref"], atol=2e-3)
    np.testing.assert_allclose(params["graph"], params["ref"], atol=2e-3)
    assert np.abs(params["ref"] - params["fp32"]).max() > 1e-5


@pytest.mark.kernels
def test_tf32_on_a_gpu_without_tensor_cores_computes_in_float32(cp, monkeypatch):
    from gpumlp.backends.cuda.backend import CupyBackend

    class Turing(cp.cuda.Device):
        def __init__(self, device=None):
            super().__init__(device)
            self.compute_capability = "75"

    monkeypatch.setattr(cp.cuda, "Device", Turing)
    gpu = CupyBackend(gemm_path="fused")
    rng = np.random.default_rng(6)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in ((9, 8), (8, 5), (5,)))
    with pytest.warns(RuntimeWarning, match=r"compute capability 8\.0.*7\.5: computing in float32"):
        out = gpu.affine_act(cp.asarray(x), cp.asarray(w), cp.asarray(b), "relu",
                             cp.empty((9, 5), np.float32), None, "tf32")
    want = CPU.affine_act(x, w, b, "relu", np.empty((9, 5), np.float32))
    np.testing.assert_allclose(np.asarray(out), want, rtol=2e-5, atol=2e-5)
    assert 3 not in gemm_tiles_launched()


def tie_case(xp):
    """x @ w + 0 with every x a TF32 tie (1 + 2**-11) and w = 1: round-to-nearest-away gives
    1 + 2**-10 exactly; ties-to-even or truncation (the tensor cores without rounding) 1."""
    x = xp.full((20, 3), 1 + 2.0**-11, dtype=xp.float32)
    w = xp.zeros((3, 18), dtype=xp.float32)
    w[0] = 1
    return x, w, xp.zeros(18, dtype=xp.float32), xp.empty((20, 18), dtype=xp.float32)


@pytest.mark.kernels
def test_emulated_tensor_cores_round_ties_away_from_zero(cp):
    from gpumlp.backends.cuda.backend import CupyBackend

    x, w, b, out = tie_case(np)
    got = CupyBackend(gemm_path="fused").affine_act(cp.asarray(x), cp.asarray(w), cp.asarray(b),
                                                    "identity", cp.asarray(out), None, "tf32")
    assert (np.asarray(got) == np.float32(1 + 2.0**-10)).all()


# ----------------------------------------------------------------------- on a real GPU
@pytest.mark.gpu
@pytest.mark.parametrize("path", ["fused", "auto"])
def test_tf32_kernels_on_the_gpu_match_the_emulation(path):
    """On a GPU with tensor cores: ties round away from zero as cvt.rna does, and the TF32
    GEMMs at MNIST shapes equal the NumPy emulation (to float32 accumulation order) while
    differing from float32 products."""
    import cupy

    from gpumlp.backends.cuda.backend import CupyBackend

    if int(cupy.cuda.Device().compute_capability) < kernels.TF32_MIN_CAPABILITY:
        pytest.skip("this GPU has no TF32 tensor cores (compute capability < 8.0)")
    gpu = CupyBackend(gemm_path=path)
    x, w, b, out = tie_case(cupy)
    gpu.affine_act(x, w, b, "identity", out, None, "tf32")
    assert bool((out == np.float32(1 + 2.0**-10)).all())

    rng = np.random.default_rng(7)
    n, k, m = 256, 784, 512
    x, w = rng.normal(size=(n, k)).astype(np.float32), rng.normal(0, 0.05, (k, m)).astype(np.float32)
    b, h = rng.normal(size=m).astype(np.float32), rng.normal(size=(n, m)).astype(np.float32)
    drop = Dropout(keep=0.8, seed=11, counter=3)
    got = gpu.affine_act(*map(cupy.asarray, (x, w, b)), "relu", cupy.empty((n, m), np.float32),
                         drop, "tf32").get()
    want = CPU.affine_act(x, w, b, "relu", np.empty((n, m), np.float32), drop, "tf32")
    fp32 = CPU.affine_act(x, w, b, "relu", np.empty((n, m), np.float32), drop)
    error, tf32_effect = np.abs(got - want).max(), np.abs(want - fp32).max()
    assert error <= 1e-4 * np.abs(want).max() and tf32_effect > 10 * error
    dw, db = cupy.empty((k, m), np.float32), cupy.empty(m, np.float32)
    gpu.weight_grads(cupy.asarray(x), cupy.asarray(h), dw, db, cupy.asarray(w), 1e-4, "tf32")
    want_dw, want_db = np.empty((k, m), np.float32), np.empty(m, np.float32)
    CPU.weight_grads(x, h, want_dw, want_db, w, 1e-4, "tf32")
    np.testing.assert_allclose(dw.get(), want_dw, rtol=1e-4, atol=1e-4 * np.abs(want_dw).max())
    np.testing.assert_allclose(db.get(), want_db, rtol=1e-5, atol=1e-4)
