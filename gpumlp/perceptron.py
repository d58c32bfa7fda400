"""Rosenblatt's perceptron: hard-limit units trained by the perceptron learning rule.

For each sample, ``w += eta0 * (t - y) * x`` and ``b += eta0 * (t - y)`` with
``y = hard_limit(x . w + b)`` and targets ``t`` in {0, 1}; several classes are learnt one
against the rest.  The rule is sequential (each update depends on the previous one), so it
runs on the host with NumPy whatever backend the rest of gpumlp uses.

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

from .backends import get_backend
from .model_registry import register_model
from .params import ParamsMixin
from .validation import check_float, check_int, check_targets, check_X, seed_from


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

    def fit(self, X: Any, y: Any) -> "Perceptron":
        """Learn weights from zero; ``converged_`` tells whether an epoch made no mistake."""
        max_iter = check_int("max_iter", self.max_iter, 1)
        X, y = self._check(X, y, classes=y, first=True)
        for _ in range(max_iter):
            if self._epoch(X, y) == 0:
                self.converged_ = True
                break
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None) -> "Perceptron":
        """One epoch of the rule; ``classes`` (every label) is required on the first call."""
        first = not hasattr(self, "coef_")
        if first and classes is None:
            raise ValueError("classes must be given on the first call to partial_fit")
        X, y = self._check(X, y, classes=classes, first=first)
        self._epoch(X, y)
        return self

    def _check(self, X: Any, y: Any, classes: Any, first: bool) -> tuple:
        """Validate the input; on a first call also set the classes and zero the weights."""
        check_float("eta0", self.eta0, 0, np.inf, low_open=True)
        X = check_X(X, get_backend("numpy"), np.float64, None if first else self.n_features_in_)
        y = check_targets(y, X.shape[0])
        if first:
            self.classes_ = np.unique(np.asarray(classes))
            if self.classes_.size < 2:
                raise ValueError(f"y has a single class {self.classes_.tolist()}; the "
                                 "perceptron needs at least two")
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
        return X, np.searchsorted(self.classes_, y)

    def _targets(self, index: np.ndarray) -> np.ndarray:
        if self._n_units == 1:
            return (index == 1).astype(float)[:, None]
        return np.eye(self._n_units)[index]

    def _epoch(self, X: np.ndarray, index: np.ndarray) -> int:
        """One pass of the rule; returns the number of samples that were misclassified."""
        targets = self._targets(index)
        order = self._rng.permutation(len(X)) if self.shuffle else range(len(X))
        mistakes = 0
        for i in order:
            output = (X[i] @ self.coef_.T + self.intercept_ >= 0).astype(float)
            error = targets[i] - output
            if error.any():
                mistakes += 1
                self.coef_ += self.eta0 * np.outer(error, X[i])
                if self.fit_intercept:
                    self.intercept_ += self.eta0 * error
        self.n_iter_ += 1
        return mistakes

    def decision_function(self, X: Any) -> np.ndarray:
        """Net input ``X . w + b`` of each unit (a vector for two classes)."""
        if not hasattr(self, "coef_"):
            raise AttributeError("this Perceptron is not fitted yet; call fit first")
        X = check_X(X, get_backend("numpy"), np.float64, self.n_features_in_)
        scores = X @ self.coef_.T + self.intercept_
        return scores.ravel() if self._n_units == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores >= 0).astype(int)]
        return self.classes_[scores.argmax(axis=1)]

    def score(self, X: Any, y: Any) -> float:
        """Mean accuracy."""
        predicted = self.predict(X)
        return float(np.mean(predicted == check_targets(y, predicted.shape[0])))

    def save(self, path: str) -> None:
        """Save the fitted perceptron (arrays plus JSON metadata, no pickle; atomic write)."""
        from .io import save

        save(self, path)

    def to_onnx(self, path: str) -> None:
        """Export as an ONNX file (needs ``gpumlp[onnx]``): float64 ``X`` in, ``predict``'s
        labels and the hard-limit unit outputs out; see :mod:`gpumlp.onnx_export`."""
        from .onnx_export import export_onnx

        export_onnx(self, path)
