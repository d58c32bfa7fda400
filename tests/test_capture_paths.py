"""cuBLAS inside captured steps (gpumlp/backends/cuda/routes.py) on the emulated CuPy and
emulated cuBLAS: each GEMM of a graph runner's step is measured in the warm-up and the faster
route is captured; a step captured with cuBLAS(Lt) trains exactly as the eager and NumPy
steps do."""

from __future__ import annotations

import numpy as np
import pytest

from gpumlp.backends import get_backend
from gpumlp.backends.cuda import routes as capture_paths
from gpumlp.network import Network
from gpumlp.optim import Adam
from gpumlp.training import Trainer

from conftest import load_support

pytestmark = pytest.mark.kernels

emulated = load_support("emulated_cupy")
emulated_cublas = load_support("emulated_cublas")
FUSED_GEMMS = {"gemm_bias_act", "gemm_backprop_act", "gemm_weight_grads"}


@pytest.fixture
def blas_api(cp, monkeypatch):
    """What the backend's direct route calls: the emulated libraries (one per test)."""
    api = emulated_cublas.EmulatedBlas(emulated)
    monkeypatch.setattr(capture_paths, "new_api", lambda: api)
    return api


def gpu(path):
    from gpumlp.backends.cuda.backend import CupyBackend

    return CupyBackend(gemm_path=path)


def make_trainer(backend, cuda_graph, dtype=np.float64):
    net = Network([12, 16, 8, 3], activation="relu", backend=backend, seed=0, dtype=dtype)
    return Trainer(net, Adam(backend, net.params, 1e-2), batch_size=16, alpha=1e-3,
                   dropout=0.25, seed=0, cuda_graph=cuda_graph)


def data(rows=70):
    rng = np.random.default_rng(5)
    return rng.normal(size=(rows, 12)), np.eye(3)[rng.integers(0, 3, rows)]


def captured_names(trainer):
    graph = trainer.step_graphs.graph_one
    return [call.name for call, *_ in graph.launches]


def test_steps_captured_with_cublas_train_like_eager_and_numpy(cp, blas_api):
    X, T = data()
    graph = make_trainer(gpu("cublas"), "on")
    eager = make_trainer(gpu("fused"), "off")
    reference = make_trainer(get_backend("numpy"), "off")
    for _ in range(2):
        losses = [graph.run_epoch(cp.asarray(X), cp.asarray(T)),
                  eager.run_epoch(cp.asarray(X), cp.asarray(T)), reference.run_epoch(X, T)]
        assert losses[0] == pytest.approx(losses[1], rel=1e-10)
        assert losses[0] == pytest.approx(losses[2], rel=1e-10)
    for other in (eager, reference):
        np.testing.assert_allclose(graph.network.get_flat_params(),
                                   other.network.get_flat_params(), rtol=1e-9, atol=1e-12)
    names = captured_names(graph)
    assert not FUSED_GEMMS & set(names), names  # every GEMM of the step is the library's
    # 3 forward GEMMs + bias/activation epilogues, 2 backward GEMMs + their epilogues, and
    # 3 weight gradients with the bias gradient fused by cuBLASLt (BGRADA).
    assert names.count("cublasDgemm_v2") == 5
    assert names.count("cublasLtMatmul[bgrada]") == 3
    assert blas_api.calls["cublasLtMatmul[bgrada]"] > 0  # the replays ran them


def test_auto_captures_the_route_measured_faster(cp, blas_api, monkeypatch):
    from gpumlp.backends.cuda import routes as paths_module

    measured = []

    def fastest(cupy, candidates):  # alternate so that both routes end up captured
        assert set(candidates) == {"fused", "direct"}
        measured.append(1)
        return "direct" if len(measured) % 2 else "fused"

    monkeypatch.setattr(paths_module, "fastest", fastest)
    backend = gpu("auto")
    trainer = make_trainer(backend, "on")
    X, T = data()
    trainer.run_epoch(cp.asarray(X), cp.asarray(T))
    choices = capture_paths.choices(backend)
    # Each (operation, shape) of the two step shapes (16 rows and the 6-row remainder) once.
    assert len(measured) == len(choices) == 16
    names = captured_names(trainer)
    runner = trainer.step_graphs
    directs = sum(1 for (op, shape, _), route in choices.items()
                  if route == "direct" and shape[0] == runner.batch)
    library_calls = sum(name.startswith("cublas") for name in names)
    assert library_calls == directs and 0 < directs < 8
    assert sum(name in FUSED_GEMMS for name in names) == 8 - directs


def test_unsupported_epilogue_keeps_that_gemm_fused(cp, monkeypatch):
    api = emulated_cublas.EmulatedBlas(emulated, unsupported={"bgrada"})
    monkeypatch.setattr(capture_paths, "new_api", lambda: api)
    trainer = make_trainer(gpu("cublas"), "on")
    X, T = data()
    trainer.run_epoch(cp.asarray(X), cp.asarray(T))
    names = captured_names(trainer)
    assert names.count("gemm_weight_grads") == 3 and names.count("cublasDgemm_v2") == 5


