"""``sample_weight`` in fit and partial_fit, and sparse ``X``: against duplicated rows and
dense input.

Integer weights must train exactly as the rows repeated that many times (zero: removed), when
the batch holds the whole data (so both runs see the same batches) and in float64 (so the
sums agree to rounding).
"""

from __future__ import annotations

import numpy as np
import pytest

import gpumlp
from gpumlp.backends import get_backend


@pytest.fixture
def weighted_data():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(40, 5))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 1)
    weights = rng.integers(0, 4, size=40)
    for label in (0, 1, 2):  # every class keeps some weight
        weights[np.flatnonzero(y == label)[0]] += 1
    return X, y, weights


def repeated(X, y, weights):
    return np.repeat(X, weights, axis=0), np.repeat(y, weights, axis=0)


def settings(**extra):
    options = dict(hidden_layer_sizes=(8,), dtype="float64", backend="numpy", random_state=0,
                   max_iter=30, batch_size=1000, tol=0.0)
    options.update(extra)
    return options


@pytest.mark.filterwarnings("ignore::UserWarning")  # batch_size > n is clipped
@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
def test_integer_weights_equal_repeated_rows(weighted_data, solver):
    X, y, weights = weighted_data
    X_rep, y_rep = repeated(X, y, weights)
    for cls, target, rep_target in ((gpumlp.MLPClassifier, y, y_rep),
                                    (gpumlp.MLPRegressor, X[:, 0] * 2, X_rep[:, 0] * 2)):
        options = settings(solver=solver, alpha=0.01)
        weighted = cls(**options).fit(X, target, sample_weight=weights)
        duplicated = cls(**options).fit(X_rep, rep_target)
        for a, b in zip(weighted.coefs_ + weighted.intercepts_,
                        duplicated.coefs_ + duplicated.intercepts_):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
        if solver != "lbfgs":  # the reported loss too: L2 over the weight sum
            np.testing.assert_allclose(weighted.loss_curve_, duplicated.loss_curve_, rtol=1e-10)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_weights_in_partial_fit(weighted_data):
    X, y, weights = weighted_data
    X_rep, y_rep = repeated(X, y, weights)
    weighted = gpumlp.MLPClassifier(**settings(solver="sgd"))
    duplicated = gpumlp.MLPClassifier(**settings(solver="sgd"))
    for _ in range(3):
        weighted.partial_fit(X, y, sample_weight=weights, classes=[0, 1, 2])
        duplicated.partial_fit(X_rep, y_rep, classes=[0, 1, 2])
    np.testing.assert_allclose(weighted.predict_proba(X), duplicated.predict_proba(X),
                               rtol=1e-9, atol=1e-12)


def test_weights_with_minibatches_scale_each_batch(weighted_data):
    """Without L2, scaling all weights by a constant changes nothing (each batch's loss is a
    weighted mean).  (The L2 term is divided by the batch's weight sum, as in scikit-learn,
    so with alpha > 0 the scale matters.)"""
    X, y, weights = weighted_data
    options = settings(solver="adam", batch_size=8, alpha=0.0)
    one = gpumlp.MLPClassifier(**options).fit(X, y, sample_weight=weights)
    ten = gpumlp.MLPClassifier(**options).fit(X, y, sample_weight=10.0 * weights)
    np.testing.assert_allclose(one.loss_curve_, ten.loss_curve_, rtol=1e-9)
    np.testing.assert_allclose(one.predict_proba(X), ten.predict_proba(X), rtol=1e-9)


def test_unit_weights_change_nothing(weighted_data):
    X, y, _ = weighted_data
    options = settings(solver="adam", batch_size=8, dtype="float32")
    plain = gpumlp.MLPClassifier(**options).fit(X, y)
    unit = gpumlp.MLPClassifier(**options).fit(X, y, sample_weight=np.ones(len(y)))
    np.testing.assert_allclose(plain.loss_curve_, unit.loss_curve_, rtol=1e-5)
    np.testing.assert_allclose(plain.predict_proba(X), unit.predict_proba(X), atol=1e-5)


