"""Captured steps re-captured only when they must be, and ``cuda_graph="auto"`` replaying
only where measured faster (gpumlp/backends/cuda/graphs.py, gpumlp/backends/cuda/graph_auto.py), on the emulated CuPy."""

from __future__ import annotations

import numpy as np
import pytest

from gpumlp.backends.cuda import graph_auto
from gpumlp.backends.cuda.graphs import GraphStepRunner
from gpumlp.network import Network
from gpumlp.optim import Adam
from gpumlp.training import Trainer

from conftest import load_support

emulated = load_support("emulated_cupy")


@pytest.fixture
def cp(cp, monkeypatch):
    monkeypatch.setattr(graph_auto, "VERDICTS", graph_auto.GraphVerdicts())  # a fresh process
    return cp


def make_trainer(backend, cuda_graph):
    net = Network([12, 16, 3], activation="relu", backend=backend, seed=0, dtype=np.float64)
    return Trainer(net, Adam(backend, net.params, 1e-2), batch_size=16, alpha=1e-3,
                   dropout=0.2, seed=0, cuda_graph=cuda_graph)


def gpu():
    from gpumlp.backends.cuda.backend import CupyBackend

    return CupyBackend(gemm_path="fused")


def chunks(n_chunks, rows=40, seed=8):
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(rows, 12)), np.eye(3)[rng.integers(0, 3, rows)])
            for _ in range(n_chunks)]


@pytest.mark.kernels
def test_new_data_of_the_same_shape_reuses_the_captured_graphs(cp, monkeypatch):
    """partial_fit's pattern: one epoch per new chunk.  The runner is built once, and each
    chunk's data reaches the graphs (the weights equal eager training on the same chunks)."""
    captures = []
    capture = GraphStepRunner._capture
    monkeypatch.setattr(GraphStepRunner, "_capture",
                        lambda self, *a: captures.append(a[:2]) or capture(self, *a))
    graph, eager = make_trainer(gpu(), "on"), make_trainer(gpu(), "off")
    runners = set()
    for X, T in chunks(3):
        for trainer in (graph, eager):
            trainer.run_epoch(cp.asarray(X), cp.asarray(T))
        runners.add(id(graph.step_graphs))
    assert len(runners) == 1
    assert len(captures) == 3  # many-step, one-step and remainder graphs, captured once
    np.testing.assert_allclose(graph.network.get_flat_params(),
                               eager.network.get_flat_params(), rtol=1e-10, atol=1e-12)
    # Another shape is another step: captured anew.
    X, T = chunks(1, rows=48)[0]
    graph.run_epoch(cp.asarray(X), cp.asarray(T))
    assert len(captures) == 5 and id(graph.step_graphs) not in runners  # no remainder


@pytest.mark.kernels
def test_runner_owns_its_data_and_refuses_another_shape(cp):
    trainer = make_trainer(gpu(), "on")
    (X, T), (X2, T2) = chunks(2)
    X_d, T_d = cp.asarray(X), cp.asarray(T)
    trainer.run_epoch(X_d, T_d)
    runner = trainer.step_graphs
    assert runner.X is not X_d  # the caller's array is never written by a later load
    runner.load(cp.asarray(X2), cp.asarray(T2))
    np.testing.assert_array_equal(runner.X.get(), X2)
    np.testing.assert_array_equal(X_d.get(), X)
    with pytest.raises(ValueError, match="differ from the captured"):
        runner.load(cp.asarray(X2[:-1]), cp.asarray(T2[:-1]))


@pytest.mark.kernels
@pytest.mark.parametrize("graph_faster", [True, False])
def test_auto_replays_only_where_measured_faster(cp, monkeypatch, graph_faster):
    measured = []

    def measure(self, key, eager, graph, sync, steps=8, repeats=3, clock=None):
        eager(steps)  # both ways really run, on saved state
        graph(steps)
        sync()
        measured.append(key)
        self._verdicts[key] = {"eager": 1.0, "graph": 0.5 if graph_faster else 2.0}
        return graph_faster

    monkeypatch.setattr(graph_auto.GraphVerdicts, "measure", measure)
    auto, eager = make_trainer(gpu(), "auto"), make_trainer(gpu(), "off")
    replays = []
    run_epoch = GraphStepRunner.run_epoch
    monkeypatch.setattr(GraphStepRunner, "run_epoch",
                        lambda self, order: replays.append(1) or run_epoch(self, order))
    for X, T in chunks(2):
        for trainer in (auto, eager):
            trainer.run_epoch(cp.asarray(X), cp.asarray(T))
    assert len(measured) == 1  # once per step shape, then the verdict is reused
    assert len(replays) == (2 if graph_faster else 0)
    assert (auto.step_graphs is not None) == graph_faster  # an unused runner is freed
    # Another trainer of the same step shape follows the verdict without measuring again,
    # and without capturing at all where eager launches were faster.
    built = []
    init = GraphStepRunner.__init__
    monkeypatch.setattr(GraphStepRunner, "__init__",
                        lambda self, *a, **k: built.append(1) or init(self, *a, **k))
    again = make_trainer(gpu(), "auto")
    again.run_epoch(cp.asarray(chunks(1)[0][0]), cp.asarray(chunks(1)[0][1]))
    assert len(measured) == 1 and len(built) == (1 if graph_faster else 0)
    # Measuring left no trace: the same weights and counts as eager training alone.
    np.testing.assert_allclose(auto.network.get_flat_params(),
                               eager.network.get_flat_params(), rtol=1e-10, atol=1e-12)
    assert auto.step_count == eager.step_count and auto.optimizer.t == eager.optimizer.t


@pytest.mark.kernels
def test_measured_verdict_is_kept_per_step_shape(cp):
    trainer = make_trainer(gpu(), "on")
    X, T = chunks(1, rows=64)[0]
    trainer.run_epoch(cp.asarray(X), cp.asarray(T))
    runner = trainer.step_graphs
    model = trainer.network
    before = (model.get_flat_params(), trainer.step_count, trainer.optimizer.t)
    verdict = runner.faster_than_eager()
    after = (model.get_flat_params(), trainer.step_count, trainer.optimizer.t)
    np.testing.assert_array_equal(before[0], after[0])
    assert before[1:] == after[1:]
    key = graph_auto.step_shape(runner.net, runner.batch, trainer.dropout, trainer.alpha, 0)
    timings = graph_auto.VERDICTS.timings(key)
    assert set(timings) == {"eager", "graph"} and all(t > 0 for t in timings.values())
    assert verdict == (timings["graph"] < timings["eager"])
    assert graph_auto.VERDICTS.get(key) is verdict


def test_verdicts_time_both_ways_interleaved_and_compare_the_best():
    now = [0.0]
    order = []

    def way(name, seconds_per_step):
        def run(steps):
            order.append(name)
            now[0] += seconds_per_step * steps
        return run

    verdicts = graph_auto.GraphVerdicts()
    key = ("shape",)
    assert verdicts.get(key) is None
    faster = verdicts.measure(key, way("eager", 3e-3), way("graph", 1e-3), lambda: None,
                              steps=4, repeats=2, clock=lambda: now[0])
    assert faster is True and verdicts.get(key) is True
    assert order == ["eager", "graph"] * 3  # a warm-up of each, then interleaved repeats
    assert verdicts.timings(key) == pytest.approx({"eager": 3e-3, "graph": 1e-3})
    with pytest.raises(ValueError, match="steps=0"):
        verdicts.measure(key, way("eager", 1), way("graph", 1), lambda: None, steps=0)
