"""Behaviour of the scikit-learn-compatible estimators: MLPClassifier, MLPRegressor, Perceptron.

Everything runs on tiny synthetic data (see conftest.py) with ``backend="numpy"`` and few
epochs; expected values are derived inside each test (from the data, from the model's own
outputs, or from an invariant), never copied from an earlier run.
"""

from __future__ import annotations

import copy
import inspect
import pickle
import warnings

import numpy as np
import pytest

import gpumlp
from gpumlp import ConvergenceWarning, MLPClassifier, MLPRegressor, Perceptron

pytestmark = pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")


def classifier(**params) -> MLPClassifier:
    options = dict(hidden_layer_sizes=(16,), backend="numpy", random_state=0,
                   learning_rate_init=0.01, max_iter=40)
    options.update(params)
    return MLPClassifier(**options)


def regressor(**params) -> MLPRegressor:
    options = dict(hidden_layer_sizes=(16,), backend="numpy", random_state=0,
                   learning_rate_init=0.01, max_iter=150)
    options.update(params)
    return MLPRegressor(**options)


def flat(model) -> np.ndarray:
    """All weights and biases of a fitted MLP as one host vector (a copy)."""
    return np.concatenate([np.ravel(a) for a in model.coefs_ + model.intercepts_]).copy()


def r2(y: np.ndarray, predicted: np.ndarray) -> float:
    y, predicted = y.reshape(len(y), -1), predicted.reshape(len(y), -1)
    residual = ((y - predicted) ** 2).sum(axis=0)
    total = ((y - y.mean(axis=0)) ** 2).sum(axis=0)
    return float(np.mean(1 - residual / total))


# ------------------------------------------------------------------------- classification
def test_multiclass_predict_proba_and_score(multiclass_data):
    X, y = multiclass_data
    clf = classifier().fit(X, y)
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-5)
    predicted = clf.predict(X)
    assert predicted.shape == (len(X),)
    np.testing.assert_array_equal(predicted, clf.classes_[proba.argmax(axis=1)])
    np.testing.assert_allclose(clf.predict_log_proba(X), np.log(proba), rtol=1e-5, atol=1e-6)
    assert clf.score(X, y) == pytest.approx(np.mean(predicted == y))
    assert clf.score(X, y) > 0.9
    assert clf.out_activation_ == "softmax"
    # array-likes work and give NumPy results
    assert isinstance(clf.predict(X[:3].tolist()), np.ndarray)


def test_binary_gives_two_probability_columns(binary_data):
    X, y = binary_data
    clf = classifier().fit(X, y)
    assert clf.out_activation_ == "logistic"
    assert clf.coefs_[-1].shape == (16, 1)  # one sigmoid output unit
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(clf.predict(X), clf.classes_[proba.argmax(axis=1)])
    assert np.all(np.isfinite(clf.predict_log_proba(X)))
    assert clf.score(X, y) > 0.9


@pytest.mark.parametrize("names", [["cat", "dog", "emu"], ["no", "yes"]])
def test_string_labels_round_trip(names, make_blobs):
    X, index = make_blobs(40, len(names), 4, seed=5)
    y = np.array(names)[index]
    clf = classifier().fit(X, y)
    np.testing.assert_array_equal(clf.classes_, sorted(names))
    predicted = clf.predict(X)
    assert predicted.dtype.kind == "U"
    assert set(predicted) <= set(names)
    assert clf.score(X, y) > 0.9
    assert clf.predict_proba(X).shape == (len(X), len(names))


def test_non_contiguous_integer_labels(multiclass_data):
    X, index = multiclass_data
    labels = np.array([-3, 7, 42])
    y = labels[index]
    clf = classifier().fit(X, y)
    np.testing.assert_array_equal(clf.classes_, labels)
    predicted = clf.predict(X)
    assert set(np.unique(predicted)) <= set(labels.tolist())
    assert np.mean(predicted == y) > 0.9
    assert clf.predict_proba(X).shape == (len(X), 3)