@pytest.mark.parametrize("bad, message", [
    (np.ones(39), r"sample_weight must have shape \(40,\)"),
    (np.ones((40, 2)), r"sample_weight must have shape \(40,\)"),
    (-np.ones(40), r"sample_weight has negative values"),
    (np.zeros(40), r"sample_weight is all zero"),
    (np.full(40, np.nan), r"sample_weight contains NaN"),
])
def test_bad_sample_weight(weighted_data, bad, message):
    X, y, _ = weighted_data
    for model in (gpumlp.MLPClassifier(**settings()), gpumlp.MLPRegressor(**settings()),
                  gpumlp.Perceptron()):
        with pytest.raises(ValueError, match=message):
            model.fit(X, y, sample_weight=bad)


def test_sample_weighted_loss_operation():
    """The backend operation against its definition, for each loss."""
    rng = np.random.default_rng(0)
    backend = get_backend("numpy")
    z = rng.normal(size=(6, 3))
    weights = np.array([0.0, 1.0, 2.0, 0.5, 3.0, 1.5])
    targets = {"softmax_xent": np.eye(3)[[0, 1, 2, 1, 0, 2]],
               "sigmoid_bce": (rng.random((6, 3)) > 0.5).astype(float),
               "squared_error": rng.normal(size=(6, 3))}
    for loss, t in targets.items():
        if loss == "softmax_xent":
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            per_row, grad = -(t * np.log(p)).sum(axis=1), p - t
        elif loss == "sigmoid_bce":
            p = 1 / (1 + np.exp(-z))
            per_row = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum(axis=1)
            grad = p - t
        else:
            per_row, grad = 0.5 * ((z - t) ** 2).sum(axis=1), z - t
        h_out = np.empty_like(z)
        value = backend.sample_weighted_loss(loss, z, t, h_out, weights, weights.sum())
        assert float(value) == pytest.approx(weights @ per_row / weights.sum(), rel=1e-12)
        np.testing.assert_allclose(h_out, weights[:, None] * grad / weights.sum(), rtol=1e-12)


# ------------------------------------------------------------------------------ sparse X
@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_sparse_X_trains_and_predicts_as_dense(solver):
    sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(3)
    X = rng.normal(size=(90, 12)) * (rng.random((90, 12)) < 0.3)  # mostly zeros
    y = (X.sum(axis=1) > 0).astype(int)
    options = settings(solver=solver, batch_size=16, max_iter=10)
    dense = gpumlp.MLPClassifier(**options).fit(X, y)
    for container in (sparse.csr_matrix, sparse.csc_matrix, sparse.csr_array):
        model = gpumlp.MLPClassifier(**options).fit(container(X), y)
        np.testing.assert_allclose(model.predict_proba(container(X)), dense.predict_proba(X),
                                   rtol=1e-10, atol=1e-12)
    regressor = gpumlp.MLPRegressor(**options).fit(sparse.csr_matrix(X), X[:, 0])
    np.testing.assert_allclose(regressor.predict(sparse.csr_matrix(X)),
                               gpumlp.MLPRegressor(**options).fit(X, X[:, 0]).predict(X),
                               rtol=1e-10, atol=1e-12)


def test_sparse_X_with_early_stopping_and_perceptron():
    sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(4)
    X = rng.normal(size=(80, 6)) * (rng.random((80, 6)) < 0.5)
    y = (X[:, 0] > 0).astype(int)
    model = gpumlp.MLPClassifier(**settings(early_stopping=True, max_iter=5, batch_size=16))
    model.fit(sparse.csr_matrix(X), y)
    assert len(model.validation_scores_) == model.n_iter_
    # sparse X: scikit-learn's Perceptron damps the intercept's updates (x0.01); so does ours
    SklearnPerceptron = pytest.importorskip("sklearn.linear_model").Perceptron
    ours = gpumlp.Perceptron(max_iter=20).fit(sparse.csr_matrix(X), y)
    theirs = SklearnPerceptron(max_iter=20).fit(sparse.csr_matrix(X), y)
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-12, atol=0)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-12, atol=0)


def test_sparse_X_with_nan_is_refused():
    sparse = pytest.importorskip("scipy.sparse")
    X = sparse.csr_matrix(np.array([[0.0, np.nan], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="X contains NaN"):
        gpumlp.MLPClassifier(**settings()).fit(X, [0, 1])
