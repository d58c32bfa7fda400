"""Captured steps kept between fits (gpumlp/backends/cuda/graph_pool.py) and runners that own
every buffer their graphs use (gpumlp/backends/cuda/graphs.py), on the emulated CuPy."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from gpumlp import config
from gpumlp.backends.cuda import graph_pool
from gpumlp.backends.cuda.graphs import GraphStepRunner
from gpumlp.network import Network
from gpumlp.optim import Adam
from gpumlp.training import Trainer

pytestmark = [pytest.mark.kernels,
              pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")]


def gpu():
    from gpumlp.backends.cuda.backend import CupyBackend

    return CupyBackend(gemm_path="fused")


@pytest.fixture
def captures(monkeypatch):
    """The (rows, steps) of every step captured from now on."""
    seen = []
    capture = GraphStepRunner._capture
    monkeypatch.setattr(GraphStepRunner, "_capture",
                        lambda self, *a: seen.append(a[:2]) or capture(self, *a))
    return seen


def data(rows=40, seed=8):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(rows, 6)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] > 0).astype(int)


def classifier(backend, **options):
    from gpumlp import MLPClassifier

    settings = dict(hidden_layer_sizes=(16,), max_iter=3, batch_size=16,
                    learning_rate_init=0.05, alpha=1e-3, random_state=0, backend=backend,
                    cuda_graph="on")
    settings.update(options)
    return MLPClassifier(**settings)


def test_a_refit_replays_the_graphs_captured_by_the_first_fit(cp, captures):
    backend = gpu()
    clf = classifier(backend)
    X, y = data()
    clf.fit(cp.asarray(X), y)
    assert len(captures) == 3  # many-step, one-step and remainder graphs
    X2, y2 = data(seed=9)
    clf.fit(cp.asarray(X2), y2)
    assert len(captures) == 3  # no new warm-up or capture
    # The refit trained on the new data from fresh weights: as a new estimator would.
    fresh = classifier(backend, cuda_graph="off").fit(cp.asarray(X2), y2)
    np.testing.assert_allclose(clf.network_.get_flat_params(),
                               fresh.network_.get_flat_params(), rtol=1e-5, atol=1e-6)
    assert clf.loss_curve_ == pytest.approx(fresh.loss_curve_, rel=1e-5)


def test_another_estimator_of_the_same_step_takes_the_idle_graphs(cp, captures):
    # What a grid search or cross-validation does: a new estimator of the same settings.
    backend = gpu()
    X, y = data()
    first = classifier(backend).fit(cp.asarray(X), y)
    assert len(graph_pool.IDLE) == 1  # the finished fit's runner waits
    second = type(first)(**first.get_params()).fit(cp.asarray(X), y)
    assert len(captures) == 3
    np.testing.assert_array_equal(first.network_.get_flat_params(),
                                  second.network_.get_flat_params())
    # The two estimators share no parameters: training one leaves the other as it was.
    before = second.network_.get_flat_params()
    first.partial_fit(cp.asarray(X), y)
    np.testing.assert_array_equal(second.network_.get_flat_params(), before)


@pytest.mark.parametrize("change", [dict(alpha=1e-2), dict(hidden_layer_sizes=(8,)),
                                    dict(batch_size=8), dict(solver="sgd"),
                                    dict(beta_1=0.8)])
def test_another_step_is_captured_anew(cp, captures, change):
    backend = gpu()
    X, y = data()
    classifier(backend).fit(cp.asarray(X), y)
    other = classifier(backend, **change).fit(cp.asarray(X), y)
    assert len(captures) > 3
    reference = classifier(backend, cuda_graph="off", **change).fit(cp.asarray(X), y)
    np.testing.assert_allclose(other.network_.get_flat_params(),
                               reference.network_.get_flat_params(), rtol=1e-5, atol=1e-6)


def test_dropout_seed_is_part_of_the_step(cp, captures):
    # The dropout seed is a kernel argument: another random_state is another capture.
    backend = gpu()
    X, y = data()
    classifier(backend, dropout=0.2, random_state=0).fit(cp.asarray(X), y)
    classifier(backend, dropout=0.2, random_state=0).fit(cp.asarray(X), y)
    assert len(captures) == 3
    other = classifier(backend, dropout=0.2, random_state=1).fit(cp.asarray(X), y)
    assert len(captures) == 6
    reference = classifier(backend, dropout=0.2, random_state=1,
                           cuda_graph="off").fit(cp.asarray(X), y)
    np.testing.assert_allclose(other.network_.get_flat_params(),
                               reference.network_.get_flat_params(), rtol=1e-5, atol=1e-6)


def test_the_pool_keeps_at_most_its_capacity(cp, monkeypatch):
    monkeypatch.setattr(graph_pool, "IDLE", graph_pool.IdleRunners(capacity=1))
    backend = gpu()
    for rows in (40, 48, 56):
        X, y = data(rows)
        classifier(backend).fit(cp.asarray(X), y)
    assert len(graph_pool.IDLE) == 1
    graph_pool.clear()
    assert len(graph_pool.IDLE) == 0


def test_a_runner_serves_one_trainer_at_a_time(cp):
    # Two models of the same step trained in turns each get a runner of their own.
    backend = gpu()
    X = cp.asarray(np.random.default_rng(3).normal(size=(40, 6)))
    T = cp.asarray(np.eye(2)[np.random.default_rng(4).integers(0, 2, 40)])
    trainers = []
    for _ in range(2):
        net = Network([6, 8, 2], backend=backend, seed=0, dtype=np.float64)
        trainers.append(Trainer(net, Adam(backend, net.params, 1e-2), batch_size=16,
                                cuda_graph="on"))
    trainers[0].fit(X, T, 1)  # its runner goes idle...
    for trainer in trainers:  # ...the first takes it back, the second captures its own
        trainer.run_epoch(X, T)
    assert trainers[0].step_graphs is not trainers[1].step_graphs
    assert trainers[1].step_graphs.trainer is trainers[1]


def test_idle_runners_are_taken_once_under_threads():
    class Runner:
        key = ("step",)

        def bind(self, trainer):
            self.trainer = trainer

    pool = graph_pool.IdleRunners(capacity=8)
    for _ in range(4):
        pool.keep(Runner())
    taken, barrier = [], threading.Barrier(8)

    def take():
        barrier.wait()
        runner = pool.take(("step",))
        if runner is not None:
            taken.append(runner)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(taken) == 4 and len({id(r) for r in taken}) == 4 and len(pool) == 0


def test_partial_fit_copies_each_call_data_even_in_the_same_array(cp):
    # A streaming loop refills one buffer: every partial_fit call must train on its contents.
    backend = gpu()
    graph, eager = classifier(backend), classifier(backend, cuda_graph="off")
    buffer = cp.empty((40, 6), dtype=np.float32)
    for seed in (1, 2, 3):
        X, y = data(seed=seed)
        buffer[...] = cp.asarray(X)
        graph.partial_fit(buffer, y, classes=[0, 1])
        eager.partial_fit(cp.asarray(X), y, classes=[0, 1])
    np.testing.assert_allclose(graph.network_.get_flat_params(),
                               eager.network_.get_flat_params(), rtol=1e-5, atol=1e-6)


def test_a_fit_copies_its_data_into_the_graphs_once(cp, monkeypatch):
    loads = []
    load = GraphStepRunner.load
    monkeypatch.setattr(GraphStepRunner, "load",
                        lambda self, X, T: loads.append(1) or load(self, X, T))
    backend = gpu()
    X, y = data()
    clf = classifier(backend, max_iter=5)
    clf.fit(cp.asarray(X), y)
    assert loads == []  # the new runner copied the data when it was built
    clf.fit(cp.asarray(X), y)
    assert loads == [1]  # the idle runner: one copy for the whole fit, not one per epoch


def test_graphs_keep_their_buffers_when_the_trainer_drops_its_own(cp):
    # The trainer keeps buffers for the batch sizes of the current epoch only.  An eager
    # (weighted) epoch of another length drops the remainder buffers of the captured step;
    # the graphs must not replay into that freed memory (they hold their own buffers).
    backend = gpu()
    net = Network([6, 8, 2], backend=backend, seed=0, dtype=np.float64)
    trainer = Trainer(net, Adam(backend, net.params, 1e-2), batch_size=16, cuda_graph="on")
    rng = np.random.default_rng(5)
    X, T = rng.normal(size=(40, 6)), np.eye(2)[rng.integers(0, 2, 40)]
    trainer.run_epoch(cp.asarray(X), cp.asarray(T))  # captured: batches of 16, 16 and 8
    trainer.run_epoch(cp.asarray(X[:20]), cp.asarray(T[:20]), sample_weight=np.ones(20))
    import gc

    gc.collect()  # the 8-row buffers of the trainer are gone
    trainer.run_epoch(cp.asarray(X), cp.asarray(T))  # replays the captured remainder step


def test_bad_pool_size_is_named(monkeypatch):
    monkeypatch.setenv("GPUMLP_IDLE_GRAPHS", "many")
    with pytest.raises(ValueError, match="GPUMLP_IDLE_GRAPHS='many'.*0 or more"):
        graph_pool.IdleRunners().take(("any",))  # refused before a fit, not when keeping
    monkeypatch.setenv("GPUMLP_IDLE_GRAPHS", "0")
    config.reset()
    assert graph_pool.IdleRunners().capacity == 0
    monkeypatch.delenv("GPUMLP_IDLE_GRAPHS")
    config.reset()
    assert graph_pool.IdleRunners().capacity == graph_pool.DEFAULT_CAPACITY
    with pytest.raises(ValueError, match="capacity=-2"):
        graph_pool.IdleRunners().capacity = -2


def test_partial_fit_on_alternating_shapes_keeps_both_steps(cp, captures):
    # Chunks of two lengths in turn: each length's runner waits idle while the other trains.
    backend = gpu()
    graph, eager = classifier(backend), classifier(backend, cuda_graph="off")
    for rows in (40, 48, 40, 48, 40):
        X, y = data(rows, seed=rows)
        graph.partial_fit(cp.asarray(X), y, classes=[0, 1])
        eager.partial_fit(cp.asarray(X), y, classes=[0, 1])
    # 40 rows: many-step, one-step and remainder graphs; 48 rows: many-step and one-step.
    assert len(captures) == 5
    np.testing.assert_allclose(graph.network_.get_flat_params(),
                               eager.network_.get_flat_params(), rtol=1e-5, atol=1e-6)


def test_clear_is_reachable_from_the_package_alone():
    """``import gpumlp; gpumlp.graph_pool.clear()`` as the README writes it."""
    code = "import gpumlp, sys; gpumlp.graph_pool.clear(); sys.exit('cupy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[1]
                          ).returncode == 0