def test_multilabel_indicator_targets():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(200, 4)).astype(np.float32)
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 0] + X[:, 2] > 0], axis=1).astype(int)
    clf = classifier(hidden_layer_sizes=(32,), max_iter=150).fit(X, Y)
    assert clf.out_activation_ == "logistic"
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    predicted = clf.predict(X)
    assert predicted.shape == Y.shape
    assert set(np.unique(predicted)) <= {0, 1}
    proba = clf.predict_proba(X)
    assert proba.shape == Y.shape and np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_array_equal(predicted, (proba > 0.5).astype(int))
    subset_accuracy = np.mean((predicted == Y).all(axis=1))
    assert clf.score(X, Y) == pytest.approx(subset_accuracy)
    assert np.mean(predicted == Y) > 0.85  # per-label accuracy on a nearly linear problem


# ------------------------------------------------------------------------------ regression
def test_regressor_1d_target(regression_data):
    X, y = regression_data
    reg = regressor().fit(X, y)
    assert reg.out_activation_ == "identity"
    predicted = reg.predict(X)
    assert predicted.shape == (len(X),)
    assert reg.score(X, y) == pytest.approx(r2(y, predicted), rel=1e-6)
    assert reg.score(X, y) > 0.9
    assert reg.coefs_[-1].shape == (16, 1)


def test_regressor_2d_target(regression_data):
    X, y = regression_data
    Y = np.stack([y, X[:, 0] - X[:, 2]], axis=1)
    reg = regressor().fit(X, Y)
    predicted = reg.predict(X)
    assert predicted.shape == (len(X), 2)
    assert reg.score(X, Y) == pytest.approx(r2(Y, predicted), rel=1e-6)
    assert reg.score(X, Y) > 0.9


# --------------------------------------------------------------------------- fitted state
def test_fitted_attributes(multiclass_data):
    X, y = multiclass_data
    clf = classifier(hidden_layer_sizes=(7, 5), max_iter=12).fit(X, y)
    assert [w.shape for w in clf.coefs_] == [(5, 7), (7, 5), (5, 3)]
    assert [b.shape for b in clf.intercepts_] == [(7,), (5,), (3,)]
    assert clf.n_iter_ == 12
    assert len(clf.loss_curve_) == clf.n_iter_
    assert all(np.isfinite(clf.loss_curve_))
    assert clf.best_loss_ == min(clf.loss_curve_)
    assert clf.n_features_in_ == X.shape[1]
    np.testing.assert_array_equal(clf.classes_, np.unique(y))
    assert clf.validation_scores_ is None  # no early stopping
    with pytest.raises(AttributeError, match="not fitted"):
        _ = classifier().coefs_


def test_get_params_set_params_and_repr():
    clf = MLPClassifier()
    params = clf.get_params()
    signature = inspect.signature(MLPClassifier.__init__).parameters
    for name in ("hidden_layer_sizes", "activation", "solver", "alpha", "batch_size",
                 "learning_rate", "learning_rate_init", "power_t", "max_iter", "shuffle",
                 "random_state", "tol", "verbose", "warm_start", "momentum",
                 "nesterovs_momentum", "early_stopping", "validation_fraction", "beta_1",
                 "beta_2", "epsilon", "n_iter_no_change", "backend", "dtype", "dropout"):
        assert params[name] == signature[name].default
    assert repr(clf) == "MLPClassifier()"

    assert clf.set_params(alpha=0.5, hidden_layer_sizes=(3, 2)) is clf
    assert clf.get_params()["alpha"] == 0.5 and clf.hidden_layer_sizes == (3, 2)
    text = repr(clf)
    assert "alpha=0.5" in text and "hidden_layer_sizes=(3, 2)" in text
    assert "solver" not in text  # defaults are not repeated
    with pytest.raises(ValueError, match="not_a_parameter"):
        clf.set_params(not_a_parameter=1)
    with pytest.raises(ValueError, match="colour"):
        Perceptron().set_params(colour="red")
    assert "eta0=0.5" in repr(Perceptron(eta0=0.5))


