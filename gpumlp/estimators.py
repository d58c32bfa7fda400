"""scikit-learn-compatible estimators: ``MLPClassifier`` and ``MLPRegressor``.

Parameter names and defaults follow ``sklearn.neural_network`` (solvers ``"lbfgs"``,
``"sgd"`` and ``"adam"``; scikit-learn's Glorot initialisation; ``sample_weight``; sparse
``X``); ``backend``, ``dtype``, ``dropout``, ``callbacks``, ``cuda_graph`` and ``init`` are
additions.  Results follow ``X``: a CuPy input (or any CUDA array, see
:func:`gpumlp.validation.as_array_input`) gives CuPy outputs, a host input NumPy outputs,
whatever backend trains the model.

Examples
--------
>>> import numpy as np
>>> from gpumlp import MLPClassifier
>>> X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 25, dtype=np.float32)
>>> y = np.array([0, 1, 1, 0] * 25)
>>> clf = MLPClassifier((16,), activation="tanh", learning_rate_init=0.05, max_iter=300,
...                     random_state=0, backend="numpy").fit(X, y)
>>> clf.predict([[0, 1], [1, 1]]).tolist()
[1, 0]
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from . import activations, exceptions
from .activations import canonical as canonical_activation
from .backends import BACKEND_NAMES, Backend, backend_for
from .evaluation import r2
from .init import INIT_SCHEMES, initial_parameters
from .io import save
from .lbfgs import minimize_lbfgs
from .model_registry import register_model
from .network import Network, check_dtype
from .onnx_export import export_onnx
from .optim import SCHEDULES, make_optimizer
from .params import ParamsMixin
from .precision import PRECISIONS, check_precision
from .training import GRAPH_MODES, DivergenceError, History, Trainer, check_callbacks
from .validation import (all_finite, as_array_input, block_rows, check_choice,
                         check_classification_targets, check_feature_names, check_label_types,
                         check_finite_numeric, check_float, check_int, check_sample_weight,
                         check_targets, check_X, converted_rows, dense_rows, is_sparse,
                         seed_from)

SOLVERS = ("lbfgs", "sgd", "adam")
#: Rows densified at a time when predicting on sparse ``X``.
_SPARSE_CHUNK = 4096
#: Rows of one forward pass in prediction (the network's work buffers hold this many).
_PREDICT_CHUNK = 4096
#: scikit-learn's names for the output activations.
_OUT_NAMES = {"softmax_xent": "softmax", "sigmoid_bce": "logistic", "squared_error": "identity"}


def __getattr__(name: str) -> Any:
    # ConvergenceWarning is scikit-learn's class when it is installed, resolved on first use.
    if name == "ConvergenceWarning":
        return exceptions.ConvergenceWarning
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _StochasticOnly:
    """Method decorator: the method exists only while ``solver`` is a stochastic one.

    As scikit-learn's ``available_if``: ``hasattr(MLPClassifier(solver="lbfgs"),
    "partial_fit")`` is False, so tools that probe for ``partial_fit`` skip it.
    """

    def __init__(self, method: Any):
        self.method = method
        self.__doc__ = method.__doc__
        self.__name__ = method.__name__

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is not None and obj.solver == "lbfgs":
            raise AttributeError(f"{self.__name__} is only available for the stochastic "
                                 "solvers ('sgd', 'adam'); solver='lbfgs' trains on the whole "
                                 "data in fit")
        return self.method.__get__(obj, owner)


class BaseMLP(ParamsMixin):
    """Shared fitting machinery; see :class:`MLPClassifier` for the parameters."""

    def __init__(self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *,
                 solver: str = "adam", alpha: float = 0.0001, batch_size: Any = "auto",
                 learning_rate: str = "constant", learning_rate_init: float = 0.001,
                 power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
                 random_state: Any = None, tol: float = 1e-4, verbose: bool = False,
                 warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-8, n_iter_no_change: int = 10, max_fun: int = 15000,
                 backend: str | Backend = "auto", dtype: Any = "float32", dropout: float = 0.0,
                 callbacks: Any = None, cuda_graph: str = "auto", init: str = "glorot",
                 precision: str = "float32"):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.backend = backend
        self.dtype = dtype
        self.dropout = dropout
        self.callbacks = callbacks
        self.cuda_graph = cuda_graph
        self.init = init
        self.precision = precision

    # ------------------------------------------------------------------------ validation
    def _hidden_sizes(self) -> list[int]:
        """``hidden_layer_sizes`` as a list of positive ints, or a ``ValueError``."""
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, (int, np.integer)):
            sizes = [sizes]
        elif isinstance(sizes, (list, tuple, np.ndarray)):
            sizes = list(sizes)
        else:  # a float, None, a string...: list() would fail or split a string into chars
            sizes = [None]
        if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0
                   for s in sizes):
            raise ValueError(f"hidden_layer_sizes={self.hidden_layer_sizes!r} must be positive "
                             "integers, e.g. (100,) or (256, 128)")
        return [int(s) for s in sizes]

    def _check_hyperparameters(self) -> list[int]:
        sizes = self._hidden_sizes()
        name = activations.canonical(self.activation)
        if name in activations.INFERENCE_ONLY:
            raise ValueError(f"activation={self.activation!r} cannot be trained by gradient "
                             "descent; use 'relu', 'tanh', 'logistic', 'identity' or "
                             "'leaky_relu' (or gpumlp.Perceptron for hard-limit units)")
        check_choice("solver", self.solver, SOLVERS)
        check_choice("learning_rate", self.learning_rate, SCHEDULES)
        check_float("alpha", self.alpha, 0, np.inf)
        if self.batch_size != "auto":
            check_int("batch_size", self.batch_size, 1)
        check_float("learning_rate_init", self.learning_rate_init, 0, np.inf, low_open=True)
        check_float("power_t", self.power_t, 0, np.inf)
        check_int("max_iter", self.max_iter, 1)
        check_float("tol", self.tol, 0, np.inf)
        check_float("momentum", self.momentum, 0, 1)
        check_float("validation_fraction", self.validation_fraction, 0, 1, True, True)
        check_float("beta_1", self.beta_1, 0, 1, high_open=True)
        check_float("beta_2", self.beta_2, 0, 1, high_open=True)
        check_float("epsilon", self.epsilon, 0, np.inf, low_open=True)
        check_int("n_iter_no_change", self.n_iter_no_change, 1)
        check_int("max_fun", self.max_fun, 1)
        check_choice("init", self.init, INIT_SCHEMES)
        check_float("dropout", self.dropout, 0, 1, high_open=True)
        check_dtype(self.dtype)
        check_choice("precision", self.precision, PRECISIONS)
        check_precision(self.precision, check_dtype(self.dtype))  # tf32 needs float32
        check_choice("cuda_graph", self.cuda_graph, GRAPH_MODES)
        check_callbacks(self.callbacks)
        if not isinstance(self.backend, Backend):
            check_choice("backend", self.backend, BACKEND_NAMES)
        return [int(s) for s in sizes]

    # ------------------------------------------------------------------------------- fit
    def fit(self, X: Any, y: Any, sample_weight: Any = None,
            validation_data: Any = None) -> "BaseMLP":
        """Train on ``X`` and targets ``y``.

        Parameters
        ----------
        X : array-like or sparse matrix, shape (n_samples, n_features)
            NumPy, CuPy, SciPy sparse (densified a batch at a time), or any object with
            ``__cuda_array_interface__`` or ``__dlpack__`` (used without a copy).
        y : array-like, shape (n_samples,) or (n_samples, n_outputs)
        sample_weight : array-like of shape (n_samples,), optional
            Per-sample weights: the loss is the weighted mean over each batch and the L2 term
            is divided by the batch's weight sum, as in scikit-learn.
        validation_data : (X_val, y_val), optional
            Held-out data evaluated after every epoch (stochastic solvers): ``history_``
            then records ``val_loss`` (the loss's data term, no L2) and ``val_score``
            (accuracy, or R^2), and callbacks can monitor them.  It never changes training:
            the weights are those of a fit without it.  Independent of ``early_stopping``,
            which holds out part of ``X`` as scikit-learn does.

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=False, sample_weight=sample_weight,
                         validation_data=validation_data)

    def _fit(self, X: Any, y: Any, incremental: bool, classes: Any = None,
             sample_weight: Any = None, validation_data: Any = None) -> "BaseMLP":
        hidden = self._check_hyperparameters()
        if incremental and self.solver == "lbfgs":
            raise ValueError("partial_fit is only available for the stochastic solvers "
                             "('sgd', 'adam'); solver='lbfgs' trains on the whole data in fit")
        if incremental and self.early_stopping:
            raise ValueError("partial_fit does not support early_stopping=True")
        if validation_data is not None and self.solver == "lbfgs":
            raise ValueError("validation_data is evaluated after every epoch of the stochastic "
                             "solvers ('sgd', 'adam'); solver='lbfgs' has no epochs")
        dtype = check_dtype(self.dtype)
        fitted = hasattr(self, "network_")
        keep = fitted and (incremental or self.warm_start)
        if keep:  # continuing the fitted network: parameters set since must describe it
            self._check_network_matches("continue training (warm_start or partial_fit)")
        check_feature_names(self, X, reset=not keep)
        X = as_array_input(X)
        backend = self.network_.backend if keep else backend_for(X, self.backend)
        owner = type(self).__name__
        X = check_X(X, backend, dtype, self.n_features_in_ if keep else None, owner=owner)
        y = check_targets(y, X.shape[0], owner=owner)
        weights = check_sample_weight(sample_weight, X.shape[0])
        T = self._encode_targets(y, first=not keep, classes=classes,
                                 warm=keep and not incremental)
        if not keep:
            self._build(backend, dtype, [X.shape[1], *hidden, T.shape[1]])
        T = backend.asarray(T, dtype)
        previous = getattr(self, "_trainer_", None)
        new_trainer = not keep or not incremental or previous.optimizer is None
        score = None  # early stopping's validation score, which the trainer is made with
        try:
            validation = self._validation_arrays(validation_data, backend, dtype)
            # The trainer's seed is drawn before the hold-out's, as it always was: a
            # Generator random_state gives each the draw it gave before.
            seed = seed_from(self.random_state) if new_trainer else None
            if self.early_stopping and self.solver != "lbfgs":
                X, T, weights, score = self._hold_out(X, T, y, weights)
        except (TypeError, ValueError):
            if not keep:  # nothing was trained: the new network must not look fitted
                del self.network_
            raise
        if new_trainer:
            if previous is not None:  # its captured graphs can serve the new trainer
                previous.release()
            self._trainer_ = self._make_trainer(previous=previous if keep else None,
                                                validation=score, seed=seed)
        elif self._step_settings_changed(previous):  # set_params between partial_fit calls
            self._trainer_ = previous.continued(batch_size=self._configured_batch_size(),
                                                alpha=float(self.alpha),
                                                dropout=float(self.dropout))
        trainer = self._trainer_
        # n_iter_ counts this call's epochs, as scikit-learn's does (1 after partial_fit)
        self._epochs_before_call = trainer.history.n_iter
        try:
            if self.solver == "lbfgs":
                self._fit_lbfgs(X, T, weights)
            elif incremental:
                self._batch_size(X.shape[0])  # warns where it is clipped to the rows
                trainer.run_epoch(X, T, sample_weight=weights, owner=self)
            else:
                self._batch_size(X.shape[0])  # warns where it is clipped to the rows
                # owner: callbacks that save the model see it during this fit only
                history = trainer.fit(X, T, self.max_iter, sample_weight=weights,
                                      validation_data=validation, owner=self)
                if history.stop_reason == "max_iter":
                    warnings.warn(f"{owner}: max_iter={self.max_iter} reached and the "
                                  "optimisation has not converged yet",
                                  exceptions.ConvergenceWarning,
                                  stacklevel=3)  # the caller of fit, not fit itself
        except DivergenceError:
            if not keep:  # no finite epoch: untrained weights must not look fitted
                del self.network_, self._trainer_
            raise
        return self

    def _validation_arrays(self, validation_data: Any, backend: Backend,
                           dtype: np.dtype) -> tuple[Any, Any] | None:
        """``validation_data`` checked like ``X`` and ``y`` (errors name it) and encoded as
        backend arrays ``(X_val, T_val)``, made once per fit."""
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            got = (f"a {type(validation_data).__name__} of {len(validation_data)} item(s)"
                   if isinstance(validation_data, (tuple, list)) else _short(validation_data))
            raise ValueError(f"validation_data must be a pair (X_val, y_val); got {got}")
        owner = type(self).__name__
        try:  # a frame's columns in another order would feed its values to the wrong inputs
            with warnings.catch_warnings():  # names on one side only: nothing is misread
                warnings.simplefilter("ignore", UserWarning)
                check_feature_names(self, validation_data[0], reset=False)
        except ValueError as exc:
            raise ValueError(f"validation_data[0] (X_val): {exc}") from None
        X_val = check_X(as_array_input(validation_data[0], "validation_data[0] (X_val)"),
                        backend, dtype, self.n_features_in_,
                        name="validation_data[0] (X_val)", owner=owner)
        if validation_data[1] is None:
            raise ValueError("validation_data[1] (y_val) is None; give the targets of X_val")
        try:
            y_val = check_targets(validation_data[1], X_val.shape[0],
                                  name="validation_data[1] (y_val)", owner=owner)
        except ValueError as exc:
            raise ValueError(str(exc).replace("but X has", "but validation_data[0] (X_val) "
                                              "has")) from None
        try:
            T_val = self._encode_targets(y_val, first=False, classes=None)
        except ValueError as exc:
            raise ValueError(f"validation_data[1] (y_val): {exc}") from None
        return dense_rows(X_val, backend, dtype), backend.asarray(T_val, dtype)

    def _configured_batch_size(self) -> int:
        """Rows per step before clipping to the data: 200 for ``"auto"``."""
        return 200 if self.batch_size == "auto" else int(self.batch_size)

    def _step_settings_changed(self, trainer: Trainer) -> bool:
        return (trainer.batch_size, trainer.alpha, trainer.dropout) != (
            self._configured_batch_size(), float(self.alpha), float(self.dropout))

    def _batch_size(self, n: int) -> int:
        """Rows per step: ``min(200, n)`` for ``"auto"``, else ``batch_size`` clipped to ``n``
        (with scikit-learn's warning)."""
        if self.batch_size == "auto":
            return min(200, n)
        if self.batch_size > n:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is "
                          f"going to be clipped (batch_size={self.batch_size}, {n} samples)",
                          UserWarning, stacklevel=4)
        return min(int(self.batch_size), n)

    def _fit_lbfgs(self, X: Any, T: Any, weights: np.ndarray | None) -> None:
        """Full-batch L-BFGS over the flat parameter buffer (see :mod:`gpumlp.lbfgs`)."""
        net = self.network_
        X = dense_rows(X, net.backend, net.dtype)
        result = minimize_lbfgs(net, X, T, alpha=float(self.alpha), sample_weight=weights,
                                max_iter=self.max_iter, max_fun=self.max_fun, tol=self.tol,
                                verbose=bool(self.verbose))
        self._trainer_.history.record_run(result.loss, result.n_iter,
                                          X.shape[0] * result.n_fun, result.converged)
        if not result.converged:
            warnings.warn(f"{type(self).__name__}: lbfgs failed to converge after "
                          f"{result.n_iter} iteration(s) ({result.message}); increase "
                          "max_iter or max_fun, or scale the data",
                          exceptions.ConvergenceWarning, stacklevel=4)

    def _build(self, backend: Backend, dtype: np.dtype, sizes: list[int],
               hidden_activations: list[str] | None = None, precision: str | None = None,
               initialize: bool = True) -> None:
        """A new network of ``sizes``; ``hidden_activations`` and ``precision`` default to the
        parameters'. ``initialize=False`` (loading) leaves the weights zero, to be set."""
        seed = seed_from(self.random_state) if initialize else None
        if hidden_activations is None:
            hidden_activations = [canonical_activation(self.activation)] * (len(sizes) - 2)
        self.network_ = Network(sizes, hidden_activations, self._loss_name, dtype=dtype,
                                backend=backend, seed=seed,
                                precision=self.precision if precision is None else precision,
                                initialize=initialize)
        if initialize and self.init != "he":  # Network draws "he"; others are set over it
            self.network_.set_flat_params(initial_parameters(
                self.init, sizes, hidden_activations, seed, dtype))
        self.n_features_in_ = sizes[0]
        self.n_outputs_ = sizes[-1]
        self.n_layers_ = len(sizes)
        self.out_activation_ = _OUT_NAMES[self._loss_name]

    def _make_trainer(self, previous: Trainer | None, optimizer: bool = True,
                      validation: Any = None, history: History | None = None,
                      seed: int | None = None) -> Trainer:
        """A trainer of the network that goes on from ``previous`` (a warm start: its history
        and step count, a new optimizer) or from ``history`` (a loaded model), scoring
        ``validation(network)`` for early stopping; ``optimizer=False`` (a loaded model)
        leaves its optimizer to be made by the first ``partial_fit``.  ``seed``: drawn from
        ``random_state`` where not given."""
        net = self.network_
        optimizer = None if self.solver == "lbfgs" or not optimizer else make_optimizer(
            self.solver, net.backend, net.params, learning_rate_init=self.learning_rate_init,
            momentum=self.momentum, nesterov=self.nesterovs_momentum,
            schedule=self.learning_rate, power_t=self.power_t, total_epochs=self.max_iter,
            beta_1=self.beta_1,
            beta_2=self.beta_2, epsilon=self.epsilon)
        trainer = Trainer(net, optimizer, batch_size=self._configured_batch_size(),
                          alpha=float(self.alpha), dropout=float(self.dropout),
                          shuffle=self.shuffle,
                          seed=seed_from(self.random_state) if seed is None else seed,
                          tol=self.tol,
                          n_iter_no_change=self.n_iter_no_change,
                          callbacks=self.callbacks, verbose=bool(self.verbose),
                          cuda_graph=self.cuda_graph, validation=validation,
                          history=previous.history if previous is not None else history,
                          step_count=previous.step_count if previous is not None else 0)
        return trainer

    def _hold_out(self, X: Any, T: Any, y: np.ndarray, weights: np.ndarray | None) -> tuple:
        """Split off ``validation_fraction`` of the data (stratified for classifiers).

        Returns the training ``X``, ``T`` and weights, and the validation score function
        (weighted when ``weights`` are given, as scikit-learn scores it).
        """
        rng = np.random.default_rng(seed_from(self.random_state))
        n = X.shape[0]
        n_val = max(1, int(round(self.validation_fraction * n)))
        if n - n_val < 1:
            raise ValueError(f"validation_fraction={self.validation_fraction} leaves no "
                             f"training samples out of {n}")
        val = self._validation_indices(y, n_val, rng)
        if val.size == 0:
            raise ValueError("early_stopping=True needs a validation row, but every class has "
                             "a single sample; add samples or set early_stopping=False")
        if weights is not None and not np.asarray(weights)[val].sum() > 0:
            raise ValueError("early_stopping=True: the sample_weight of every validation row "
                             "is zero, so no validation score can be computed")
        train = np.setdiff1d(np.arange(n), val)
        backend = self.network_.backend
        val_d, train_d = backend.xp.asarray(val), backend.xp.asarray(train)
        X_index = (val, train) if is_sparse(X) else (val_d, train_d)
        X_val = dense_rows(X[X_index[0]], backend, self.network_.dtype)
        T_val = T[val_d]
        w_val, w_train = (None, None) if weights is None else (weights[val], weights[train])
        return X[X_index[1]], T[train_d], w_train, lambda net: self._score_outputs(
            net.predict_output(X_val), T_val, w_val)

    def _validation_indices(self, y: np.ndarray, n_val: int, rng: np.random.Generator):
        return rng.permutation(len(y))[:n_val]

    # ---------------------------------------------------------------------- fitted state
    def _check_network_matches(self, action: str) -> None:
        """Refuse to ``action`` when a parameter that defines the network (set with
        ``set_params`` after ``fit``) disagrees with the fitted network, which would silently
        ignore it; a new ``fit`` (without warm_start) builds a network that applies it."""
        net = self.network_
        fitted = {"hidden_layer_sizes": tuple(net.sizes[1:-1]), "dtype": net.dtype,
                  "precision": net.precision}
        try:
            now = {"hidden_layer_sizes": tuple(self._hidden_sizes()),
                   "dtype": check_dtype(self.dtype), "precision": self.precision}
            if net.hidden_activations:
                fitted["activation"] = net.hidden_activations[0]
                now["activation"] = canonical_activation(self.activation)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"cannot {action}: {exc}") from None
        for name, value in fitted.items():
            if now[name] != value:
                shown = value.name if isinstance(value, np.dtype) else value
                raise ValueError(
                    f"cannot {action}: {name}={getattr(self, name)!r} was set after fit and "
                    f"does not match the fitted network ({name}={shown!r}); call fit with "
                    f"warm_start=False to train a network with it, or set it back to "
                    f"{shown!r}")

    def _check_fitted(self) -> None:
        if not hasattr(self, "network_"):
            raise exceptions.NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator.")

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "network_")

    @property
    def coefs_(self) -> list:
        """Weight matrices ``(n_in, n_out)`` per layer (views of the parameter buffer)."""
        self._check_fitted()
        return list(self.network_.weights)

    @property
    def intercepts_(self) -> list:
        self._check_fitted()
        return list(self.network_.biases)

    @property
    def loss_curve_(self) -> list[float]:
        """Mean training loss of each epoch, L2 term included, as scikit-learn reports it
        (the L2 term of each batch is taken with the weights that batch started from).
        Absent with ``solver="lbfgs"``, as in scikit-learn."""
        self._check_fitted()
        if self.solver == "lbfgs":
            raise AttributeError("loss_curve_ is recorded by the stochastic solvers only; "
                                 "solver='lbfgs' has loss_")
        return list(self._trainer_.history.loss)

    @property
    def history_(self) -> dict[str, list[float]]:
        """Per-epoch record of training, one entry per epoch in each list: ``loss`` (as
        ``loss_curve_``), ``lr`` (the step size the epoch trained with), ``epoch_seconds``
        and ``samples_per_second`` (training alone: evaluation and callbacks excluded), and
        with ``fit(..., validation_data=...)`` ``val_loss`` and ``val_score`` (accuracy, or
        R^2 for the regressor).  Absent with ``solver="lbfgs"``, which has no epochs."""
        self._check_fitted()
        if self.solver == "lbfgs":
            raise AttributeError("history_ is recorded by the stochastic solvers only; "
                                 "solver='lbfgs' has loss_")
        return {name: list(values) for name, values in self._trainer_.history.metrics.items()}

    @property
    def loss_(self) -> float:
        """The last epoch's training loss (lbfgs: the loss at the solution)."""
        self._check_fitted()
        return self._trainer_.history.loss[-1]

    @property
    def best_loss_(self) -> float | None:
        self._check_fitted()
        return None if self.early_stopping else self._trainer_.history.best_loss

    @property
    def validation_scores_(self) -> list[float] | None:
        self._check_fitted()
        return list(self._trainer_.history.validation_score) if self.early_stopping else None

    @property
    def best_validation_score_(self) -> float | None:
        self._check_fitted()
        history = self._trainer_.history
        return history.best_validation_score if self.early_stopping else None

    @property
    def n_iter_(self) -> int:
        """Epochs of the last ``fit`` or ``partial_fit`` call (1 after ``partial_fit``; a
        warm-started fit counts its own), as scikit-learn counts them; ``loss_curve_`` keeps
        every epoch."""
        self._check_fitted()
        return self._trainer_.history.n_iter - getattr(self, "_epochs_before_call", 0)

    @property
    def t_(self) -> int:
        self._check_fitted()
        return self._trainer_.history.samples_seen

    def _outputs(self, X: Any) -> tuple[Any, bool]:
        """Network outputs for ``X`` and whether the caller gave a host array."""
        self._check_fitted()
        net = self.network_
        backend = net.backend
        check_feature_names(self, X, reset=False)
        X = as_array_input(X)
        on_host = backend.arrays_on_host or not backend.owns(X)
        self._check_network_matches("predict")
        owner = type(self).__name__
        if on_host and not is_sparse(X):
            out = self._host_outputs(check_X(X, backend, net.dtype, self.n_features_in_,
                                             owner=owner, convert=False))
        else:
            given = X
            X = check_X(X, backend, net.dtype, self.n_features_in_, owner=owner)
            if not is_sparse(X):  # a device array seen again replays a captured forward
                out = net.predict_output(X, reuse=X is given)
            else:
                out = backend.xp.concatenate([
                    net.predict_output(dense_rows(X[start:start + _SPARSE_CHUNK], backend,
                                                  net.dtype), reuse=False)
                    for start in range(0, X.shape[0], _SPARSE_CHUNK)])
        if not all_finite(out, backend.xp):  # finite inputs and weights: an overflow
            raise ValueError(f"X has values too large for this network: its outputs "
                             f"overflow {net.dtype.name}. Scale X (e.g. with StandardScaler) "
                             "to the range it was fitted on")
        return out, on_host

    def _host_outputs(self, X: np.ndarray) -> Any:
        """Outputs for a checked host ``X`` (a memory map, say), converted and run a block
        of rows at a time into one output array: memory is the output plus a fixed working
        set, whatever the number of rows. Blocks are whole multiples of the forward's own
        chunk, so results are those of one call on the whole array."""
        net = self.network_
        out = net.backend.empty((X.shape[0], net.sizes[-1]), net.dtype)
        per_block = block_rows(X.shape[1] * max(X.dtype.itemsize, net.dtype.itemsize),
                               _PREDICT_CHUNK)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused by name
            for start in range(0, X.shape[0], per_block):
                rows = converted_rows(X, start, start + per_block, net.backend, net.dtype)
                out[start:start + rows.shape[0]] = net.predict_output(rows, _PREDICT_CHUNK,
                                                                      reuse=False)
        return out

    def save(self, path: str) -> None:
        """Save the fitted model (arrays plus JSON metadata, no pickle; atomic write)."""
        save(self, path)

    def to_onnx(self, path: str) -> None:
        """Export the fitted model as an ONNX file (needs ``gpumlp[onnx]``; atomic write).

        The graph takes ``X`` in the model's dtype and returns ``predict_proba`` and
        ``predict`` (classifier) or ``predict`` (regressor); see :mod:`gpumlp.onnx_export`.
        """
        export_onnx(self, path)


