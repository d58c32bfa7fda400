"""Inference replayed from a captured forward (gpumlp/backends/cuda/forward.py), on the emulated
CuPy: the second prediction on a device array replays one graph, equal to the eager pass."""

from __future__ import annotations

import pickle
import threading

import numpy as np
import pytest

from gpumlp.backends.cuda import forward as forward_graph
from gpumlp.backends.cuda.forward import CapturedForward
from gpumlp.network import Network

pytestmark = pytest.mark.kernels


def gpu():
    from gpumlp.backends.cuda.backend import CupyBackend

    return CupyBackend(gemm_path="fused")


@pytest.fixture
def captures(monkeypatch):
    built = []
    init = CapturedForward.__init__
    monkeypatch.setattr(CapturedForward, "__init__",
                        lambda self, *a: built.append(a[1].shape) or init(self, *a))
    return built


def network(loss="softmax_xent", dtype=np.float64):
    return Network([6, 16, 8, 3], activation="relu", loss=loss, backend=gpu(), seed=0,
                   dtype=dtype)


def test_a_repeated_prediction_replays_one_graph_equal_to_eager(cp, captures):
    net = network()
    x = cp.asarray(np.random.default_rng(0).normal(size=(50, 6)))
    eager = net.predict_output(x, chunk=16).get()
    assert captures == []  # first sight: eager
    replayed = net.predict_output(x, chunk=16)
    assert captures == [(50, 6)]
    np.testing.assert_array_equal(replayed.get(), eager)
    again = net.predict_output(x, chunk=16)
    assert captures == [(50, 6)] and again is not replayed  # a fresh result every call
    np.testing.assert_array_equal(again.get(), eager)
    graph = net._forward_replays._graphs[forward_graph.input_key(x, 16)]
    # 4 chunks x (3 layers + softmax), all in one graph.
    assert len(graph.graph.launches) == 16


def test_replays_follow_the_weights_and_the_input_contents(cp):
    net = network()
    rng = np.random.default_rng(1)
    x = cp.asarray(rng.normal(size=(40, 6)))
    for _ in range(2):
        net.predict_output(x)
    x[...] = cp.asarray(rng.normal(size=(40, 6)))  # new contents, same array
    net.params[...] = net.params * 0.5  # trained further
    replayed = net.predict_output(x).get()
    reference = Network([6, 16, 8, 3], backend="numpy", seed=0, dtype=np.float64)
    reference.params[...] = net.params.get()
    np.testing.assert_allclose(replayed, reference.predict_output(x.get()), rtol=1e-12)
    assert len(net._forward_replays) == 1


@pytest.mark.parametrize("loss", ["sigmoid_bce", "squared_error"])
def test_sigmoid_and_identity_outputs_replay_too(cp, captures, loss):
    net = network(loss=loss)
    x = cp.asarray(np.random.default_rng(2).normal(size=(20, 6)) * 30)
    eager = net.predict_output(x).get()
    np.testing.assert_array_equal(net.predict_output(x).get(), eager)
    assert captures == [(20, 6)]
    reference = Network([6, 16, 8, 3], activation="relu", loss=loss, backend="numpy", seed=0,
                        dtype=np.float64)
    np.testing.assert_allclose(eager, reference.predict_output(x.get()), rtol=1e-12,
                               atol=1e-300)


def test_host_arrays_are_not_captured():
    numpy_net = Network([6, 4, 2], backend="numpy", seed=0)
    assert not forward_graph.capturable(numpy_net, np.ones((3, 6), np.float32))


def test_each_network_keeps_a_bounded_number_of_graphs(cp):
    net = network()
    inputs = [cp.asarray(np.random.default_rng(s).normal(size=(10 + s, 6))) for s in range(4)]
    for x in inputs:
        for _ in range(2):
            net.predict_output(x)
    assert len(net._forward_replays) == forward_graph.KEPT_GRAPHS


def test_graphs_are_not_pickled_or_copied(cp):
    net = network()
    x = cp.asarray(np.ones((8, 6)))
    for _ in range(2):
        net.predict_output(x)
    assert len(net._forward_replays) == 1
    assert "_forward_replays" not in net.__getstate__()
    assert len(net.copy()._forward_replays) == 0
    numpy_net = Network([6, 4, 2], backend="numpy", seed=0)
    assert pickle.loads(pickle.dumps(numpy_net))._forward_replays is None  # captures none


def test_a_concurrent_call_runs_eagerly_instead_of_sharing_the_buffers(cp, monkeypatch):
    net = network()
    x = cp.asarray(np.random.default_rng(3).normal(size=(30, 6)))
    expected = net.predict_output(x).get()
    inside, release = threading.Event(), threading.Event()
    run = CapturedForward.run

    def slow_run(self, result):
        inside.set()
        release.wait(10)
        return run(self, result)

    monkeypatch.setattr(CapturedForward, "run", slow_run)
    results = {}
    replaying = threading.Thread(target=lambda: results.setdefault("a", net.predict_output(x)))
    replaying.start()
    assert inside.wait(10)
    results["b"] = net.predict_output(x)  # the graph is busy: eager, not blocked
    release.set()
    replaying.join(10)
    for result in results.values():
        np.testing.assert_array_equal(result.get(), expected)


def test_estimator_scores_its_validation_set_by_replays(cp, captures, monkeypatch):
    from gpumlp import MLPClassifier

    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)

    def fit():
        clf = MLPClassifier((16,), max_iter=6, early_stopping=True, n_iter_no_change=20,
                            random_state=0, backend=gpu(), cuda_graph="off")
        with pytest.warns(Warning, match="max_iter"):
            return clf.fit(cp.asarray(X), y)

    replayed = fit()
    assert captures == [(20, 6)]  # the held-out rows, captured at the second epoch
    monkeypatch.setattr(forward_graph, "capturable", lambda network, x: False)
    eager = fit()
    assert captures == [(20, 6)]
    assert replayed.validation_scores_ == eager.validation_scores_


def test_copies_made_for_a_call_are_never_captured(cp, captures):
    from gpumlp import MLPClassifier

    rng = np.random.default_rng(5)
    X = rng.normal(size=(60, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0).astype(int)  # 3 classes: softmax
    clf = MLPClassifier((8,), max_iter=2, random_state=0, backend=gpu(), cuda_graph="off")
    with pytest.warns(Warning, match="max_iter"):
        clf.fit(cp.asarray(X), y)
    for given in (X, cp.asarray(X, dtype=np.float64)):  # host data; another dtype
        for _ in range(3):
            clf.predict_proba(given)
    assert captures == []
    X_d = cp.asarray(X)
    expected = clf.predict_proba(X_d)
    np.testing.assert_array_equal(clf.predict_proba(X_d).get(), expected.get())
    assert captures == [(60, 6)]  # the caller's own device array, seen twice