def test_set_params_takes_effect(binary_data):
    X, y = binary_data
    clf = classifier(max_iter=3).fit(X, y)
    clf.set_params(hidden_layer_sizes=(6,), max_iter=2).fit(X, y)
    assert clf.coefs_[0].shape == (4, 6) and clf.n_iter_ == 2


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_same_seed_same_weights(multiclass_data, solver):
    X, y = multiclass_data
    a = classifier(solver=solver, max_iter=5).fit(X, y)
    b = classifier(solver=solver, max_iter=5).fit(X, y)
    c = classifier(solver=solver, max_iter=5, random_state=1).fit(X, y)
    for wa, wb in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(wa, wb)
    assert a.loss_curve_ == b.loss_curve_
    assert not np.array_equal(flat(a), flat(c))


def test_dropout_is_reproducible_and_active(multiclass_data):
    X, y = multiclass_data
    a = classifier(dropout=0.3, max_iter=5).fit(X, y)
    b = classifier(dropout=0.3, max_iter=5).fit(X, y)
    plain = classifier(dropout=0.0, max_iter=5).fit(X, y)
    np.testing.assert_array_equal(flat(a), flat(b))
    assert a.loss_curve_ == b.loss_curve_
    assert not np.array_equal(flat(a), flat(plain))  # the masks did change training


# ------------------------------------------------------------------ incremental training
def test_partial_fit_needs_classes_then_continues(multiclass_data):
    X, y = multiclass_data
    clf = classifier()
    with pytest.raises(ValueError, match="classes"):
        clf.partial_fit(X, y)
    # the first batch lacks class 2; classes= tells the model it exists
    first = y != 2
    clf.partial_fit(X[first], y[first], classes=[0, 1, 2])
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    assert clf.predict_proba(X).shape == (len(X), 3)
    before = flat(clf)
    for _ in range(7):
        clf.partial_fit(X, y)
    # scikit-learn's count: n_iter_ is the last call's epochs, t_ and loss_curve_ add up
    assert clf.n_iter_ == 1 and clf.t_ == first.sum() + 7 * len(X)
    assert len(clf.loss_curve_) == 8
    assert not np.array_equal(flat(clf), before)
    full = clf.loss_curve_[1:]  # epochs over the same full data
    assert full[-1] < full[0]
    assert sum(b < a for a, b in zip(full, full[1:])) >= len(full) - 2


def test_regressor_partial_fit(regression_data):
    X, y = regression_data
    reg = regressor()
    for _ in range(6):
        reg.partial_fit(X, y)
    assert reg.n_iter_ == 1 and len(reg.loss_curve_) == 6
    assert reg.loss_curve_[-1] < reg.loss_curve_[0]
    assert reg.predict(X).shape == (len(X),)


def test_warm_start_continues_from_previous_weights(multiclass_data):
    X, y = multiclass_data
    warm = classifier(warm_start=True, max_iter=20).fit(X, y)
    cold = classifier(warm_start=False, max_iter=20).fit(X, y)
    np.testing.assert_array_equal(flat(warm), flat(cold))  # same first fit
    trained = flat(warm)
    # A second fit with a negligible step: a warm start barely moves the trained weights,
    # a cold start re-initialises them (to weights far from the trained ones).
    for model in (warm, cold):
        model.set_params(learning_rate_init=1e-9, max_iter=1).fit(X, y)
    np.testing.assert_allclose(flat(warm), trained, rtol=0, atol=1e-5)
    assert np.abs(flat(cold) - trained).max() > 1e-2
    assert warm.n_iter_ == 1 and len(warm.loss_curve_) == 21  # scikit-learn's counts
    assert cold.n_iter_ == 1
    # and the warm model's new epoch starts from the trained loss, not the initial one
    assert warm.loss_curve_[-1] < warm.loss_curve_[0]


