"""Models used from several threads, many batch sizes, pickles and memory maps.

A backend is shared by every model of a process, so nothing a call writes may live on it or
on the model between calls: these tests fail when work buffers are shared or cached by shape.
"""

from __future__ import annotations

import pickle
import threading
import tracemalloc
import warnings

import numpy as np
import pytest

import gpumlp
from gpumlp.backends.scratch import ScratchPool
from gpumlp.network import ALIGN_ELEMENTS, Network


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1200, 20)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    return X, y


def fit(X, y, **params):
    options = dict(hidden_layer_sizes=(48, 48), max_iter=4, batch_size=64, random_state=0,
                   backend="numpy", dropout=0.1)
    options.update(params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpumlp.ConvergenceWarning)
        return gpumlp.MLPClassifier(**options).fit(X, y)


def run_threads(work, count):
    errors = []

    def guarded(k):
        try:
            work(k)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_concurrent_prediction_on_one_model_equals_serial(data):
    X, y = data
    model = fit(X, y)
    sizes = list(range(40, 400, 9))
    expected = {n: model.predict_proba(X[:n]) for n in sizes}
    wrong = []

    def work(k):
        for n in sizes[k::3] + sizes:
            if not np.array_equal(model.predict_proba(X[:n]), expected[n]):
                wrong.append(n)

    run_threads(work, 4)
    assert wrong == []


def test_models_trained_in_threads_equal_models_trained_one_at_a_time(data):
    X, y = data
    settings = [dict(random_state=s, alpha=a) for s, a in ((0, 1e-4), (1, 1e-3), (2, 0.0),
                                                           (3, 1e-2))]
    serial = [fit(X, y, **s).coefs_ for s in settings]
    threaded = [None] * len(settings)

    def work(k):
        threaded[k] = fit(X, y, **settings[k]).coefs_

    run_threads(work, len(settings))
    for one, other in zip(serial, threaded):
        for a, b in zip(one, other):
            np.testing.assert_array_equal(a, b)


def test_grid_search_with_the_threading_backend_equals_serial(data):
    joblib = pytest.importorskip("joblib")
    model_selection = pytest.importorskip("sklearn.model_selection")
    X, y = data
    grid = {"alpha": [1e-4, 1e-2], "hidden_layer_sizes": [(16,), (32,)]}
    estimator = gpumlp.MLPClassifier(max_iter=3, batch_size=64, random_state=0,
                                     backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        serial = model_selection.GridSearchCV(estimator, grid, cv=2, n_jobs=1).fit(X, y)
        with joblib.parallel_backend("threading", n_jobs=4):
            threaded = model_selection.GridSearchCV(estimator, grid, cv=2, n_jobs=4).fit(X, y)
    np.testing.assert_array_equal(serial.cv_results_["mean_test_score"],
                                  threaded.cv_results_["mean_test_score"])


def test_many_batch_sizes_keep_the_pickle_and_memory_bounded(data):
    X, y = data
    model = fit(X, y, hidden_layer_sizes=(128, 128))
    before = len(pickle.dumps(model))
    model.predict_proba(X[:1])
    tracemalloc.start()
    try:
        for n in range(1, 801, 3):
            model.predict_proba(np.resize(X, (n, X.shape[1])))
        _, peak = tracemalloc.get_traced_memory()
        retained, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    after = len(pickle.dumps(model))
    # One call at 800 rows needs about 1.4 MB; keeping a workspace per size would be ~170 MB.
    assert peak < 16e6, peak
    assert retained < 2e6, retained
    assert after == before


def test_pickled_model_holds_no_training_buffers(data):
    X, y = data
    model = fit(X, y, hidden_layer_sizes=(128, 128), batch_size=1000)
    params_bytes = model.network_.params.nbytes
    # parameters + optimizer state (Adam m, v); no gradients, views, copies or batch buffers
    assert len(pickle.dumps(model)) < 3 * params_bytes + 100_000
    clone = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(clone.predict_proba(X), model.predict_proba(X))
    assert all(np.shares_memory(w, clone.network_.params) for w in clone.coefs_)


def test_partial_fit_on_changing_lengths_keeps_two_buffer_sets(data):
    X, y = data
    model = gpumlp.MLPClassifier((16,), batch_size=50, random_state=0, backend="numpy")
    for n in range(101, 400, 13):
        model.partial_fit(X[:n], y[:n], classes=np.unique(y))
    assert len(model._trainer_._step_buffers) <= 2


def test_memory_mapped_round_trip_predicts(tmp_path, data):
    joblib = pytest.importorskip("joblib")
    X, y = data
    model = fit(X, y, hidden_layer_sizes=(512,))  # over 1 MB: joblib memory-maps it
    expected = model.predict_proba(X)  # a model that caches buffers would pickle them now
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    loaded = joblib.load(path, mmap_mode="r")
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    loaded.partial_fit(X, y)  # training state must be writable too
    model.partial_fit(X, y)
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))


def test_scratch_pool_is_per_thread_and_bounded():
    pool = ScratchPool(lambda shape, dtype: np.empty(shape, dtype), max_entries=3,
                       max_bytes=10_000)
    mine = pool.get("a", (10,), "float64")
    assert pool.get("a", (10,), "float64") is mine
    other = []
    run_threads(lambda k: other.append(pool.get("a", (10,), "float64")), 1)
    assert other[0] is not mine
    for n in range(1, 20):
        pool.get("b", (n,), "float64")
    assert pool.nbytes() <= 10_000 and len(pool._cache()) <= 3
    assert pool.get("big", (5000,), "float64").nbytes > pool.nbytes()  # too big to keep


@pytest.mark.parametrize("sizes", [[3, 5, 2], [784, 10], [7, 9, 11, 1]])
def test_every_parameter_view_is_aligned_and_the_packed_order_round_trips(sizes):
    net = Network(sizes, backend="numpy", seed=0)
    for view in net.weights + net.biases + net.weight_grads + net.bias_grads:
        base = net.params if any(view is v for v in net.weights + net.biases) else net.grads
        offset = view.ctypes.data - base.ctypes.data
        assert offset % (ALIGN_ELEMENTS * base.itemsize) == 0
    packed = np.arange(net.n_params, dtype=np.float32)
    net.set_flat_params(packed)
    np.testing.assert_array_equal(net.get_flat_params(), packed)
    position = 0
    for w, b in zip(net.weights, net.biases):
        np.testing.assert_array_equal(w.ravel(), packed[position:position + w.size])
        position += w.size
        np.testing.assert_array_equal(b, packed[position:position + b.size])
        position += b.size
    assert np.count_nonzero(net.params) == net.n_params - 1  # the gaps hold zeros
