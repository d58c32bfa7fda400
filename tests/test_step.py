"""The training step written once (gpumlp/step.py): the eager loop, the captured graphs,
the eager steps ``cuda_graph="auto"`` times and the benchmark subject all run it, so with
L2 and dropout on they compute the same losses and weights (emulated CuPy)."""

from __future__ import annotations

import numpy as np
import pytest

from gpumlp.backends.cuda import graph_auto
from gpumlp.backends.cuda.backend import CupyBackend
from gpumlp.network import Network
from gpumlp.optim import Adam
from gpumlp.training import Trainer


@pytest.fixture
def cp(cp, monkeypatch):
    monkeypatch.setattr(graph_auto, "VERDICTS", graph_auto.GraphVerdicts())  # a fresh process
    return cp


def make_trainer(backend, cuda_graph, alpha=1e-3, dropout=0.2):
    net = Network([12, 16, 8, 3], activation="relu", backend=backend, seed=0, dtype=np.float64)
    return Trainer(net, Adam(backend, net.params, 1e-2), batch_size=16, alpha=alpha,
                   dropout=dropout, seed=0, cuda_graph=cuda_graph)


def data(cp, rows=72, seed=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 12))
    T = np.eye(3)[rng.integers(0, 3, rows)]
    return cp.asarray(X), cp.asarray(T)


@pytest.mark.kernels
def test_the_eager_steps_auto_times_compute_the_l2_term_as_training_does(cp, monkeypatch):
    """``cuda_graph="auto"`` decides between graph and eager by timing both; the eager way
    it times must be the step the trainer runs, L2 term included, or the verdict compares
    the graph with a cheaper step than the real one."""
    counts = {"steps": 0, "l2": 0, "timing": False}

    def counted(method):
        def wrapper(*args, **kwargs):
            counts["l2"] += counts["timing"]
            return method(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(Network, "squared_weight_norm", counted(Network.squared_weight_norm))
    monkeypatch.setattr(CupyBackend, "add_weights_l2_loss",
                        counted(CupyBackend.add_weights_l2_loss))
    measure = graph_auto.GraphVerdicts.measure

    def spied_measure(self, key, eager, graph, sync, *args, **kwargs):
        def timed_eager(steps):
            counts["timing"] = True
            counts["steps"] += steps
            try:
                eager(steps)
            finally:
                counts["timing"] = False
        return measure(self, key, timed_eager, graph, sync, *args, **kwargs)

    monkeypatch.setattr(graph_auto.GraphVerdicts, "measure", spied_measure)
    trainer = make_trainer(CupyBackend(gemm_path="fused"), "auto")
    trainer.run_epoch(*data(cp))
    assert counts["steps"] > 0  # the verdict was measured
    assert counts["l2"] == counts["steps"], (
        f"the eager steps cuda_graph='auto' timed computed the L2 term {counts['l2']} times "
        f"in {counts['steps']} steps")


@pytest.mark.kernels
@pytest.mark.parametrize("rows", [72, 64])  # with and without a remainder batch
def test_eager_and_captured_steps_give_the_same_losses_and_weights(cp, rows):
    X, T = data(cp, rows)
    eager, graph = (make_trainer(CupyBackend(gemm_path="fused"), mode) for mode in ("off", "on"))
    for _ in range(3):
        for trainer in (eager, graph):
            trainer.run_epoch(X, T)
    assert graph.step_graphs is not None  # the captured steps really ran
    np.testing.assert_allclose(graph.history.loss, eager.history.loss, rtol=1e-12)
    np.testing.assert_allclose(graph.network.get_flat_params(),
                               eager.network.get_flat_params(), rtol=1e-10, atol=1e-12)
    assert graph.step_count == eager.step_count
    assert graph.optimizer.steps_taken == eager.optimizer.steps_taken


def test_the_step_gathers_a_batch_by_rows():
    """``TrainingStep.gather_rows(X, T, index)``, the gather every eager step runs, fills the
    step's buffers with ``X[index]`` and ``T[index]`` on the step's backend."""
    from gpumlp.step import StepSettings, TrainingStep
    from gpumlp.optim import SGD

    net = Network([3, 4, 2], backend="numpy", seed=0, dtype=np.float64)
    step = TrainingStep(net, SGD(net.backend, net.params, 0.1), StepSettings())
    rng = np.random.default_rng(0)
    X, T = rng.normal(size=(10, 3)), np.eye(2)[rng.integers(0, 2, 10)]
    index = np.array([7, 2, 2, 9], dtype=np.int64)
    buffers = step.new_buffers(4, 3, 2)
    step.gather_rows(X, T, index)(buffers)
    np.testing.assert_array_equal(buffers.x, X[index])
    np.testing.assert_array_equal(buffers.t, T[index])