# ------------------------------------------------------------------------- early stopping
def test_early_stopping_restores_best_weights(multiclass_data):
    X, y = multiclass_data
    snapshots = []
    clf = classifier(early_stopping=True, validation_fraction=0.2, n_iter_no_change=3,
                     max_iter=300, learning_rate_init=0.02,
                     callbacks=[lambda epoch, history: snapshots.append(flat(clf))])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # it must stop on its own
        clf.fit(X, y)
    scores = clf.validation_scores_
    assert len(scores) == clf.n_iter_ == len(snapshots) < 300
    assert all(0 <= s <= 1 for s in scores)
    best = int(np.argmax(scores))  # the first epoch reaching the best score is the one kept
    assert clf.best_validation_score_ == scores[best] == max(scores)
    assert clf.best_loss_ is None  # as scikit-learn: no best loss with early stopping
    # stopped after n_iter_no_change + 1 epochs without improvement (scikit-learn's rule)
    assert clf.n_iter_ == best + 1 + clf.n_iter_no_change + 1
    # the weights are the snapshot of the best epoch, not those of the last epoch
    np.testing.assert_array_equal(flat(clf), snapshots[best])
    assert not np.array_equal(flat(clf), snapshots[-1])
    # and those weights score best_validation_score_ on the held-out part
    held_out_score = clf._trainer_.validation(clf.network_)
    assert held_out_score == pytest.approx(clf.best_validation_score_, abs=1e-12)


def test_early_stopping_regressor_records_r2(regression_data):
    X, y = regression_data
    reg = regressor(early_stopping=True, max_iter=60, n_iter_no_change=60).fit(X, y)
    scores = reg.validation_scores_
    assert len(scores) == reg.n_iter_ == 60
    assert max(scores) == reg.best_validation_score_ and max(scores) > 0.5
    assert scores[-1] > scores[0]  # R^2 on the held-out part improves with training


def test_warm_start_early_stopping_without_improvement_keeps_weights():
    """A warm-started early-stopping fit in which no epoch beats the best score so far must
    leave the (best) weights it started from, not an uninitialised buffer."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 20)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    clf = classifier(hidden_layer_sizes=(64,), early_stopping=True, warm_start=True,
                     n_iter_no_change=3, max_iter=30).fit(X, y)
    best = flat(clf)
    score = clf.score(X, y)
    # a step too small to change any prediction: no epoch can beat the best score
    clf.set_params(learning_rate_init=1e-12, max_iter=3).fit(X, y)
    assert np.all(np.isfinite(flat(clf)))
    np.testing.assert_allclose(flat(clf), best, rtol=0, atol=1e-6)
    assert clf.score(X, y) == score


def test_a_generator_random_state_seeds_weights_trainer_and_hold_out_in_that_order():
    """With a NumPy Generator as random_state each consumer draws its seed in turn: the
    network's weights, then the trainer (shuffling, dropout), then early stopping's hold-out.
    The order is part of the results a seed gives."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    clf = classifier(hidden_layer_sizes=(5,), early_stopping=True, dropout=0.1, max_iter=2,
                     random_state=np.random.default_rng(7))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(X, y)
    draws = np.random.default_rng(7)
    weights_seed, trainer_seed = (int(draws.integers(0, 2**31 - 1)) for _ in range(2))
    expected = int(np.random.default_rng(trainer_seed).integers(0, 2**63 - 1))
    assert clf._trainer_.dropout_seed == expected


# ------------------------------------------------------------------- callbacks & warnings
def test_callbacks_receive_epoch_and_history_and_can_stop(binary_data):
    X, y = binary_data
    seen = []

    def record(epoch, history):
        seen.append((epoch, len(history.loss), history.loss[-1]))

    def stop_at_three(epoch, history):
        return epoch >= 3

    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # a callback stop is no warning
        clf = classifier(callbacks=[record, stop_at_three], max_iter=50).fit(X, y)
    assert [s[:2] for s in seen] == [(1, 1), (2, 2), (3, 3)]
    assert [s[2] for s in seen] == clf.loss_curve_
    assert clf.n_iter_ == 3


