"""The perceptron as scikit-learn has it: a drop-in for ``sklearn.linear_model.Perceptron``.

A linear classifier trained by stochastic gradient descent on the perceptron loss
``max(0, -y (w . x + b))`` with a constant step ``eta0``: whenever a sample is misclassified
(or lies on the boundary), ``w += eta0 * y * x`` and ``b += eta0 * y`` with ``y`` in
{-1, +1}.  Several classes are learnt one against the rest.  The parameters, their defaults,
the stopping rule (``tol``, ``n_iter_no_change``), ``early_stopping``, ``class_weight``,
``warm_start``, ``n_iter_`` and ``t_`` are scikit-learn's, and for an integer (or ``None``
with NumPy's global seed) ``random_state`` the shuffles are too, so a fit gives scikit-learn's
coefficients to float rounding.  The epochs run compiled on the host
(:mod:`gpumlp.linear_sgd`) whatever backend the rest of gpumlp uses: the rule is sequential.

Examples
--------
>>> import numpy as np
>>> from gpumlp import Perceptron
>>> X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
>>> Perceptron().fit(X, [0, 0, 0, 1]).predict(X).tolist()   # AND
[0, 0, 0, 1]
"""

from __future__ import annotations

import math
import numbers
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from . import exceptions, linear_sgd
from .backends import get_backend
from .holdout import stratified_holdout
from .io import save
from .model_registry import register_model
from .onnx_export import export_onnx
from .params import ParamsMixin
from .validation import (check_choice, check_classification_targets, check_feature_names,
                         check_float, check_int, check_sample_weight, check_targets, check_X,
                         is_sparse, seed_from)

_MAX_INT = np.iinfo(np.int32).max  # seeds are drawn below it, as scikit-learn draws them


