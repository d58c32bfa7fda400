"""``fit(validation_data=...)`` and the per-epoch ``history_`` (gpumlp/training.py,
gpumlp/evaluation.py), on the NumPy backend."""

from __future__ import annotations

import time

import numpy as np
import pytest

import gpumlp
from gpumlp import MLPClassifier, MLPRegressor, training
from gpumlp.network import Network
from gpumlp.optim import Adam
from gpumlp.training import Trainer

pytestmark = pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")


@pytest.fixture
def split():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(260, 6))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int) + (X[:, 3] > 1)
    return X[:200], y[:200], X[200:], y[200:]


def params(model) -> np.ndarray:
    return model.network_.get_flat_params()


@pytest.mark.parametrize("make", [
    lambda: MLPClassifier((12,), dropout=0.3, batch_size=32, max_iter=6, random_state=3,
                          backend="numpy", alpha=1e-3),
    lambda: MLPRegressor((12,), solver="sgd", learning_rate="invscaling", batch_size=32,
                         max_iter=6, random_state=3, backend="numpy", dropout=0.2),
])
def test_validation_data_leaves_the_training_trajectory_bit_identical(split, make):
    X, y, X_val, y_val = split
    if isinstance(make(), MLPRegressor):
        y, y_val = X[:, 0] - X[:, 1], X_val[:, 0] - X_val[:, 1]
    plain = make().fit(X, y)
    watched = make().fit(X, y, validation_data=(X_val, y_val))
    assert np.array_equal(params(plain), params(watched))  # bit for bit: dropout and shuffle
    assert plain.loss_curve_ == watched.loss_curve_        # drew the same random numbers
    assert plain._trainer_.rng.bit_generator.state == watched._trainer_.rng.bit_generator.state
    assert plain.history_["lr"] == watched.history_["lr"]
    # The last epoch's validation values are the fitted model's own loss and score (R^2 from
    # targets in the model's float32).
    assert watched.history_["val_score"][-1] == pytest.approx(watched.score(X_val, y_val),
                                                               abs=1e-6)
    if isinstance(watched, MLPRegressor):
        expected = np.mean((watched.predict(X_val) - y_val) ** 2) / 2
    else:
        proba = np.clip(watched.predict_proba(X_val).astype(np.float64),
                        np.finfo(np.float32).eps, 1 - np.finfo(np.float32).eps)
        expected = -np.mean(np.log(proba[np.arange(len(y_val)), y_val]))
    assert watched.history_["val_loss"][-1] == pytest.approx(expected, rel=1e-6)


def test_history_has_one_entry_per_epoch_and_validation_keys_only_with_validation(split):
    X, y, X_val, y_val = split
    clf = MLPClassifier((8,), solver="sgd", learning_rate="invscaling", max_iter=4,
                        random_state=0, backend="numpy").fit(X, y)
    history = clf.history_
    assert list(history) == ["loss", "lr", "epoch_seconds", "samples_per_second"]
    assert all(len(column) == clf.n_iter_ == 4 for column in history.values())
    assert history["loss"] == clf.loss_curve_
    # lr is the step size each epoch trained with: invscaling from the samples seen before it.
    seen = np.arange(4) * len(X)
    expected_lr = [0.001] + [0.001 / (s + 1) ** 0.5 for s in seen[1:]]
    np.testing.assert_allclose(history["lr"], expected_lr, rtol=1e-12)
    np.testing.assert_allclose(np.multiply(history["samples_per_second"],
                                           history["epoch_seconds"]), len(X), rtol=1e-9)
    assert clf.validation_scores_ is None  # scikit-learn's: early_stopping only
    watched = MLPClassifier((8,), max_iter=3, random_state=0, backend="numpy")
    watched.fit(X, y, validation_data=(X_val, y_val))
    assert list(watched.history_) == ["loss", "val_loss", "val_score", "lr", "epoch_seconds",
                                      "samples_per_second"]
    assert watched.validation_scores_ is None


def test_warm_start_pads_the_values_an_earlier_fit_did_not_record(split):
    X, y, X_val, y_val = split
    clf = MLPClassifier((8,), max_iter=2, random_state=0, backend="numpy", warm_start=True)
    clf.fit(X, y).fit(X, y, validation_data=(X_val, y_val))
    history = clf.history_
    assert all(len(column) == 4 for column in history.values())
    assert np.isnan(history["val_loss"][:2]).all() and np.isfinite(history["val_loss"][2:]).all()