def test_convergence_warning_when_max_iter_is_reached(binary_data):
    X, y = binary_data
    with pytest.warns(ConvergenceWarning, match="max_iter=3") as record:
        classifier(max_iter=3, tol=0.0).fit(X, y)
    # attributed to the caller's line, not to gpumlp internals
    assert any(w.filename == __file__ for w in record
               if issubclass(w.category, ConvergenceWarning))


def test_float64_models(multiclass_data):
    X, y = multiclass_data
    # SGD (not Adam, whose normalised step can amplify rounding in tiny gradients)
    clf = classifier(dtype="float64", solver="sgd", max_iter=10).fit(X.astype(np.float64), y)
    assert all(w.dtype == np.float64 for w in clf.coefs_ + clf.intercepts_)
    proba = clf.predict_proba(X)
    assert proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # float32 and float64 start from the same weights and follow nearly the same path
    single = classifier(dtype="float32", solver="sgd", max_iter=10).fit(X, y)
    np.testing.assert_allclose(flat(single), flat(clf), rtol=0, atol=1e-3)
    reg = MLPRegressor((4,), dtype=np.float64, backend="numpy", max_iter=3).fit(X, X[:, 0])
    assert reg.predict(X).dtype == np.float64


def test_fitted_model_can_be_copied_and_pickled(binary_data):
    """copy.deepcopy and pickle (joblib workers, cross_validate(return_estimator=True))."""
    X, y = binary_data
    clf = classifier(max_iter=3).fit(X, y)
    original = flat(clf)
    for twin in (copy.deepcopy(clf), pickle.loads(pickle.dumps(clf))):
        np.testing.assert_array_equal(twin.predict_proba(X), clf.predict_proba(X))
        assert twin.loss_curve_ == clf.loss_curve_
        twin.partial_fit(X, y)  # trains on its own copy of the weights
        assert twin.n_iter_ == 1 and twin.t_ == clf.t_ + len(X)
    np.testing.assert_array_equal(flat(clf), original)


# ------------------------------------------------------------------------------ perceptron
def test_perceptron_and_or_but_not_xor():
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    for target in ([0, 0, 0, 1], [0, 1, 1, 1]):  # AND, OR
        p = Perceptron(random_state=0).fit(X, target)
        assert p.converged_
        np.testing.assert_array_equal(p.predict(X), target)
        assert p.score(X, target) == 1.0
    xor = Perceptron(max_iter=50, tol=None).fit(X, [0, 1, 1, 0])  # no stopping rule
    assert not xor.converged_ and xor.n_iter_ == 50
    assert xor.score(X, [0, 1, 1, 0]) < 1.0


def test_perceptron_api(multiclass_data):
    X, index = multiclass_data
    y = np.array(["a", "b", "c"])[index]
    p = Perceptron(random_state=0, max_iter=30).fit(X, y)
    np.testing.assert_array_equal(p.classes_, ["a", "b", "c"])
    assert p.coef_.shape == (3, X.shape[1]) and p.intercept_.shape == (3,)
    assert p.decision_function(X).shape == (len(X), 3)
    assert p.score(X, y) > 0.85
    with pytest.raises(ValueError, match="classes"):
        Perceptron().partial_fit(X, y)
    q = Perceptron(random_state=0)
    q.partial_fit(X, y, classes=["a", "b", "c"])
    q.partial_fit(X, y)
    assert q.n_iter_ == 1 and q.t_ == 1 + 2 * len(X)  # scikit-learn's counts
    assert Perceptron(eta0=0.1).get_params()["eta0"] == 0.1


# ------------------------------------------------------------------- scikit-learn interop
def test_sklearn_clone_and_type_checks(binary_data):
    base = pytest.importorskip("sklearn.base")
    X, y = binary_data
    clf = classifier(alpha=0.01).fit(X, y)
    copy = base.clone(clf)
    assert copy is not clf and copy.get_params() == clf.get_params()
    assert not hasattr(copy, "coefs_")  # clone is unfitted
    assert base.is_classifier(clf) and not base.is_regressor(clf)
    assert base.is_regressor(MLPRegressor()) and not base.is_classifier(MLPRegressor())
    assert base.is_classifier(Perceptron())


