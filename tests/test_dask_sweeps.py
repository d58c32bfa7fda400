"""Hyper-parameter sweeps over gpumlp estimators on a Dask distributed cluster.

scikit-learn's searches run their fits through joblib; under
``joblib.parallel_config(backend="dask")`` joblib sends them to the cluster's workers, which
receive pickled estimators and data. The cluster here is real: a scheduler and two worker
processes talking TCP on the loopback interface.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

distributed = pytest.importorskip(
    "dask.distributed", reason="dask.distributed is not installed (pip install "
                               "'dask[distributed]'; the test extra has it)")
joblib = pytest.importorskip("joblib")
model_selection = pytest.importorskip("sklearn.model_selection")
from sklearn.base import clone  # noqa: E402

import gpumlp  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        yield client


def two_ways(search, X, y, client):
    """``search`` fitted with n_jobs=1 in this process, and with n_jobs=-1 on the cluster;
    also the workers that ran the cluster's tasks."""
    serial = clone(search).set_params(n_jobs=1)
    distributed_search = clone(search).set_params(n_jobs=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a few epochs on purpose
        serial.fit(X, y)
        with distributed.get_task_stream(client) as tasks, \
                joblib.parallel_config(backend="dask"):
            distributed_search.fit(X, y)
    return serial, distributed_search, {task["worker"] for task in tasks.data}


def blobs(n=150, d=10, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 2, (classes, d))
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


def test_grid_search_on_dask_gives_the_serial_results(client):
    X, y = blobs()
    search = model_selection.GridSearchCV(
        gpumlp.MLPClassifier(max_iter=15, random_state=0, backend="numpy"),
        {"hidden_layer_sizes": [(8,), (16,)], "alpha": [1e-4, 1e-1]}, cv=3)
    serial, dask_search, workers = two_ways(search, X, y, client)
    assert workers and workers <= set(client.scheduler_info()["workers"])
    assert dask_search.cv_results_["params"] == serial.cv_results_["params"]
    for split in range(3):  # accuracies: counts of equal predictions, compared exactly
        key = f"split{split}_test_score"
        np.testing.assert_array_equal(dask_search.cv_results_[key], serial.cv_results_[key])
    assert dask_search.best_params_ == serial.best_params_
    np.testing.assert_array_equal(dask_search.predict(X), serial.predict(X))


def test_randomized_search_on_dask_gives_the_serial_results(client):
    X, labels = blobs(seed=1)
    y = X[:, :3].sum(axis=1) + 0.1 * labels
    search = model_selection.RandomizedSearchCV(
        gpumlp.MLPRegressor(max_iter=15, random_state=0, backend="numpy"),
        {"hidden_layer_sizes": [(4,), (8,), (16,)], "alpha": [1e-5, 1e-3, 1e-1],
         "learning_rate_init": [1e-3, 1e-2]}, n_iter=4, cv=3, random_state=0)
    serial, dask_search, workers = two_ways(search, X, y, client)
    assert workers
    assert dask_search.cv_results_["params"] == serial.cv_results_["params"]
    # R2 of float32 predictions: the workers' BLAS runs one thread (Dask sets
    # OMP_NUM_THREADS=1 in them), so allow float32 rounding, no more.
    np.testing.assert_allclose(dask_search.cv_results_["mean_test_score"],
                               serial.cv_results_["mean_test_score"], rtol=1e-5)
    assert dask_search.best_params_ == serial.best_params_
