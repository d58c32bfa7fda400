"""Rosenblatt's perceptron: hard-limit units trained by the perceptron learning rule.

For each sample, ``w += eta0 * (t - y) * x`` and ``b += eta0 * (t - y)`` with
``y = hard_limit(x . w + b)`` and targets ``t`` in {0, 1}; several classes are learnt one
against the rest.  The rule is sequential (each update depends on the previous one), so it
runs on the host with NumPy whatever backend the rest of gpumlp uses (a sparse ``X`` is
densified once).  With ``sample_weight`` each update is scaled by the sample's weight, so a
zero weight removes the sample; an integer weight is *not* the same as repeating the sample,
since the rule updates after each visit.

Examples
--------
>>> import numpy as np
>>> from gpumlp import Perceptron
>>> X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
>>> Perceptron(random_state=0).fit(X, [0, 0, 0, 1]).predict(X).tolist()   # AND
[0, 0, 0, 1]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import exceptions
from .backends import get_backend
from .model_registry import register_model
from .params import ParamsMixin
from .validation import (check_classification_targets, check_float, check_int,
                         check_sample_weight, check_targets, check_X, dense_rows, seed_from)


@register_model
class Perceptron(ParamsMixin):
    """Single-layer perceptron with the perceptron learning rule.

    Parameters
    ----------
    eta0 : float, default 1.0
        Learning rate of the rule.
    max_iter : int, default 1000
        Epochs at most; training stops early after an epoch with no mistakes.
    shuffle : bool, default True
        Visit the samples in a new random order every epoch.
    fit_intercept : bool, default True
    random_state : int, Generator or None
    """

    _estimator_type = "classifier"

    def __init__(self, *, eta0: float = 1.0, max_iter: int = 1000, shuffle: bool = True,
                 fit_intercept: bool = True, random_state: Any = None):
        self.eta0 = eta0
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.fit_intercept = fit_intercept
        self.random_state = random_state

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> "Perceptron":
        """Learn weights from zero; ``converged_`` tells whether an epoch made no mistake.

        ``sample_weight`` (optional, one per sample) scales each sample's updates.
        """
        max_iter = check_int("max_iter", self.max_iter, 1)
        X, y, weights = self._check(X, y, classes=y, first=True, sample_weight=sample_weight)
        for _ in range(max_iter):
            if self._epoch(X, y, weights) == 0:
                self.converged_ = True
                break
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None,
                    sample_weight: Any = None) -> "Perceptron":
        """One epoch of the rule; ``classes`` (every label) is required on the first call and,
        given again later, must name the same classes."""
        first = not hasattr(self, "coef_")
        if first and classes is None:
            raise ValueError("classes must be given on the first call to partial_fit")
        if not first and classes is not None and not np.array_equal(
                np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes={np.asarray(classes).tolist()!r} is not the same as on "
                             f"the first call to partial_fit, which gave "
                             f"{self.classes_.tolist()!r}; the classes cannot change")
        X, y, weights = self._check(X, y, classes=classes, first=first,
                                    sample_weight=sample_weight)
        self._epoch(X, y, weights)
        return self

    def _check(self, X: Any, y: Any, classes: Any, first: bool,
               sample_weight: Any = None) -> tuple:
        """Validate the input; on a first call also set the classes and zero the weights."""
        check_float("eta0", self.eta0, 0, np.inf, low_open=True)
        host = get_backend("numpy")
        X = check_X(X, host, np.float64, None if first else self.n_features_in_,
                    owner="Perceptron")
        X = dense_rows(X, host, np.float64)
        y = check_targets(y, X.shape[0], owner="Perceptron")
        check_classification_targets(y)
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D for the perceptron (one label per sample); got "
                             f"shape {y.shape}")
        weights = check_sample_weight(sample_weight, X.shape[0])
        if first:
            self.classes_ = np.unique(np.asarray(classes))
            if self.classes_.size < 2:
                raise ValueError(f"y has only one class {self.classes_.tolist()}; the "
                                 "perceptron needs samples of at least two classes")
            self.n_features_in_ = X.shape[1]
            self._n_units = 1 if len(self.classes_) == 2 else len(self.classes_)
            self.coef_ = np.zeros((self._n_units, X.shape[1]))
            self.intercept_ = np.zeros(self._n_units)
            self.n_iter_ = 0
            self.converged_ = False
            self._rng = np.random.default_rng(seed_from(self.random_state))
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y contains labels {unknown.tolist()} not among the classes "
                             f"{self.classes_.tolist()}")
        return X, np.searchsorted(self.classes_, y), weights

    def _targets(self, index: np.ndarray) -> np.ndarray:
        if self._n_units == 1:
            return (index == 1).astype(float)[:, None]
        return np.eye(self._n_units)[index]

    def _epoch(self, X: np.ndarray, index: np.ndarray, weights: np.ndarray | None) -> int:
        """One pass of the rule; returns the number of samples (of non-zero weight) that were
        misclassified."""
        targets = self._targets(index)
        order = self._rng.permutation(len(X)) if self.shuffle else range(len(X))
        mistakes = 0
        for i in order:
            rate = self.eta0 if weights is None else self.eta0 * weights[i]
            if rate == 0:
                continue
            output = (X[i] @ self.coef_.T + self.intercept_ >= 0).astype(float)
            error = targets[i] - output
            if error.any():
                mistakes += 1
                self.coef_ += rate * np.outer(error, X[i])
                if self.fit_intercept:
                    self.intercept_ += rate * error
        self.n_iter_ += 1
        return mistakes

    def decision_function(self, X: Any) -> np.ndarray:
        """Net input ``X . w + b`` of each unit (a vector for two classes)."""
        if not hasattr(self, "coef_"):
            raise exceptions.NotFittedError(
                "This Perceptron instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator.")
        host = get_backend("numpy")
        X = check_X(X, host, np.float64, self.n_features_in_, owner="Perceptron")
        X = dense_rows(X, host, np.float64)
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if self._n_units == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores >= 0).astype(int)]
        return self.classes_[scores.argmax(axis=1)]

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "coef_")

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy (weighted by ``sample_weight`` when given)."""
        predicted = self.predict(X)
        correct = predicted == check_targets(y, predicted.shape[0], warn_column=False)
        return float(np.average(correct, weights=check_sample_weight(sample_weight,
                                                                     len(correct))))

    def save(self, path: str) -> None:
        """Save the fitted perceptron (arrays plus JSON metadata, no pickle; atomic write)."""
        from .io import save

        save(self, path)

    def to_onnx(self, path: str) -> None:
        """Export as an ONNX file (needs ``gpumlp[onnx]``): float64 ``X`` in, ``predict``'s
        labels and the hard-limit unit outputs out; see :mod:`gpumlp.onnx_export`."""
        from .onnx_export import export_onnx

        export_onnx(self, path)