def test_sklearn_pipeline_and_grid_search(multiclass_data):
    pytest.importorskip("sklearn")
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = multiclass_data
    X = X * 100 + 50  # badly scaled: the scaler in front matters
    pipe = Pipeline([("scale", StandardScaler()), ("mlp", classifier())]).fit(X, y)
    assert pipe.score(X, y) > 0.9
    assert pipe.predict_proba(X).shape == (len(X), 3)

    search = GridSearchCV(pipe, {"mlp__alpha": [1e-4, 1e-1]}, cv=3).fit(X, y)
    assert len(search.cv_results_["params"]) == 2
    assert search.best_params_["mlp__alpha"] in (1e-4, 1e-1)
    assert search.best_estimator_.named_steps["mlp"].alpha == search.best_params_["mlp__alpha"]
    assert search.score(X, y) > 0.9

    reg_search = GridSearchCV(regressor(max_iter=30), {"hidden_layer_sizes": [(4,), (8,)]},
                              cv=2).fit(X[:, :3] / 100, X[:, 0] / 100)
    assert reg_search.best_estimator_.coefs_[0].shape[1] in (4, 8)


def test_comparable_to_sklearn_mlp(multiclass_data):
    pytest.importorskip("sklearn")
    from sklearn.neural_network import MLPClassifier as SklearnMLP

    X, y = multiclass_data
    train, test = slice(0, 100), slice(100, None)
    ours = classifier(hidden_layer_sizes=(16,), max_iter=60).fit(X[train], y[train])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = SklearnMLP((16,), learning_rate_init=0.01, max_iter=60,
                            random_state=0).fit(X[train], y[train])
    chance = 1 / 3
    ours_acc, theirs_acc = ours.score(X[test], y[test]), theirs.score(X[test], y[test])
    assert ours_acc > chance + 0.4 and theirs_acc > chance + 0.4
    assert abs(ours_acc - theirs_acc) < 0.2


def test_public_names_exported():
    for name in ("MLPClassifier", "MLPRegressor", "Perceptron", "ConvergenceWarning",
                 "DivergenceWarning", "BackendUnavailable", "load"):
        assert hasattr(gpumlp, name)


@pytest.mark.parametrize("n, fraction, classes", [(30, 0.1, 10), (200, 0.1, 3), (41, 0.25, 7),
                                                  (12, 0.5, 2)])
def test_stratified_validation_split_holds_out_exactly_what_is_asked(n, fraction, classes):
    rng = np.random.default_rng(0)
    y = np.concatenate([np.arange(classes), rng.integers(0, classes, n - classes)])
    model = MLPClassifier(validation_fraction=fraction, random_state=0, backend="numpy")
    n_val = max(1, int(round(fraction * n)))
    held = model._validation_indices(y, n_val, np.random.default_rng(0))
    assert len(held) == n_val and len(np.unique(held)) == n_val
    left = np.delete(y, held)
    assert set(np.unique(left)) == set(range(classes))  # every class still trains


def test_early_stopping_with_singleton_classes_is_a_clear_error():
    X = np.arange(8, dtype=np.float32).reshape(4, 2)
    model = MLPClassifier(early_stopping=True, backend="numpy", max_iter=2)
    with pytest.raises(ValueError, match="validation row"):
        model.fit(X, [0, 1, 2, 3])


def test_early_stopping_with_zero_validation_weights_is_a_clear_error():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 2)).astype(np.float32)
    y = np.arange(20) % 2
    model = MLPClassifier(early_stopping=True, validation_fraction=0.5, backend="numpy",
                          max_iter=2, random_state=0)
    held = model._validation_indices(y, 10, np.random.default_rng(0))  # the split fit makes
    weights = np.ones(20)
    weights[held] = 0
    with pytest.raises(ValueError, match="sample_weight of every validation row"):
        model.fit(X, y, sample_weight=weights)
