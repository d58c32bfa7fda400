"""The CUDA-graph training path against the eager path (needs a GPU; skipped without one)."""

import numpy as np
import pytest

from gpumlp.network import Network
from gpumlp.optim import SGD, Adam
from gpumlp.training import Trainer

pytestmark = pytest.mark.gpu


def make_trainer(cuda_graph, dropout, solver, n_features=40, seed=0):
    net = Network([n_features, 64, 32, 5], activation="relu", backend="cupy", seed=seed)
    optimizer = (Adam(net.backend, net.params, 1e-3) if solver == "adam"
                 else SGD(net.backend, net.params, 0.05, momentum=0.9, nesterov=True))
    return Trainer(net, optimizer, batch_size=64, alpha=1e-4, dropout=dropout, seed=seed,
                   cuda_graph=cuda_graph)


def data(cp, n=1000, n_features=40):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, n_features)).astype(np.float32)
    T = np.eye(5, dtype=np.float32)[rng.integers(0, 5, n)]
    return cp.asarray(X), cp.asarray(T)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_graph_and_eager_epochs_give_the_same_weights(solver, dropout):
    import cupy as cp

    X, T = data(cp)  # 1000 rows, batch 64: 15 full batches and a partial one of 40
    eager = make_trainer("off", dropout, solver)
    graph = make_trainer("on", dropout, solver)
    for _ in range(2):
        loss_eager = eager.run_epoch(X, T)
        loss_graph = graph.run_epoch(X, T)
        assert loss_graph == pytest.approx(loss_eager, rel=1e-4)
    assert graph.step_graphs is not None  # the graph path really ran
    np.testing.assert_allclose(graph.network.get_flat_params(),
                               eager.network.get_flat_params(), rtol=1e-4, atol=1e-5)
    assert graph.step_count == eager.step_count == 32
    if solver == "adam":
        assert graph.optimizer.t == eager.optimizer.t == 32


def test_capture_and_replays_allocate_nothing():
    """CuPy captures in relaxed mode: a temporary made during capture would be freed after
    it and replayed into memory the pool hands out again.  Every allocation goes through a
    counting allocator, and the pool's bytes are compared around a capture and replays."""
    import cupy as cp

    X, T = data(cp)
    trainer = make_trainer("on", 0.2, "adam")
    trainer.run_epoch(X, T)
    runner = trainer.step_graphs
    pool = cp.get_default_memory_pool()
    runner.synchronize()
    before = pool.used_bytes(), pool.total_bytes()
    allocations = []

    def counting(size):
        allocations.append(size)
        return pool.malloc(size)

    with cp.cuda.using_allocator(counting):
        with runner.on_stream():
            graph = runner._capture(runner.batch, 2, runner.loss_full)
        runner.synchronize()
        assert allocations == [], f"allocations during capture: {allocations}"
        assert (pool.used_bytes(), pool.total_bytes()) == before
        for _ in range(3):
            runner.run_steps(runner.full_steps)
            with runner.on_stream():
                runner._set_device_state(0)
                graph.launch(runner.stream)
        runner.synchronize()
    assert allocations == [], f"allocations during replays: {allocations}"
    assert (pool.used_bytes(), pool.total_bytes()) == before


def test_classifier_uses_graphs_and_learns():
    import cupy as cp

    from gpumlp import MLPClassifier

    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, 20)).astype(np.float32)
    y = (X[:, :3].sum(axis=1) > 0).astype(int) + 2 * (X[:, 3] > 0)
    clf = MLPClassifier((64,), max_iter=30, batch_size=128, random_state=0, backend="cupy",
                        cuda_graph="on").fit(cp.asarray(X), y)
    assert clf._trainer_.step_graphs is not None
    assert clf.score(X, y) > 0.9
    assert np.all(np.isfinite(clf.loss_curve_)) and clf.loss_curve_[-1] < clf.loss_curve_[0]


def test_a_refit_replays_the_idle_graphs_and_equals_eager():
    import cupy as cp

    from gpumlp import MLPClassifier, graph_pool
    from gpumlp.backends.cuda.graphs import GraphStepRunner

    graph_pool.clear()
    X, T = data(cp)
    y = T.argmax(axis=1).get()

    def fit(mode, X):
        clf = MLPClassifier((64,), max_iter=3, batch_size=64, alpha=1e-4, random_state=0,
                            backend="cupy", cuda_graph=mode)
        with pytest.warns(Warning, match="max_iter"):
            return clf.fit(X, y)

    fit("on", X)
    built = []
    init = GraphStepRunner.__init__
    GraphStepRunner.__init__ = lambda self, *a, **k: built.append(1) or init(self, *a, **k)
    try:
        X2 = X[::-1].copy()  # new data of the same shape
        refit, eager = fit("on", X2), fit("off", X2)
    finally:
        GraphStepRunner.__init__ = init
    assert built == []  # the first fit's runner served the refit
    np.testing.assert_allclose(refit.network_.get_flat_params(),
                               eager.network_.get_flat_params(), rtol=1e-4, atol=1e-5)
    graph_pool.clear()


def test_a_repeated_prediction_replays_and_equals_eager():
    import cupy as cp

    X, _ = data(cp, n=10000)
    net = Network([40, 64, 32, 5], activation="relu", backend="cupy", seed=0)
    eager = net.predict_output(X).get()
    replayed = net.predict_output(X)  # second sight: captured and replayed
    assert len(net._forward_replays) == 1
    # The captured GEMMs may take another route than the eager ones (fused or cuBLAS).
    np.testing.assert_allclose(replayed.get(), eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(net.predict_output(X).get(), replayed.get())