def test_missing_library_falls_back_to_fused_with_one_warning(cp, monkeypatch):
    def missing():
        raise capture_paths.cublas.BlasError("cannot load cuBLAS / cuBLASLt: none")

    monkeypatch.setattr(capture_paths, "new_api", missing)
    trainer = make_trainer(gpu("cublas"), "on")
    X, T = data()
    with pytest.warns(RuntimeWarning, match="fused GEMMs only: cannot load cuBLAS"):
        trainer.run_epoch(cp.asarray(X), cp.asarray(T))
    assert set(captured_names(trainer)) >= FUSED_GEMMS


def test_relu_layers_without_dropout_are_whole_cublaslt_calls(cp, blas_api):
    """Bias + ReLU (mask kept) forward and dReLU backward from that mask: a ReLU layer with
    no epilogue kernel of ours, training exactly as the eager and NumPy steps do."""
    X, T = data()
    trainers = []
    for backend, mode in ((gpu("cublas"), "on"), (gpu("fused"), "off"),
                          (get_backend("numpy"), "off")):
        net = Network([12, 16, 8, 3], activation="relu", backend=backend, seed=0,
                      dtype=np.float64)
        trainers.append(Trainer(net, Adam(backend, net.params, 1e-2), batch_size=16,
                                alpha=1e-3, seed=0, cuda_graph=mode))
    for _ in range(2):
        for trainer in trainers:
            on_gpu = trainer.network.backend.name == "cupy"
            trainer.run_epoch(cp.asarray(X) if on_gpu else X, cp.asarray(T) if on_gpu else T)
    for other in trainers[1:]:
        np.testing.assert_allclose(trainers[0].network.get_flat_params(),
                                   other.network.get_flat_params(), rtol=1e-9, atol=1e-12)
    names = captured_names(trainers[0])
    assert names.count("cublasLtMatmul[relu_aux_bias]") == 2  # the two hidden layers
    assert names.count("cublasLtMatmul[drelu]") == 2
    assert names.count("cublasDgemm_v2") == 1 and names.count("bias_act") == 1  # output
    assert names.count("cublasLtMatmul[bgrada]") == 3
    assert "act_grad" not in names and not FUSED_GEMMS & set(names)
    assert names.count("add_weights_l2_loss") == 1  # alpha > 0: one L2 term, every layer
    assert len(names) == 13  # with the batch gather, the L2 term, the loss and the optimizer


def test_hidden_width_100_trains_captured_on_cublaslt(cp, blas_api):
    """784-100-10: W2 starts at byte 314000 of the flat parameters (144 mod 256), so the
    weight gradient's cuBLASLt call has C = W2 and D = dW2 only 16-byte aligned; planned for
    256 (the library's default) the call is refused."""
    rng = np.random.default_rng(9)
    X = rng.normal(size=(48, 784)).astype(np.float32)
    T = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 48)]

    def trainer(backend, cuda_graph):
        net = Network([784, 100, 10], activation="relu", backend=backend, seed=0,
                      dtype=np.float32)
        return Trainer(net, Adam(backend, net.params, 1e-3), batch_size=16, alpha=1e-3,
                       seed=0, cuda_graph=cuda_graph)

    graph, eager = trainer(gpu("cublas"), "on"), trainer(gpu("fused"), "off")
    loss = graph.run_epoch(cp.asarray(X), cp.asarray(T))
    assert loss == pytest.approx(eager.run_epoch(cp.asarray(X), cp.asarray(T)), rel=1e-5)
    # Float32 sums in another order: Adam's step (lr 1e-3) amplifies them where a gradient
    # is near zero.
    np.testing.assert_allclose(graph.network.get_flat_params(),
                               eager.network.get_flat_params(), rtol=1e-4, atol=5e-5)
    assert captured_names(graph).count("cublasLtMatmul[bgrada]") == 2
    assert (256, 256, 16, 16) in {plan.alignments for plan in blas_api.plans}


def test_blas_error_in_warm_up_keeps_that_gemm_fused(cp, monkeypatch):
    """A call the library refuses although planning passed (a status error) is not fatal:
    the GEMM stays on the fused kernel, with a warning naming it."""
    class Refusing(emulated_cublas.EmulatedBlas):
        def lt_matmul(self, *args, **kwargs):
            raise capture_paths.cublas.BlasError("cublasLtMatmul returned status 7")

    api = Refusing(emulated)
    monkeypatch.setattr(capture_paths, "new_api", lambda: api)
    X, T = data()
    graph, eager = make_trainer(gpu("cublas"), "on"), make_trainer(gpu("fused"), "off")
    with pytest.warns(RuntimeWarning, match="weight_grads .* stays on the fused GEMM.*status 7"):
        loss = graph.run_epoch(cp.asarray(X), cp.asarray(T))
    assert loss == pytest.approx(eager.run_epoch(cp.asarray(X), cp.asarray(T)), rel=1e-10)
    names = captured_names(graph)
    assert names.count("gemm_weight_grads") == 3 and names.count("cublasDgemm_v2") == 5
