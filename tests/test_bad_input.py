"""Bad input: every way a user can hand the estimators something wrong gets a clear error.

Errors are ``ValueError``/``TypeError`` whose message names the argument and the offending
value; a missing backend is a ``BackendUnavailable`` saying why; a diverging run stops with a
``DivergenceWarning`` and keeps the weights of its last finite epoch.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

import gpumlp
from gpumlp import (BackendUnavailable, ConvergenceWarning, DivergenceWarning, MLPClassifier,
                    MLPRegressor, Perceptron)

pytestmark = pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")


def classifier(**params) -> MLPClassifier:
    options = dict(hidden_layer_sizes=(8,), backend="numpy", random_state=0, max_iter=3)
    options.update(params)
    return MLPClassifier(**options)


def regressor(**params) -> MLPRegressor:
    options = dict(hidden_layer_sizes=(8,), backend="numpy", random_state=0, max_iter=3)
    options.update(params)
    return MLPRegressor(**options)


def weights(model) -> list[np.ndarray]:
    return [np.array(a, copy=True) for a in model.coefs_ + model.intercepts_]


@pytest.fixture
def fitted(binary_data):
    X, y = binary_data
    return classifier().fit(X, y)


# -------------------------------------------------------------------------------- X values
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_X_at_fit(binary_data, bad):
    X, y = binary_data
    X = X.copy()
    X[5, 2] = bad
    for model in (classifier(), regressor(), Perceptron()):
        with pytest.raises(ValueError, match=r"X contains NaN or infinity"):
            model.fit(X, y)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_X_at_predict(binary_data, fitted, bad):
    X, y = binary_data
    X = X.copy()
    X[0, 0] = bad
    for method in (fitted.predict, fitted.predict_proba, fitted.predict_log_proba):
        with pytest.raises(ValueError, match=r"X contains NaN or infinity"):
            method(X)
    with pytest.raises(ValueError, match=r"X contains NaN or infinity"):
        regressor().fit(X[1:], y[1:].astype(float)).predict(X)
    with pytest.raises(ValueError, match=r"X contains NaN or infinity"):
        Perceptron().fit(X[1:], y[1:]).predict(X)


def test_non_finite_regression_target(regression_data):
    X, y = regression_data
    y = y.copy()
    y[3] = np.nan
    with pytest.raises(ValueError, match=r"y contains NaN"):
        regressor().fit(X, y)


# --------------------------------------------------------------------------------- shapes
def re_shape(shape: tuple) -> str:
    """A pattern matching how ``shape`` is printed, e.g. ``(20,)`` or ``(20, 4, 1)``."""
    return r"\(" + r", ?".join(str(s) for s in shape) + r",?\)"


@pytest.mark.parametrize("shape", [(20,), (20, 4, 1), ()])
def test_X_must_be_2d_at_fit(shape):
    X = np.ones(shape, dtype=np.float32)
    with pytest.raises(ValueError, match=r"X must be 2-D.*" + re_shape(shape)):
        classifier().fit(X, np.arange(20) % 2)


def test_X_must_be_2d_at_predict(binary_data, fitted):
    X, _ = binary_data
    with pytest.raises(ValueError, match=r"X must be 2-D.*\(4,\).*reshape\(1, -1\)"):
        fitted.predict(X[0])


def test_wrong_feature_count_at_predict(binary_data, fitted):
    X, y = binary_data
    expected = r"X has {} features, but {} is expecting 4 features as input"
    for method in (fitted.predict, fitted.predict_proba):
        with pytest.raises(ValueError, match=expected.format(3, "MLPClassifier")):
            method(X[:, :3])
    with pytest.raises(ValueError, match=expected.format(5, "MLPClassifier")):
        fitted.predict(np.hstack([X, X[:, :1]]))
    with pytest.raises(ValueError, match=expected.format(3, "Perceptron")):
        Perceptron().fit(X, y).predict(X[:, :3])


@pytest.mark.parametrize("shape", [(0, 4), (10, 0)])
def test_empty_X(shape, fitted):
    X = np.empty(shape, dtype=np.float32)
    with pytest.raises(ValueError, match=r"X is empty.*" + re_shape(shape)):
        classifier().fit(X, np.zeros(shape[0]))
    with pytest.raises(ValueError, match=r"X is empty"):
        regressor().fit(X, np.zeros(shape[0]))
    with pytest.raises(ValueError, match=r"X is empty"):
        fitted.predict(np.empty((0, 4)))


# ------------------------------------------------------------------------- non-numeric X
@pytest.mark.parametrize("X, dtype", [
    (np.array([["a", "b"], ["c", "d"]] * 10), "<U1"),
    (np.array([[1.0, "b"], [None, 2.0]] * 10, dtype=object), "object"),
    (np.array([[1.0, {"a": 1}], [3.0, 2.0]] * 10, dtype=object), "object"),
])
def test_non_numeric_X(X, dtype):
    y = np.arange(20) % 2
    for model in (classifier(), regressor(), Perceptron()):
        with pytest.raises(TypeError, match=rf"X must be numeric.*{dtype}"):
            model.fit(X, y)


def test_numbers_held_as_objects_are_numeric():
    X = np.random.default_rng(0).normal(size=(20, 2))
    y = np.arange(20) % 2
    for model in (classifier(), regressor(), Perceptron(random_state=0)):
        expected = model.fit(X, y).predict(X)
        np.testing.assert_array_equal(model.fit(X.astype(object), y).predict(X), expected)


def test_complex_X_is_refused():
    X = np.ones((20, 2), dtype=complex)
    for model in (classifier(), regressor(), Perceptron()):
        with pytest.raises(ValueError, match=r"Complex data not supported.*complex128"):
            model.fit(X, np.arange(20) % 2)


def test_ragged_X():
    with pytest.raises(TypeError, match=r"X could not be converted"):
        classifier().fit([[1.0, 2.0], [3.0]], [0, 1])


def test_non_numeric_regression_target(regression_data):
    X, _ = regression_data
    with pytest.raises(TypeError, match=r"y must be numeric.*<U"):
        regressor().fit(X, np.array(["a"] * len(X)))


# ------------------------------------------------------------------------------- targets
def test_y_length_mismatch(binary_data):
    X, y = binary_data
    for model in (classifier(), regressor(), Perceptron()):
        with pytest.raises(ValueError, match=rf"y has {len(y) - 1} samples but X has {len(y)}"):
            model.fit(X, y[:-1])
    with pytest.raises(ValueError, match=r"y has 2 samples but X has 120"):
        classifier().partial_fit(X, y[:2], classes=[0, 1])
    for model in (classifier().fit(X, y), regressor().fit(X, y), Perceptron().fit(X, y)):
        with pytest.raises(ValueError, match=r"y has 1 samples but X has 120"):
            model.score(X, y[:1])  # would broadcast silently without the check


def test_y_with_too_many_dimensions(binary_data):
    X, y = binary_data
    with pytest.raises(ValueError, match=r"y must be 1-D.*\(120, 1, 1\)"):
        classifier().fit(X, y[:, None, None])


def test_multilabel_y_must_be_indicator(binary_data):
    X, y = binary_data
    with pytest.raises(ValueError, match=r"0/1 indicator"):
        classifier().fit(X, np.stack([y, 2 * y], axis=1))


def test_partial_fit_labels_outside_classes(binary_data):
    X, y = binary_data
    with pytest.raises(ValueError, match=r"labels \[7\] not among the known classes \[0, 1\]"):
        classifier().partial_fit(X, np.where(y == 1, 7, 0), classes=[0, 1])
    clf = classifier()
    clf.partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match=r"\[5\].*\[0, 1\]"):
        clf.partial_fit(X, np.where(y == 1, 5, 0))
    p = Perceptron()
    p.partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match=r"\[5\].*\[0, 1\]"):
        p.partial_fit(X, np.where(y == 1, 5, 0))


def test_warm_refit_with_unseen_label_is_refused(binary_data):
    X, y = binary_data
    clf = classifier(warm_start=True).fit(X, y)
    with pytest.raises(ValueError, match=r"same classes.*\[0, 1\].*\[0, 2\]"):
        clf.fit(X, np.where(y == 1, 2, 0))


def test_single_class(binary_data):
    X, _ = binary_data
    y = np.full(len(X), 3)
    with pytest.raises(ValueError, match=r"only one class \[3\].*at least two"):
        classifier().fit(X, y)
    with pytest.raises(ValueError, match=r"only one class \[3\].*at least two"):
        Perceptron().fit(X, y)
    with pytest.raises(ValueError, match=r"only one class"):
        classifier().partial_fit(X, y, classes=[3])


def test_partial_fit_requires_classes_first(binary_data):
    X, y = binary_data
    for model in (classifier(), Perceptron()):
        with pytest.raises(ValueError, match=r"classes must be given"):
            model.partial_fit(X, y)


def test_unfitted_models_say_so(binary_data):
    X, y = binary_data
    for call in (lambda: classifier().predict(X), lambda: classifier().score(X, y),
                 lambda: regressor().predict(X), lambda: regressor().score(X, y),
                 lambda: Perceptron().predict(X)):
        with pytest.raises(AttributeError, match=r"not fitted"):
            call()


# ------------------------------------------------------------------------ hyper-parameters
INVALID = [
    ("hidden_layer_sizes", 0), ("hidden_layer_sizes", -3), ("hidden_layer_sizes", (16, -1)),
    ("hidden_layer_sizes", (16, 0)), ("hidden_layer_sizes", "abc"),
    ("hidden_layer_sizes", ("16", "8")), ("hidden_layer_sizes", 2.5),
    ("hidden_layer_sizes", None), ("activation", "bogus"), ("activation", "hard_limit"),
    ("solver", "newton"), ("alpha", -1.0), ("batch_size", 0), ("batch_size", "big"),
    ("learning_rate", "bogus"), ("learning_rate_init", 0), ("learning_rate_init", -0.1),
    ("max_iter", 0), ("max_iter", 2.5), ("momentum", 1.5), ("validation_fraction", 0),
    ("validation_fraction", 1), ("beta_1", 1.0), ("beta_2", 1.0), ("epsilon", 0),
    ("n_iter_no_change", 0), ("dropout", 1.0), ("dropout", -0.1), ("dtype", "int32"),
    ("dtype", "bogus"), ("backend", "tpu"), ("tol", float("nan")), ("tol", -1.0),
    ("power_t", -0.5), ("random_state", -1), ("random_state", "seed"),
]


def mentions(message: str, value) -> bool:
    return repr(value) in message or str(value) in message


@pytest.mark.parametrize("estimator", [MLPClassifier, MLPRegressor])
@pytest.mark.parametrize("name, value", INVALID, ids=[f"{n}={v!r}" for n, v in INVALID])
def test_invalid_hyperparameter(binary_data, estimator, name, value):
    X, y = binary_data
    options = dict(hidden_layer_sizes=(4,), backend="numpy", max_iter=2, random_state=0)
    options[name] = value
    model = estimator(**options)  # construction never validates (scikit-learn convention)
    with pytest.raises((ValueError, TypeError)) as info:
        model.fit(X, y)
    message = str(info.value)
    assert name in message, message
    assert mentions(message, value), message


@pytest.mark.parametrize("name, value", [("eta0", 0), ("eta0", -1.0), ("max_iter", 0)])
def test_invalid_perceptron_hyperparameter(binary_data, name, value):
    X, y = binary_data
    with pytest.raises((ValueError, TypeError)) as info:
        Perceptron(**{name: value}).fit(X, y)
    assert name in str(info.value) and mentions(str(info.value), value)


def test_invalid_hyperparameter_in_partial_fit(binary_data):
    X, y = binary_data
    with pytest.raises(ValueError, match=r"momentum=1.5"):
        classifier(momentum=1.5).partial_fit(X, y, classes=[0, 1])


def test_validation_fraction_leaving_nothing_to_train(binary_data):
    X, y = binary_data
    with pytest.raises(ValueError, match=r"validation_fraction"):
        classifier(early_stopping=True, validation_fraction=0.9999).fit(X[:4], y[:4])


# -------------------------------------------------------------------------------- backend
@pytest.fixture
def no_cupy(monkeypatch):
    """Make ``import cupy`` fail and forget any backend instance made earlier."""
    import gpumlp.backends as backends

    monkeypatch.setitem(sys.modules, "cupy", None)
    monkeypatch.setattr(backends, "_instances", {})


def test_cupy_backend_without_cupy(no_cupy, binary_data):
    X, y = binary_data
    with pytest.raises(BackendUnavailable, match=r"backend='cupy' is unavailable.*CuPy"):
        gpumlp.get_backend("cupy")
    with pytest.raises(BackendUnavailable, match=r"not importable.*install"):
        MLPClassifier((4,), backend="cupy", max_iter=1).fit(X, y)
    reason = gpumlp.available_backends()["cupy"]
    assert isinstance(reason, str) and "CuPy" in reason
    # "auto" quietly falls back to NumPy
    assert gpumlp.get_backend("auto").name == "numpy"
    assert MLPClassifier((4,), backend="auto", max_iter=1).fit(X, y).network_.backend.name \
        == "numpy"


def test_unknown_backend_name():
    with pytest.raises(ValueError, match=r"backend='tpu'.*auto.*numpy.*cupy"):
        gpumlp.get_backend("tpu")


# ----------------------------------------------------------------------------- divergence
def _diverge(model, X, y):
    """Fit with a callback that snapshots the weights after every finished epoch."""
    snapshots = []
    model.set_params(callbacks=[lambda epoch, history: snapshots.append(weights(model))])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X, y)
    categories = [w.category for w in caught]
    return snapshots, categories


@pytest.mark.parametrize("make, target", [
    (lambda: classifier(solver="sgd", learning_rate_init=1e6, max_iter=50), "label"),
    (lambda: regressor(solver="sgd", learning_rate_init=1.0, max_iter=50), "value"),
])
def test_divergence_keeps_last_finite_epoch(make, target):
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(100, 3)) * 1000).astype(np.float32)  # unscaled on purpose
    y = (X[:, 0] > 0).astype(int) if target == "label" else X[:, 0] * 10
    model = make()
    snapshots, categories = _diverge(model, X, y)
    assert DivergenceWarning in categories
    assert ConvergenceWarning not in categories
    assert model.n_iter_ < model.max_iter  # stopped early
    assert len(snapshots) == model.n_iter_ == len(model.loss_curve_) >= 1
    assert all(np.isfinite(model.loss_curve_))
    final = weights(model)
    assert all(np.all(np.isfinite(w)) for w in final)
    for now, last_good in zip(final, snapshots[-1]):
        np.testing.assert_array_equal(now, last_good)


def test_divergence_in_the_first_epoch_raises_and_leaves_the_model_unfitted(binary_data):
    X, y = binary_data
    # Several steps per epoch: the weights overflow within the first one.
    model = classifier(alpha=1e30, solver="sgd", learning_rate_init=1.0, max_iter=20,
                       batch_size=10)
    with pytest.raises(gpumlp.DivergenceError, match="diverged in its first epoch"):
        model.fit(X, y)
    assert not hasattr(model, "network_")
    with pytest.raises(AttributeError, match="not fitted"):
        model.predict(X)


def test_divergence_in_the_first_epoch_of_the_trainer_keeps_the_initial_weights(binary_data):
    X, y = binary_data
    net = gpumlp.Network([X.shape[1], 8, 1], activation="relu", loss="sigmoid_bce",
                         backend="numpy", seed=0)
    initial = net.get_flat_params()
    trainer = gpumlp.Trainer(net, gpumlp.SGD(net.backend, net.params, 1.0), alpha=1e30,
                             batch_size=10)
    with pytest.raises(gpumlp.DivergenceError):
        trainer.fit(X.astype(np.float32), y[:, None].astype(np.float32), 5)
    np.testing.assert_array_equal(net.get_flat_params(), initial)
    assert trainer.history.n_iter == 0


def test_divergence_message_says_what_happened(binary_data):
    X, y = binary_data
    model = classifier(solver="sgd", learning_rate_init=1e6, max_iter=50)
    with pytest.warns(DivergenceWarning, match=r"diverged at epoch \d+.*last finite epoch"):
        model.fit(X, y)


def test_overflow_in_the_last_step_of_an_epoch_leaves_finite_weights():
    """Full-batch SGD: the epoch's loss is measured before its only update, so it is finite
    even when that update overflows float32. The weights kept must still be finite."""
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(100, 3)) * 1e3).astype(np.float32)
    model = regressor(solver="sgd", learning_rate_init=1e35, batch_size=100, alpha=0.0,
                      momentum=0.0, max_iter=20)
    with pytest.raises(gpumlp.DivergenceError):  # the first epoch's update overflows
        model.fit(X, X[:, 0])
    net = gpumlp.Network([3, 100, 1], loss="squared_error", backend="numpy", seed=0)
    trainer = gpumlp.Trainer(net, gpumlp.SGD(net.backend, net.params, 1e35, momentum=0.0),
                             batch_size=100)
    with pytest.raises(gpumlp.DivergenceError):
        trainer.fit(X, X[:, :1], 20)
    assert np.all(np.isfinite(net.params))