@register_model
class MLPClassifier(BaseMLP):
    """Multilayer perceptron classifier (softmax + cross-entropy; sigmoid for binary).

    Parameters are those of ``sklearn.neural_network.MLPClassifier`` (solvers ``"lbfgs"``,
    ``"sgd"`` and ``"adam"``, with ``max_fun`` for lbfgs), plus ``backend`` (``"auto"``,
    ``"numpy"``, ``"cupy"``), ``dtype`` (``"float32"`` default), ``dropout``
    (inverted-dropout rate of hidden layers), ``callbacks`` (a list of :mod:`gpumlp.callbacks`
    objects, or functions ``callback(epoch, history)`` whose truthy return stops training),
    ``cuda_graph`` (``"auto"``: on the CuPy backend each step
    is a replayed CUDA graph; ``"on"`` insists, ``"off"`` runs eagerly) and ``init``
    (``"glorot"``, scikit-learn's: weights and biases uniform in ``±sqrt(6/(fan_in +
    fan_out))``, drawn as scikit-learn draws them so an integer ``random_state`` gives its
    very initial weights; ``"he"``: He-uniform weights for rectifiers and zero biases, the
    command line's recipe) and ``precision`` (``"float32"`` default; ``"tf32"``, with float32
    only, runs the matrix products on TF32 tensor cores on the CuPy backend, GPUs of compute
    capability 8.0+: inputs rounded to 10 mantissa bits, float32 accumulation.  TF32 is a
    GPU tensor-core mode; the NumPy backend emulates its rounding, for its accuracy, not its
    speed; see :mod:`gpumlp.precision`).  ``learning_rate`` also takes ``"cosine"``, and every schedule
    applies to Adam as well as SGD.

    Targets must be discrete labels (a continuous ``y`` raises "Unknown label type"), or a
    0/1 indicator matrix for multilabel classification.
    """

    _estimator_type = "classifier"
    _multi_label = True

    @property
    def _loss_name(self) -> str:
        return "softmax_xent" if self._multiclass else "sigmoid_bce"

    @_StochasticOnly
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None,
                    classes: Any = None) -> "MLPClassifier":
        """One epoch over ``X, y`` (weighted by ``sample_weight``, optional).

        ``classes`` (every label that will ever appear) is required on the first call; given
        again later, it must name the same classes.
        """
        fitted = hasattr(self, "network_")
        if classes is not None:
            check_label_types(np.asarray(classes), "classes")
        if not fitted and classes is None:
            raise ValueError("classes must be given on the first call to partial_fit "
                             "(every label that will ever appear)")
        if fitted and classes is not None and not np.array_equal(
                np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes={np.asarray(classes).tolist()!r} is not the same as on "
                             f"the first call to partial_fit, which gave "
                             f"{self.classes_.tolist()!r}; the classes cannot change")
        return self._fit(X, y, incremental=True, classes=classes, sample_weight=sample_weight)

    def _encode_targets(self, y: np.ndarray, first: bool, classes: Any,
                        warm: bool = False) -> np.ndarray:
        check_classification_targets(y)
        if y.ndim == 2:  # multilabel indicator matrix
            if first:
                self.classes_ = np.arange(y.shape[1])
                self._multiclass, self._multilabel = False, True
            elif not self._multilabel or y.shape[1] != len(self.classes_):
                raise ValueError(f"y has shape {y.shape}; the model was fitted on "
                                 f"{len(self.classes_)} labels")
            return y.astype(np.float64)
        if first:
            labels = np.unique(y if classes is None else np.asarray(classes))
            if labels.size < 2:
                raise ValueError(f"y has only one class {labels.tolist()}; a classifier needs "
                                 "samples of at least two classes")
            self.classes_ = labels
            self._multiclass = labels.size > 2
            self._multilabel = False
        elif warm and not np.array_equal(np.unique(y), self.classes_):
            raise ValueError(f"warm_start can only be used where y has the same classes as "
                             f"in the previous call to fit: previously "
                             f"{self.classes_.tolist()!r}, y has {np.unique(y).tolist()!r}")
        unknown = np.setdiff1d(np.unique(y), self.classes_)
        if unknown.size:
            raise ValueError(f"y contains labels {unknown.tolist()[:10]} not among the known "
                             f"classes {self.classes_.tolist()[:20]}")
        index = np.searchsorted(self.classes_, y)
        if self._multiclass:
            return np.eye(len(self.classes_))[index]
        return (index == 1).astype(np.float64)[:, None]

    def _validation_indices(self, y: np.ndarray, n_val: int, rng: np.random.Generator):
        if y.ndim == 2:
            return super()._validation_indices(y, n_val, rng)
        # Stratified: exactly n_val rows (fewer only when every class is down to one training
        # row), each class in proportion to its frequency, the largest remainders rounded up.
        labels, counts = np.unique(y, return_counts=True)
        quota = counts * n_val / len(y)
        take = np.minimum(np.floor(quota).astype(int), counts - 1)
        while take.sum() < n_val and (take < counts - 1).any():
            shortfall = np.where(take < counts - 1, quota - take, -np.inf)
            take[np.argmax(shortfall)] += 1
        picks = [rng.permutation(np.flatnonzero(y == label))[:k]
                 for label, k in zip(labels, take)]
        return np.sort(np.concatenate(picks))

    def _score_outputs(self, output: Any, T: Any, weights: np.ndarray | None = None) -> float:
        if self._multiclass:
            correct = output.argmax(axis=1) == T.argmax(axis=1)
        else:
            correct = ((output > 0.5) == (T > 0.5)).all(axis=1)
        correct = self.network_.backend.to_numpy(correct)
        return float(np.average(correct, weights=weights))

    def predict_proba(self, X: Any) -> Any:
        """Class probabilities, shape ``(n_samples, n_classes)``."""
        out, on_host = self._outputs(X)
        if not self._multiclass and not self._multilabel:
            out = self.network_.backend.xp.concatenate([1 - out, out], axis=1)
        return self.network_.backend.to_numpy(out) if on_host else out

    def predict_log_proba(self, X: Any) -> Any:
        """``log(predict_proba(X))`` (``-inf`` where a probability underflowed to 0, as in
        scikit-learn)."""
        proba = self.predict_proba(X)
        xp = np if isinstance(proba, np.ndarray) else self.network_.backend.xp
        with np.errstate(divide="ignore"):
            return xp.log(proba)

    def predict(self, X: Any) -> Any:
        """Predicted labels (indicator matrix for multilabel)."""
        proba = self.predict_proba(X)
        if self._multilabel:
            return (proba > 0.5).astype(int)
        index = proba.argmax(axis=1)
        if isinstance(index, np.ndarray):
            return self.classes_[index]
        if self.classes_.dtype.kind in "biuf":
            return self.network_.backend.xp.asarray(self.classes_)[index]
        return self.classes_[self.network_.backend.to_numpy(index)]

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Mean accuracy (subset accuracy for multilabel)."""
        predicted = self.network_.backend.to_numpy(self.predict(X)) if hasattr(
            self, "network_") else self.predict(X)
        y = check_targets(y, predicted.shape[0], warn_column=False)
        correct = (predicted == y) if predicted.ndim == 1 else (predicted == y).all(axis=1)
        weights = check_sample_weight(sample_weight, len(correct))
        return float(np.average(correct, weights=weights))


@register_model
class MLPRegressor(BaseMLP):
    """Multilayer perceptron regressor: identity output and squared error.

    Parameters as :class:`MLPClassifier`.
    """

    _estimator_type = "regressor"
    _loss_name = "squared_error"

    @_StochasticOnly
    def partial_fit(self, X: Any, y: Any, sample_weight: Any = None) -> "MLPRegressor":
        """One epoch over ``X, y`` (continues from the current weights)."""
        return self._fit(X, y, incremental=True, sample_weight=sample_weight)

    def _encode_targets(self, y: np.ndarray, first: bool, classes: Any,
                        warm: bool = False) -> np.ndarray:
        y = check_finite_numeric(y)
        if first:
            self._y_1d = y.ndim == 1
        T = y.reshape(len(y), -1).astype(np.float64)
        if not first and T.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {T.shape[1]} outputs; the model was fitted with "
                             f"{self.n_outputs_}")
        return T

    def _score_outputs(self, output: Any, T: Any, weights: np.ndarray | None = None) -> float:
        xp = self.network_.backend.xp
        return _r2(xp, output, T, None if weights is None else xp.asarray(weights))

    def predict(self, X: Any) -> Any:
        out, on_host = self._outputs(X)
        out = self.network_.backend.to_numpy(out) if on_host else out
        return out.ravel() if self._y_1d else out

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Coefficient of determination R^2 (averaged over outputs)."""
        predicted = self.predict(X)  # first: raises the not-fitted error before network_ is read
        predicted = np.asarray(self.network_.backend.to_numpy(predicted))
        y = check_targets(y, predicted.shape[0], warn_column=False).astype(np.float64)
        weights = check_sample_weight(sample_weight, len(y))
        return _r2(np, predicted.reshape(len(y), -1), y.reshape(len(y), -1), weights)


def _r2(xp: Any, predicted: Any, target: Any, sample_weight: Any = None) -> float:
    """R^2 per output column, averaged; a constant column scores 0 (as scikit-learn)."""
    return float(r2(xp, predicted, target, sample_weight))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{type(value).__name__} {text[:50]}..."