def test_evaluation_time_is_not_counted_as_training_time(split, monkeypatch):
    """A validation pass made 0.5 s slower leaves epoch_seconds at the training's own time."""
    X, y, X_val, y_val = split
    evaluate = training.evaluate

    def slow(*args):
        time.sleep(0.5)
        return evaluate(*args)

    monkeypatch.setattr(training, "evaluate", slow)
    clf = MLPClassifier((8,), max_iter=3, random_state=0, backend="numpy")
    clf.fit(X, y, validation_data=(X_val, y_val))
    assert max(clf.history_["epoch_seconds"]) < 0.5
    assert min(clf.history_["samples_per_second"]) > len(X) / 0.5


@pytest.mark.parametrize("bad, message", [
    ("abc", r"validation_data must be a pair \(X_val, y_val\); got 'abc'"),
    (([[1.0] * 6],), r"validation_data must be a pair \(X_val, y_val\); got a tuple of 1"),
    ((np.ones((5, 3)), np.zeros(5)), r"validation_data\[0\] \(X_val\) has 3 features, but "
                                     r"MLPClassifier is expecting 6"),
    ((np.ones((5, 6)), np.zeros(4)), r"validation_data\[1\] \(y_val\) has 4 samples but "
                                     r"validation_data\[0\] \(X_val\) has 5"),
    ((np.ones((5, 6)), None), r"validation_data\[1\] \(y_val\) is None"),
    ((np.full((5, 6), np.nan), np.zeros(5)), r"validation_data\[0\] \(X_val\) contains NaN"),
    ((np.ones((2, 6)), np.array([0, 7])), r"validation_data\[1\] \(y_val\): .*labels \[7\] "
                                          r"not among the known classes"),
    ((np.ones(6), np.zeros(1)), r"validation_data\[0\] \(X_val\) must be 2-D"),
])
def test_bad_validation_data_is_refused_naming_it(split, bad, message):
    X, y, _, _ = split
    clf = MLPClassifier((4,), max_iter=2, backend="numpy")
    with pytest.raises(ValueError, match=message):
        clf.fit(X, y, validation_data=bad)
    assert not hasattr(clf, "network_")  # nothing trained, nothing that looks fitted


def test_lbfgs_refuses_validation_data_and_has_no_history(split):
    X, y, X_val, y_val = split
    clf = MLPClassifier((4,), solver="lbfgs", max_iter=5, backend="numpy")
    with pytest.raises(ValueError, match="validation_data is evaluated after every epoch"):
        clf.fit(X, y, validation_data=(X_val, y_val))
    clf.fit(X, y)
    with pytest.raises(AttributeError, match="history_ is recorded by the stochastic"):
        clf.history_


def test_trainer_fit_with_validation_data(split):
    X, y, X_val, y_val = split

    def run(validation):
        net = Network([6, 10, 3], seed=0, backend="numpy", dtype=np.float64)
        trainer = Trainer(net, Adam(net.backend, net.params, 1e-2), batch_size=40,
                          dropout=0.2, seed=1)
        history = trainer.fit(X, np.eye(3)[y], 4, validation_data=validation)
        return net, history

    plain, plain_history = run(None)
    net, history = run((X_val, np.eye(3)[y_val]))
    assert np.array_equal(plain.params, net.params)
    assert "val_loss" not in plain_history.metrics
    accuracy = np.mean(net.predict_output(X_val).argmax(axis=1) == y_val)
    assert history.metrics["val_score"][-1] == pytest.approx(accuracy, abs=1e-12)
    with pytest.raises(ValueError, match=r"validation_data holds X_val of shape \(60, 6\) and "
                                         r"T_val of shape \(60, 2\)"):
        run((X_val, np.eye(2)[y_val % 2]))


def test_validation_frame_columns_must_match_the_training_frame(split):
    pd = pytest.importorskip("pandas")
    X, y, X_val, y_val = split
    columns = list("abcdef")
    frame, val = pd.DataFrame(X, columns=columns), pd.DataFrame(X_val, columns=columns)
    clf = MLPClassifier((4,), max_iter=2, random_state=0, backend="numpy")
    clf.fit(frame, y, validation_data=(val, y_val))
    assert clf.history_["val_score"][-1] == pytest.approx(clf.score(val, y_val), abs=1e-12)
    with pytest.raises(ValueError, match=r"(?s)validation_data\[0\] \(X_val\): The feature names "
                                         r"should match.*same order"):
        clf.fit(frame, y, validation_data=(val[columns[::-1]], y_val))