@register_model
class Perceptron(ParamsMixin):
    """Linear perceptron classifier (scikit-learn's parameters, defaults and semantics).

    Parameters
    ----------
    penalty : {'l2', 'l1', 'elasticnet'} or None, default None
        Regularisation term (none by default).
    alpha : float, default 0.0001
        Multiplies the regularisation term when ``penalty`` is set.
    l1_ratio : float in [0, 1], default 0.15
        Elastic-net mixing: 0 is L2, 1 is L1; used only with ``penalty='elasticnet'``.
    fit_intercept : bool, default True
        Learn the intercept; when False the data is taken as centred.
    max_iter : int, default 1000
        Epochs at most in ``fit`` (``partial_fit`` runs one).
    tol : float or None, default 0.001
        Stop when the epoch's mean loss (or, with ``early_stopping``, validation accuracy)
        has not improved by ``tol`` for ``n_iter_no_change`` epochs in a row; None runs all
        ``max_iter`` epochs.
    shuffle : bool, default True
        Visit the samples in a shuffled order each epoch.
    verbose : int, default 0
        Print one line per epoch when > 0.
    eta0 : float, default 1.0
        The constant step size.
    n_jobs : int or None, default None
        Threads that fit the one-against-the-rest problems (None: 1, -1: all cores).
    random_state : int, RandomState, Generator or None, default 0
        Seed of the shuffles (and of the early-stopping split).
    early_stopping : bool, default False
        Hold out a stratified ``validation_fraction`` of the data and stop when its accuracy
        has not improved by ``tol`` for ``n_iter_no_change`` epochs.
    validation_fraction : float in (0, 1), default 0.1
        Share of the data held out with ``early_stopping``.
    n_iter_no_change : int, default 5
        Epochs without improvement before stopping.
    class_weight : dict, 'balanced' or None, default None
        Weight of each class's updates; 'balanced' is ``n_samples / (n_classes * counts)``.
    warm_start : bool, default False
        ``fit`` starts from the previous fit's coefficients.

    Attributes
    ----------
    coef_ : ndarray, shape (1, n_features) for two classes, else (n_classes, n_features)
    intercept_ : ndarray, shape (1,) or (n_classes,)
    classes_ : ndarray of the labels
    n_features_in_ : int
    n_iter_ : int
        Epochs of the last ``fit`` (the most over the classes), or 1 after ``partial_fit``.
    t_ : float
        Weight updates performed plus one: ``1 + n_iter_ * n_samples`` after a fit.
    converged_ : bool
        Whether the stopping rule ended every problem before ``max_iter``.
    """

    _estimator_type = "classifier"

    def __init__(self, *, penalty: str | None = None, alpha: float = 0.0001,
                 l1_ratio: float = 0.15, fit_intercept: bool = True, max_iter: int = 1000,
                 tol: float | None = 1e-3, shuffle: bool = True, verbose: int = 0,
                 eta0: float = 1.0, n_jobs: int | None = None, random_state: Any = 0,
                 early_stopping: bool = False, validation_fraction: float = 0.1,
                 n_iter_no_change: int = 5, class_weight: Any = None,
                 warm_start: bool = False):
        self.penalty = penalty
        self.alpha = alpha
        self.l1_ratio = l1_ratio
        self.fit_intercept = fit_intercept
        self.max_iter = max_iter
        self.tol = tol
        self.shuffle = shuffle
        self.verbose = verbose
        self.eta0 = eta0
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.class_weight = class_weight
        self.warm_start = warm_start

    # ----------------------------------------------------------------------- training
    def fit(self, X: Any, y: Any, coef_init: Any = None, intercept_init: Any = None,
            sample_weight: Any = None) -> "Perceptron":
        """Fit from zero (or ``coef_init``/``intercept_init``, or the previous fit's
        coefficients with ``warm_start``); ``sample_weight`` multiplies each sample's
        updates (and ``class_weight``)."""
        self._check_hyperparameters()
        if self.warm_start and hasattr(self, "coef_"):
            coef_init = self.coef_ if coef_init is None else coef_init
            intercept_init = self.intercept_ if intercept_init is None else intercept_init
        for name in ("coef_", "intercept_", "classes_"):
            self.__dict__.pop(name, None)
        self.t_ = 1.0
        self._partial_fit(X, y, int(self.max_iter), None, sample_weight, coef_init,
                          intercept_init)
        if self.tol is not None and self.n_iter_ == self.max_iter:
            warnings.warn("Maximum number of iteration reached before convergence. Consider "
                          "increasing max_iter to improve the fit.",
                          exceptions.ConvergenceWarning, stacklevel=2)
        return self

    def partial_fit(self, X: Any, y: Any, classes: Any = None,
                    sample_weight: Any = None) -> "Perceptron":
        """One epoch over ``X``; ``classes`` (every label) is required on the first call and,
        given again later, must name the same classes."""
        self._check_hyperparameters()
        if self.early_stopping:
            raise ValueError("early_stopping=True is not supported by partial_fit; set "
                             "early_stopping=False or call fit")
        if self.class_weight == "balanced":
            raise ValueError("class_weight='balanced' is not supported by partial_fit (one "
                             "chunk's class counts are not the data's); pass a dict of weights")
        first = not hasattr(self, "classes_")
        if first and classes is None:
            raise ValueError("classes must be given on the first call to partial_fit")
        if not first and classes is not None and not np.array_equal(
                np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes={np.asarray(classes).tolist()!r} is not the same as on "
                             f"the first call to partial_fit, which gave "
                             f"{self.classes_.tolist()!r}; the classes cannot change")
        self._partial_fit(X, y, 1, np.unique(np.asarray(classes)) if first else None,
                          sample_weight, None, None)
        return self

    def _partial_fit(self, X: Any, y: Any, max_iter: int, classes: np.ndarray | None,
                     sample_weight: Any, coef_init: Any, intercept_init: Any) -> None:
        """Train for at most ``max_iter`` epochs; ``classes`` sets ``classes_`` (from ``y``
        when None and there are none yet)."""
        fitted = hasattr(self, "coef_")
        check_feature_names(self, X, reset=not fitted)
        X = check_X(X, get_backend("numpy"), np.float64,
                    self.n_features_in_ if fitted else None, owner="Perceptron")
        y = check_targets(y, X.shape[0], owner="Perceptron")
        check_classification_targets(y)
        if y.ndim != 1:
            raise ValueError(f"y must be 1-D for the perceptron (one label per sample); got "
                             f"shape {y.shape}")
        if classes is None and not hasattr(self, "classes_"):
            classes = np.unique(y)
        weights = check_sample_weight(sample_weight, X.shape[0])
        weights = np.ones(X.shape[0]) if weights is None else weights
        if classes is not None:
            if classes.size < 2:
                raise ValueError(f"y has only one class {classes.tolist()}; the perceptron "
                                 "needs samples of at least two classes")
            self.classes_ = classes
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y contains labels {unknown.tolist()} not among the classes "
                             f"{self.classes_.tolist()}")
        class_weights = self._class_weights(y)
        if not fitted or coef_init is not None:
            self._allocate(X.shape[1], coef_init, intercept_init)
        self.n_features_in_ = X.shape[1]
        self.t_ = getattr(self, "t_", 1.0)
        rows = linear_sgd.RowData(X, is_sparse(X))
        problems, held_out = self._problems(y, class_weights, weights)
        validation = _Validation(X, weights, held_out) if self.early_stopping else None
        linear_sgd.epoch_function()  # compiled (or loaded) once, before any worker asks
        workers = _workers(self.n_jobs, len(problems))
        fit_one = lambda problem: self._fit_problem(rows, weights, held_out, validation,
                                                   max_iter, *problem)
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(fit_one, problems))
        else:
            results = [fit_one(problem) for problem in problems]
        for unit, (intercept, _, _) in enumerate(results):
            self.intercept_[unit] = intercept
        self.n_iter_ = max(n_iter for _, n_iter, _ in results)
        self.converged_ = all(stopped for _, _, stopped in results)
        self.t_ += self.n_iter_ * X.shape[0]

    def _problems(self, y: np.ndarray, class_weights: np.ndarray,
                  weights: np.ndarray) -> tuple[list[tuple], np.ndarray]:
        """One tuple per unit (the unit, its labels in {-1, +1}, the positive and negative
        class weights, the shuffle seed) and the mask of the early-stopping rows, with every
        random draw made in scikit-learn's order from the same generator."""
        states = _random_states(self.random_state)
        if len(self.classes_) == 2:
            states.randint(1, _MAX_INT)  # the draw scikit-learn spends on its data set object
            held_out = self._held_out(y, weights)
            seed = int(states.randint(_MAX_INT))
            units = [(0, self.classes_[1], class_weights[1], class_weights[0], seed)]
        else:
            held_out = self._held_out(y, weights)
            seeds = states.randint(_MAX_INT, size=len(self.classes_))
            units = []
            for i, (label, seed) in enumerate(zip(self.classes_, seeds)):
                unit_states = np.random.RandomState(seed)
                unit_states.randint(1, _MAX_INT)  # the data set object's draw
                units.append((i, label, class_weights[i], 1.0,
                              int(unit_states.randint(_MAX_INT))))
        problems = [(unit, np.where(y == label, 1.0, -1.0), float(positive), float(negative),
                     seed if self.shuffle else -1)
                    for unit, label, positive, negative, seed in units]
        return problems, held_out

    def _held_out(self, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Mask of the early-stopping validation rows (none without early stopping)."""
        if not self.early_stopping:
            return np.zeros(len(y), dtype=np.bool_)
        mask = stratified_holdout(y, self.validation_fraction,
                                  _random_states(self.random_state),
                                  "validation_fraction (early_stopping)")
        if not weights[mask].any():
            raise ValueError("early_stopping: the sample_weight of every validation sample is "
                             "zero; use another random_state or validation_fraction")
        return mask

    def _fit_problem(self, rows: linear_sgd.RowData, weights: np.ndarray,
                     held_out: np.ndarray, validation: "_Validation | None", max_iter: int,
                     unit: int, signs: np.ndarray, positive: float, negative: float,
                     seed: int) -> tuple[float, int, bool]:
        """Epochs of one binary problem on ``coef_[unit]`` in place; returns its intercept,
        its epoch count and whether the stopping rule ended it."""
        w = self.coef_[unit]
        state = linear_sgd.new_state(w, float(self.intercept_[unit]), self.t_)
        code = linear_sgd.PENALTY_CODES[self.penalty]
        l1_ratio = {0: float(self.l1_ratio), 1: 1.0, 2: 0.0, 3: float(self.l1_ratio)}[code]
        q = np.zeros(w.shape[0] if code in (1, 3) else 0)
        order = np.arange(len(signs), dtype=np.int64)
        train_count = len(signs) - int(held_out.sum())
        track_loss = bool(self.verbose) or not self.early_stopping
        tol = -math.inf if self.tol is None else float(self.tol)
        best_objective, best_score, no_improvement, stopped = math.inf, -math.inf, 0, False
        run_epoch = linear_sgd.epoch_function()
        started = time.perf_counter()
        for epoch in range(max_iter):
            if self.verbose:
                print(f"-- Epoch {epoch + 1}")
            run_epoch(rows.data, rows.indices, rows.indptr, rows.dense, signs,
                      weights, order, seed, held_out, w, q, state, code, float(self.alpha),
                      l1_ratio, float(self.eta0), positive, negative,
                      bool(self.fit_intercept), rows.intercept_decay, track_loss)
            if not (math.isfinite(state[linear_sgd.INTERCEPT]) and np.isfinite(w).all()):
                raise ValueError(f"Floating-point under-/overflow occurred at epoch #"
                                 f"{epoch + 1}. Scaling input data with StandardScaler or "
                                 "MinMaxScaler might help.")
            if self.verbose:
                self._report(w, state, (epoch + 1) * train_count, train_count, started)
            if validation is not None:
                score = validation.score(w * state[linear_sgd.WSCALE],
                                         state[linear_sgd.INTERCEPT], signs)
                no_improvement = no_improvement + 1 if score < best_score + tol else 0
                best_score = max(best_score, score)
            else:
                objective = state[linear_sgd.OBJECTIVE] / train_count
                no_improvement = (no_improvement + 1 if objective > best_objective - tol
                                  else 0)
                best_objective = min(best_objective, objective)
            if no_improvement >= self.n_iter_no_change:
                stopped = True
                if self.verbose:
                    print(f"Convergence after {epoch + 1} epochs took "
                          f"{time.perf_counter() - started:.2f} seconds")
                break
        linear_sgd.fold_scale(w, state)
        return state[linear_sgd.INTERCEPT], epoch + 1, stopped

    @staticmethod
    def _report(w: np.ndarray, state: np.ndarray, seen: int, train_count: int,
                started: float) -> None:
        print(f"Norm: {math.sqrt(state[linear_sgd.SQ_NORM]):.2f}, NNZs: "
              f"{np.count_nonzero(w)}, Bias: {state[linear_sgd.INTERCEPT]:.6f}, T: {seen}, "
              f"Avg. loss: {state[linear_sgd.SUM_LOSS] / train_count:.6f}, Objective: "
              f"{state[linear_sgd.OBJECTIVE] / train_count:.6f}")
        print(f"Total training time: {time.perf_counter() - started:.2f} seconds.")

    # ----------------------------------------------------------------------- checks
    def _check_hyperparameters(self) -> None:
        check_choice("penalty", self.penalty, (None, "l2", "l1", "elasticnet"))
        check_float("alpha", self.alpha, 0, np.inf)
        check_float("l1_ratio", self.l1_ratio, 0, 1)
        check_int("max_iter", self.max_iter, 1)
        if self.tol is not None:
            check_float("tol", self.tol, 0, np.inf)
        check_int("verbose", self.verbose, 0)
        check_float("eta0", self.eta0, 0, np.inf, low_open=True)
        check_float("validation_fraction", self.validation_fraction, 0, 1, True, True)
        check_int("n_iter_no_change", self.n_iter_no_change, 1)
        for name in ("fit_intercept", "shuffle", "early_stopping", "warm_start"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.n_jobs is not None and (isinstance(self.n_jobs, bool) or not isinstance(
                self.n_jobs, numbers.Integral) or self.n_jobs == 0):
            raise ValueError(f"n_jobs={self.n_jobs!r} is not valid; allowed: None, a positive "
                             "integer, or a negative one (-1: all cores)")
        if not (self.class_weight is None or self.class_weight == "balanced"
                or isinstance(self.class_weight, dict)):
            raise ValueError(f"class_weight={self.class_weight!r} is not valid; allowed: None, "
                             "'balanced' or a dict {label: weight}")
        _random_states(self.random_state)  # its type is checked before any work

    def _class_weights(self, y: np.ndarray) -> np.ndarray:
        """One weight per class in ``classes_``, from ``class_weight``."""
        weights = np.ones(len(self.classes_))
        if self.class_weight == "balanced":
            present, counts = np.unique(y, return_counts=True)
            missing = np.setdiff1d(self.classes_, present)
            if missing.size:
                raise ValueError(f"class_weight='balanced' needs every class in y; "
                                 f"{missing.tolist()} have no samples")
            return len(y) / (len(present) * counts.astype(np.float64))
        if isinstance(self.class_weight, dict):
            labels = self.classes_.tolist()
            for label, weight in self.class_weight.items():
                if label not in labels:
                    raise ValueError(f"class_weight has label {label!r}, which is not among "
                                     f"the classes {labels}")
                weights[labels.index(label)] = check_float(f"class_weight[{label!r}]", weight,
                                                           0, np.inf)
        return weights

    def _allocate(self, n_features: int, coef_init: Any, intercept_init: Any) -> None:
        """Zero coefficients (or ``coef_init``/``intercept_init``, checked) for the classes."""
        units = 1 if len(self.classes_) == 2 else len(self.classes_)
        self.coef_ = np.zeros((units, n_features))
        self.intercept_ = np.zeros(units)
        if coef_init is not None:
            coef = np.asarray(coef_init, dtype=np.float64)
            if coef.size != units * n_features or (units > 1 and coef.shape != (units,
                                                                                n_features)):
                raise ValueError(f"coef_init has shape {coef.shape}; {len(self.classes_)} "
                                 f"classes and {n_features} features need "
                                 f"({units}, {n_features})")
            self.coef_[...] = coef.reshape(units, n_features)
        if intercept_init is not None:
            intercept = np.asarray(intercept_init, dtype=np.float64)
            if intercept.size != units:
                raise ValueError(f"intercept_init has shape {intercept.shape}; "
                                 f"{len(self.classes_)} classes need ({units},)")
            self.intercept_[...] = intercept.reshape(units)

    # ---------------------------------------------------------------------- prediction
    def decision_function(self, X: Any) -> np.ndarray:
        """Net input ``X . w + b`` of each unit (a vector for two classes)."""
        if not hasattr(self, "coef_"):
            raise exceptions.NotFittedError(
                "This Perceptron instance is not fitted yet. Call 'fit' with appropriate "
                "arguments before using this estimator.")
        check_feature_names(self, X, reset=False)
        X = check_X(X, get_backend("numpy"), np.float64, self.n_features_in_,
                    owner="Perceptron")
        scores = np.asarray(X @ self.coef_.T) + self.intercept_
        return scores.ravel() if scores.shape[1] == 1 else scores

    def predict(self, X: Any) -> np.ndarray:
        """The class of each sample: the positive class where the net input is > 0 (two
        classes), else the class whose unit's net input is largest."""
        scores = self.decision_function(X)
        if scores.ndim == 1:
            return self.classes_[(scores > 0).astype(int)]
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
        save(self, path)

    def to_onnx(self, path: str) -> None:
        """Export as an ONNX file (needs ``gpumlp[onnx]``): float64 ``X`` in, ``predict``'s
        labels and the hard-limit unit outputs out; see :mod:`gpumlp.onnx_export`."""
        export_onnx(self, path)


class _Validation:
    """The early-stopping set: accuracy of one binary problem, weighted by sample_weight."""

    def __init__(self, X: Any, weights: np.ndarray, held_out: np.ndarray):
        index = np.flatnonzero(held_out)
        self.X, self.rows, self.weights = X[index], index, weights[index]

    def score(self, w: np.ndarray, intercept: float, signs: np.ndarray) -> float:
        predicted = np.where(np.asarray(self.X @ w).ravel() + intercept > 0, 1.0, -1.0)
        return float(np.average(predicted == signs[self.rows], weights=self.weights))


def _random_states(random_state: Any) -> np.random.RandomState:
    """A legacy ``RandomState`` as scikit-learn's ``check_random_state`` makes it (NumPy's
    global one for None), so that seeds are drawn as scikit-learn draws them."""
    if random_state is None:
        return np.random.mtrand._rand
    if isinstance(random_state, np.random.RandomState):
        return random_state
    if isinstance(random_state, np.random.Generator):
        return np.random.RandomState(seed_from(random_state))
    return np.random.RandomState(seed_from(random_state))


def _workers(n_jobs: int | None, problems: int) -> int:
    """Threads for ``problems`` independent fits (the epochs release the GIL)."""
    if n_jobs is None:
        return 1
    cores = os.cpu_count() or 1
    wanted = n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs)
    return max(1, min(wanted, problems))
