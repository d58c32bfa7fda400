"""Feature names as scikit-learn keeps them: a model fitted on a data frame records its
column names (``feature_names_in_``, saved in the model file too) and refuses a frame whose
columns differ in name or order, with scikit-learn's own errors and warnings. Each case is
generated and run against scikit-learn's MLPClassifier side by side."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest

import gpumlp
from gpumlp import MLPClassifier, MLPRegressor, Perceptron

pd = pytest.importorskip("pandas")
sklearn_mlp = pytest.importorskip("sklearn.neural_network")

pytestmark = pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")

COLUMNS = ["age", "height", "weight", "score", "x5", "x6", "x7"]
rng = np.random.default_rng(0)
VALUES = rng.normal(size=(40, len(COLUMNS)))
Y = np.arange(40) % 3


def frame(columns, values=VALUES):
    return pd.DataFrame(values[:, :len(columns)], columns=columns)


def variants():
    """Inputs to predict on after fitting on ``frame(COLUMNS[:4])``: the same frame, every
    reordering, renamings, missing and extra columns, arrays, non-string names."""
    fitted = COLUMNS[:4]
    yield "same", frame(fitted)
    for order in itertools.permutations(fitted):
        if list(order) != fitted:
            yield f"order {order}", frame(list(order))
    yield "renamed one", frame(["age", "height", "mass", "score"])
    yield "renamed all", frame(["a", "b", "c", "d"])
    yield "missing one", frame(fitted[:3])
    yield "extra one", frame(COLUMNS[:5])
    yield "many extra", frame(COLUMNS[:4] + ["e1", "e2", "e3", "e4", "e5", "e6"],
                              rng.normal(size=(40, 10)))
    yield "missing and unseen", frame(["age", "height", "weight", "other"])
    yield "array", VALUES[:, :4]
    yield "integer names", pd.DataFrame(VALUES[:, :4])
    yield "array of 3 features", VALUES[:, :3]


def outcome(model, X):
    """(error type and message, or None; warning categories and messages) of predict."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.predict(X)
            error = None
        except Exception as exc:  # noqa: BLE001 - compared with scikit-learn's
            error = (type(exc).__name__, str(exc))
    shown = [(w.category.__name__, str(w.message)) for w in caught
             if w.category.__name__ != "ConvergenceWarning"]
    return error, shown


def ours_and_sklearns(fit_on):
    ours = MLPClassifier((3,), max_iter=2, backend="numpy", random_state=0).fit(fit_on, Y)
    theirs = sklearn_mlp.MLPClassifier((3,), max_iter=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs.fit(fit_on, Y)
    return ours, theirs


def same_as_sklearn(ours, theirs, X):
    (error, shown), (their_error, their_shown) = outcome(ours, X), outcome(theirs, X)
    if their_error is not None and error is not None and "features" in their_error[1]:
        # n_features wording differs (gpumlp names the estimator and the argument)
        assert error[0] == their_error[0] == "ValueError"
    else:
        assert error == their_error
    assert shown == their_shown


@pytest.mark.parametrize("name, X", list(variants()), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_predict_on_frames_matches_scikit_learn(name, X):
    ours, theirs = ours_and_sklearns(frame(COLUMNS[:4]))
    np.testing.assert_array_equal(ours.feature_names_in_, theirs.feature_names_in_)
    same_as_sklearn(ours, theirs, X)


@pytest.mark.parametrize("name, X", list(variants()), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_fitted_without_names_matches_scikit_learn(name, X):
    ours, theirs = ours_and_sklearns(VALUES[:, :4])
    assert not hasattr(ours, "feature_names_in_") and not hasattr(theirs, "feature_names_in_")
    same_as_sklearn(ours, theirs, X)


def test_reordered_columns_never_predict_silently():
    model = MLPClassifier((8,), max_iter=50, backend="numpy", random_state=0)
    model.fit(frame(COLUMNS[:4]), Y)
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        model.predict(frame(["score", "weight", "height", "age"]))
    # the same values in the fitted order predict as before
    with pytest.warns(UserWarning, match="X does not have valid feature names"):
        np.testing.assert_array_equal(model.predict(frame(COLUMNS[:4])),
                                      model.predict(VALUES[:, :4]))


def test_mixed_column_name_types_are_refused_as_scikit_learn_does():
    X = pd.DataFrame(VALUES[:, :3], columns=["a", 1, "c"])
    with pytest.raises(TypeError, match="Feature names are only supported if all input "
                                        "features have string names"):
        MLPClassifier((3,), max_iter=1, backend="numpy").fit(X, Y)


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor, Perceptron])
def test_feature_names_are_saved_and_checked_after_loading(tmp_path, cls):
    X = frame(COLUMNS[:4])
    target = VALUES[:, 0] if cls is MLPRegressor else Y
    model = (Perceptron(max_iter=2, random_state=0) if cls is Perceptron
             else cls((3,), max_iter=2, backend="numpy", random_state=0)).fit(X, target)
    model.save(tmp_path / "m.npz")
    loaded = gpumlp.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.feature_names_in_, model.feature_names_in_)
    assert loaded.feature_names_in_.dtype == object
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    with pytest.raises(ValueError, match="Feature names seen at fit time, yet now missing"):
        loaded.predict(frame(["age", "height", "weight", "other"]))


def test_refit_on_an_array_forgets_the_names():
    model = MLPClassifier((3,), max_iter=1, backend="numpy").fit(frame(COLUMNS[:4]), Y)
    model.fit(VALUES[:, :4], Y)
    assert not hasattr(model, "feature_names_in_")


def test_warm_start_and_partial_fit_check_the_names():
    model = MLPClassifier((3,), max_iter=1, backend="numpy", warm_start=True)
    model.fit(frame(COLUMNS[:4]), Y)
    with pytest.raises(ValueError, match="same order"):
        model.fit(frame(["height", "age", "weight", "score"]), Y)
    with pytest.raises(ValueError, match="same order"):
        model.partial_fit(frame(["height", "age", "weight", "score"]), Y)


def test_array_with_the_wrong_number_of_features_names_the_count():
    model = MLPClassifier((3,), max_iter=1, backend="numpy").fit(VALUES[:, :4], Y)
    with pytest.raises(ValueError, match="X has 3 features, but MLPClassifier is expecting 4"):
        model.predict(VALUES[:, :3])
