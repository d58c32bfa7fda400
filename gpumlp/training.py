"""The training loop: minibatches, loss history, early stopping, divergence and callbacks.

Each epoch is timed from its first step to the host's read of its loss; evaluating the
validation data and running callbacks come after that, so ``epoch_seconds`` and
``samples_per_second`` in :attr:`History.metrics` are the training's alone.  Evaluating the
validation data reads neither the training data nor the trainer's random generator, so a
fit with ``validation_data`` trains exactly as one without.

The step itself (gather a batch, forward, loss, backward, update) allocates nothing and never
waits for the device: the trainer owns its batch and work buffers, made once per batch size
(at most the two sizes of the current epoch are kept, and none is pickled), and the epoch's
loss is summed on the device and read once at the end of the epoch.  Everything that needs a host
decision (schedules, early stopping, callbacks, divergence) happens at epoch granularity.  The
eager steps run in a run of the backend's (:meth:`gpumlp.backends.base.Backend.open_run`: on a
GPU its step scalars and split-K scratch), one per :meth:`Trainer.fit` or
:meth:`Trainer.run_epoch` call, opened when the call starts and closed when it ends however it
ends (a stop, a divergence, an exception), so no epoch pays for making that state and a
finished fit leaves none of it behind.

Examples
--------
>>> import numpy as np
>>> from gpumlp.network import Network
>>> from gpumlp.optim import Adam
>>> from gpumlp.training import Trainer
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(64, 2)).astype(np.float32)
>>> T = np.eye(2, dtype=np.float32)[(X[:, 0] > 0).astype(int)]
>>> net = Network([2, 8, 2], seed=0, backend="numpy")
>>> history = Trainer(net, Adam(net.backend, net.params, 0.01), batch_size=16).fit(X, T, 5)
>>> len(history.loss)
5
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .backends.base import StepGraphs
from .evaluation import evaluate
from .network import Network
from .step import StepBuffers, StepSettings, TrainingStep
from .validation import is_sparse

#: ``cuda_graph`` values: replay captured steps where measured faster, always, or never.
GRAPH_MODES = ("auto", "on", "off")

#: ``callback(epoch, history)`` runs after every epoch; returning True stops training.  An
#: object with ``on_epoch_end`` instead follows the hooks of :class:`gpumlp.callbacks.Callback`.
Callback = Callable[[int, "History"], Any]


class DivergenceWarning(RuntimeWarning):
    """Training stopped because the loss became NaN or infinite."""


class DivergenceError(FloatingPointError):
    """The loss became NaN or infinite before any epoch of the run completed.

    The parameters are left as they were before the run (untrained, for a fresh network):
    there is no finite epoch whose weights could be kept.
    """


@dataclass
class History:
    """Per-epoch record of a training run."""

    loss: list[float] = field(default_factory=list)
    validation_score: list[float] = field(default_factory=list)
    best_loss: float = math.inf
    best_validation_score: float = -math.inf
    n_iter: int = 0
    samples_seen: int = 0
    stop_reason: str | None = None
    #: Per-epoch values by name, one entry per epoch: ``loss``, ``lr`` (the step size the
    #: epoch trained with), ``epoch_seconds`` and ``samples_per_second`` (training only), and
    #: with validation data ``val_loss`` and ``val_score`` (accuracy, or R^2 for regression).
    metrics: dict[str, list[float]] = field(default_factory=dict)

    def record(self, values: dict[str, float]) -> None:
        """Append one epoch's ``values``; a name missing from this epoch or from earlier
        ones (a warm-started fit with validation data after one without) gets NaN there."""
        epochs = max((len(column) for column in self.metrics.values()), default=0)
        for name in values:
            self.metrics.setdefault(name, [math.nan] * epochs)
        for name, column in self.metrics.items():
            column.append(float(values.get(name, math.nan)))

    def record_run(self, loss: float, iterations: int, samples: int, converged: bool) -> None:
        """Record a run trained outside the epoch loop (full-batch L-BFGS): ``iterations``
        iterations that evaluated ``samples`` samples in all and ended at ``loss``."""
        self.n_iter += iterations
        self.samples_seen += samples
        self.loss.append(loss)
        self.best_loss = min(self.best_loss, loss)
        self.stop_reason = "converged" if converged else "max_iter"


class Trainer:
    """Runs epochs of minibatch training of a :class:`Network` with an optimizer.

    Parameters
    ----------
    network, optimizer
        The model and an :mod:`gpumlp.optim` optimizer over ``network.params``.
    batch_size : int
        Rows per step (at most the rows of the data); the last batch of an epoch holds the
        remainder (never dropped).
    alpha : float
        L2 penalty; each weight gradient gets ``alpha / batch * W`` as in scikit-learn.
    dropout : float
        Inverted-dropout rate of the hidden layers during training, in ``[0, 1)``.
    shuffle, seed
        Reshuffle every epoch, from a generator seeded once.
    tol, n_iter_no_change
        Stop (or, with the adaptive schedule, shrink the step) after ``n_iter_no_change``
        epochs without an improvement of at least ``tol``.
    validation : callable or None
        ``validation(network) -> float``, a score on held-out data (higher is better);
        enables early stopping on it, and the best weights are restored at the end.
    callbacks : sequence
        ``callback(epoch, history)`` functions, run after every epoch (a truthy return stops
        training), or objects with the hooks of :class:`gpumlp.callbacks.Callback`, which
        receive this trainer (its ``network``, ``optimizer``, ``history`` and ``owner``,
        the estimator given to :meth:`fit` or :meth:`run_epoch`, if any).
    cuda_graph : {"auto", "on", "off"}
        Capture whole steps as CUDA graphs and replay them (the CuPy backend; see the
        backend's capture protocol, :meth:`gpumlp.backends.base.Backend.capture_steps`):
        ``auto`` where it applies and is measured faster, ``on`` insists, ``off`` runs eagerly.
    history, step_count
        Where a run goes on from another (a warm start, or a model loaded from a file): the
        history to append to (its ``stop_reason`` is cleared) and the number of steps made,
        which numbers the dropout masks of the steps to come.

    Everything is configured here: nothing outside the trainer assigns its attributes.
    """

    def __init__(self, network: Network, optimizer: Any, batch_size: int = 200,
                 alpha: float = 0.0, dropout: float = 0.0, shuffle: bool = True,
                 seed: int | None = 0, tol: float = 1e-4, n_iter_no_change: int = 10,
                 validation: Callable[[Network], float] | None = None,
                 callbacks: Sequence[Callback] = (),
                 verbose: bool = False, cuda_graph: str = "auto",
                 history: History | None = None, step_count: int = 0):
        self.network = network
        self.optimizer = optimizer
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.rng = np.random.default_rng(seed)
        #: The one definition of a step, which every way of training runs.
        self.step = TrainingStep(network, optimizer, StepSettings(
            float(alpha), float(dropout), int(self.rng.integers(0, 2**63 - 1))))
        self.tol = tol
        self.n_iter_no_change = n_iter_no_change
        self.callbacks = check_callbacks(callbacks)
        self.verbose = verbose
        #: The estimator training through this trainer during :meth:`fit` or
        #: :meth:`run_epoch` (``owner=``), for callbacks that save it; None outside them.
        self.owner: Any = None
        #: The epoch budget of the current :meth:`fit` (None outside one, as in partial_fit).
        self.epochs: int | None = None
        #: Rows of the epoch being trained (for progress within it).
        self.epoch_samples = 0
        self._validation_data: tuple[Any, Any] | None = None
        if cuda_graph not in GRAPH_MODES:
            raise ValueError(f"cuda_graph={cuda_graph!r} is not valid; choose one of "
                             f"{GRAPH_MODES}")
        self.cuda_graph = cuda_graph
        self._capture_failed = False  # the driver refused a capture: eager from then on
        self._graph_runner: StepGraphs | None = None
        self.history = History() if history is None else history
        self.history.stop_reason = None  # a new run: how the last one ended is not this one's
        self.step_count = int(step_count)
        self._no_improvement = 0
        self._step_buffers: dict[int, StepBuffers] = {}
        # The parameters of the last finite epoch, copied when the first epoch starts (a
        # loaded model that only predicts never needs the copy).
        self._last_good: Any = None
        self.set_validation(validation)

    @property
    def alpha(self) -> float:
        return self.step.settings.alpha

    @property
    def dropout(self) -> float:
        return self.step.settings.dropout

    @property
    def dropout_seed(self) -> int:
        return self.step.settings.dropout_seed

    @property
    def step_graphs(self) -> StepGraphs | None:
        """The runner of this trainer's captured steps
        (:meth:`gpumlp.backends.base.Backend.capture_steps`) where its last epoch replayed
        them, else None; kept between :meth:`run_epoch` calls, released at the end of
        :meth:`fit` (read-only: the trainer decides when to capture)."""
        return self._graph_runner

    def continued(self, batch_size: int, alpha: float, dropout: float) -> "Trainer":
        """A trainer that goes on from this one (history, step count, optimizer, shuffling
        and dropout streams) with other step settings; this one is released."""
        self.release()
        twin = copy.copy(self)
        twin.batch_size = int(batch_size)
        twin.step = TrainingStep(self.network, self.optimizer,
                                 StepSettings(float(alpha), float(dropout), self.dropout_seed))
        twin._step_buffers = {}
        twin._graph_runner = None
        return twin

    def set_validation(self, validation: Callable[[Network], float] | None) -> None:
        """Use ``validation(network) -> score`` for early stopping (``None``: the loss)."""
        self.validation = validation
        self._best = None
        if validation is not None:  # start from the current weights: a refit may not improve
            self._best = self.network.backend.empty(self.network.params.shape,
                                                    self.network.dtype)
            self._best[...] = self.network.params

    # --------------------------------------------------------------------------------- fit
    def fit(self, X: Any, T: Any, epochs: int, sample_weight: Any = None,
            validation_data: tuple[Any, Any] | None = None, owner: Any = None) -> History:
        """Train for up to ``epochs`` epochs on backend arrays ``X`` and targets ``T``.

        ``X`` may also be a SciPy CSR matrix (densified a batch at a time) and
        ``sample_weight`` a host array of per-sample weights (see :meth:`run_epoch`).
        ``validation_data=(X_val, T_val)`` (arrays shaped like ``X`` and ``T``) is evaluated
        after every epoch into ``history.metrics["val_loss"]`` and ``["val_score"]``.
        ``owner`` is the estimator training through this fit, which callbacks see as
        :attr:`owner`.  The batch and work buffers are released at the end (see
        :meth:`release`).
        """
        self._validation_data = self._checked_validation_data(validation_data)
        self.epochs = int(epochs)
        self.owner = owner
        run = self.network.backend.open_run(self.network.dtype)  # the eager epochs' state
        try:
            self._call_hooks("on_train_begin")
            for epoch in range(epochs):
                # X and T stay as they are during a fit: the graphs' copy is made once.
                if not self._run_epoch(X, T, sample_weight, run, new_data=epoch == 0):
                    break
            else:
                self.history.stop_reason = self.history.stop_reason or "max_iter"
            if self._best is not None and self.history.validation_score:
                self.network.params[...] = self._best
            self._call_hooks("on_train_end")
        finally:
            run.close()
            self._validation_data = None
            self.epochs = None
            self.owner = None  # no reference cycle left behind
            self.release()
        return self.history

    def _checked_validation_data(self, validation_data: Any) -> tuple[Any, Any] | None:
        """``(X_val, T_val)`` as arrays of the network's backend and dtype, shapes checked."""
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a pair (X_val, T_val); got "
                             f"{type(validation_data).__name__}")
        backend, dtype = self.network.backend, self.network.dtype
        X_val, T_val = (backend.asarray(part, dtype) for part in validation_data)
        expected = (self.network.sizes[0], self.network.sizes[-1])
        if (X_val.ndim, T_val.ndim) != (2, 2) or (X_val.shape[1], T_val.shape[1]) != expected \
                or X_val.shape[0] != T_val.shape[0] or X_val.shape[0] == 0:
            raise ValueError(f"validation_data holds X_val of shape {X_val.shape} and T_val of "
                             f"shape {T_val.shape}; this network needs (n, {expected[0]}) and "
                             f"(n, {expected[1]}) with the same n >= 1")
        return X_val, T_val

    def release(self) -> None:
        """Free the batch and work buffers; the captured graphs wait idle for the next fit
        of the same step (``gpumlp.graph_pool.clear()`` frees them)."""
        self._step_buffers.clear()
        self._drop_runner(keep=True)

    def _drop_runner(self, keep: bool) -> None:
        """Stop using the current runner; ``keep`` it idle for a later fit, or free it."""
        if self._graph_runner is not None:
            self.network.backend.release_step_graphs(self._graph_runner, keep)
        self._graph_runner = None

    def __getstate__(self) -> dict:
        # Work buffers and captured graphs are caches of a running fit, not model state.
        state = self.__dict__.copy()
        state["_step_buffers"] = {}
        state["_graph_runner"] = None
        state["_last_good"] = None  # the network's parameters, copied again by the next epoch
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        for name, value in (("owner", None), ("epochs", None), ("epoch_samples", 0),
                            ("_validation_data", None)):  # pickled before these existed
            self.__dict__.setdefault(name, value)

    def run_epoch(self, X: Any, T: Any, sample_weight: Any = None, owner: Any = None) -> bool:
        """One pass over the data; returns False when training should stop.

        The epoch's loss is scikit-learn's: each batch's loss plus its L2 term
        ``0.5 * alpha * sum ||W||^2 / batch_weight`` (weights as the batch found them;
        ``batch_weight`` is the batch's rows, or its sum of ``sample_weight``), averaged
        over the batches by their rows.  With ``sample_weight`` (host array, one per row)
        each batch's loss and gradients are weighted means, as in scikit-learn; a batch
        whose weights are all zero is skipped.  ``owner`` is as in :meth:`fit`.
        """
        self.owner = owner
        try:
            with self.network.backend.open_run(self.network.dtype) as run:
                return self._run_epoch(X, T, sample_weight, run, new_data=True)
        finally:
            self.owner = None

    def _run_epoch(self, X: Any, T: Any, sample_weight: Any, run: Any, new_data: bool) -> bool:
        """:meth:`run_epoch`, its eager steps in ``run`` (the caller's: one per fit);
        ``new_data=False`` promises ``X`` and ``T`` are the arrays of the previous epoch,
        unchanged (the captured graphs' copy of them is then current)."""
        history = self.history
        n = X.shape[0]
        if history.n_iter == 0 and self.epochs is None:  # partial_fit's first epoch
            self._call_hooks("on_train_begin")
        self.epoch_samples = n
        self._call_hooks("on_epoch_begin", history.n_iter)
        if self._last_good is None:  # first epoch: before any step (or its capture) runs
            self._last_good = self.network.params.copy()
            self.network.grads  # noqa: B018 - allocated on first use: use it now
        learning_rate = self.optimizer.learning_rate
        started = time.perf_counter()
        loss = self._train_one_epoch(X, T, sample_weight, run, new_data)  # reads the loss
        seconds = time.perf_counter() - started
        # The epoch's last update can overflow even when every loss it saw was finite.
        if not math.isfinite(loss) or not bool(self.network.backend.xp.isfinite(
                self.network.params).all()):
            self.network.params[...] = self._last_good
            history.stop_reason = "diverged"
            if history.n_iter == 0:
                raise DivergenceError(
                    f"training diverged in its first epoch (loss={loss}); no epoch finished "
                    "with finite weights. Lower learning_rate_init or scale the inputs.")
            warnings.warn(f"training diverged at epoch {history.n_iter + 1} (loss={loss}); "
                          "stopped and kept the weights of the last finite epoch. Lower "
                          "learning_rate_init or scale the inputs.", DivergenceWarning,
                          stacklevel=4)
            return False
        self._last_good[...] = self.network.params
        history.n_iter += 1
        history.samples_seen += n
        history.loss.append(loss)
        self.optimizer.epoch_end(history.samples_seen, history.n_iter)
        improved = self._record_progress(loss)
        logs = {"loss": loss}
        if self._validation_data is not None:
            logs["val_loss"], logs["val_score"] = evaluate(self.network, *self._validation_data)
        logs.update(lr=learning_rate, epoch_seconds=seconds,
                    samples_per_second=n / seconds if seconds > 0 else math.inf)
        history.record(logs)
        if self.verbose:
            score = (f", validation score = {history.validation_score[-1]:.6f}"
                     if self.validation else "")
            val = (f", val_loss = {logs['val_loss']:.8f}, val_score = {logs['val_score']:.6f}"
                   if "val_loss" in logs else "")
            print(f"Iteration {history.n_iter}, loss = {loss:.8f}{score}{val}")
        if self._epoch_end_stops(logs):
            history.stop_reason = "callback"
            return False
        if not improved and self._no_improvement > self.n_iter_no_change:
            if self.optimizer.on_plateau():
                history.stop_reason = "converged"
                return False
            self._no_improvement = 0
        return True

    # ---------------------------------------------------------------------------- callbacks
    def _call_hooks(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None) if _has_hooks(callback) else None
            if method is not None:
                method(self, *args)

    def _epoch_end_stops(self, logs: dict[str, float]) -> bool:
        """Run every callback's end of epoch (all of them, even after one asks to stop);
        whether any asked to stop."""
        history, stop = self.history, False
        for callback in self.callbacks:
            if _has_hooks(callback):
                stop |= bool(callback.on_epoch_end(self, history.n_iter, dict(logs)))
            else:
                stop |= bool(callback(history.n_iter, history))
        return stop

    def _train_one_epoch(self, X: Any, T: Any, sample_weight: Any, run: Any,
                         new_data: bool) -> float:
        """The epoch's mean loss (read on the host): replayed from captured steps where they
        apply, else launched eagerly on ``run``'s backend."""
        eager_only = sample_weight is not None or is_sparse(X)
        runner = None if eager_only else self._graph_runner_for(X, T, new_data)
        if runner is not None:
            n = len(X)
            loss, steps = runner.run_epoch(self.rng.permutation(n) if self.shuffle
                                           else np.arange(n))
            self.step_count += steps
            self.optimizer.advance(steps)
            return loss
        return self._eager_epoch(X, T, sample_weight, run.backend)

    def _graph_runner_for(self, X: Any, T: Any, new_data: bool) -> StepGraphs | None:
        """The captured-step runner for this data and these settings, if graphs apply: the
        current one, an idle one of the same step (a refit), or a new capture."""
        if self.cuda_graph == "off" or self._capture_failed:
            return None
        backend = self.network.backend
        reason = backend.graphs_unavailable_reason()
        if reason is not None:
            if self.cuda_graph == "on":
                raise ValueError(f"cuda_graph='on' cannot be honoured: {reason}")
            return None
        if self.cuda_graph == "auto" and backend.step_graphs_known_slower(self, len(X)):
            self._drop_runner(keep=True)
            return None  # measured before for this step shape: eager launches are faster
        # Shapes and settings, not arrays: new data of the same shape (partial_fit's next
        # chunk, a refit) is copied into the captured buffers instead of being captured again.
        key = backend.step_graphs_key(self, X, T)
        if self._graph_runner is not None and self._graph_runner.key != key:
            self._drop_runner(keep=True)  # another step shape: it may come back
        if self._graph_runner is None:
            try:
                self._graph_runner = backend.capture_steps(self, X, T)
            except Exception as exc:  # a capture the driver refuses: run eagerly instead
                if self.cuda_graph == "on":
                    raise
                warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); "
                              "training eagerly", RuntimeWarning, stacklevel=5)
                self._capture_failed = True
                return None
        elif new_data:
            self._graph_runner.load(X, T)
        runner = self._graph_runner
        if self.cuda_graph == "auto" and not runner.faster_than_eager():
            self._drop_runner(keep=False)  # unused: free its buffers and graphs
            return None  # measured for this step shape: eager launches are faster
        return runner

    def _eager_epoch(self, X: Any, T: Any, sample_weight: Any, backend: Any) -> float:
        net = self.network
        step = self.step.bound_to(net, self.optimizer, backend)  # on the run's backend
        n = X.shape[0]
        sparse, weighted = is_sparse(X), sample_weight is not None
        if sparse or weighted:  # rows and weight sums are chosen on the host
            host_order = self.rng.permutation(n) if self.shuffle else np.arange(n)
            order = backend.xp.asarray(host_order.astype(np.int64))
        else:
            order = (backend.permutation(n, self.rng) if self.shuffle
                     else backend.xp.arange(n))
        if weighted:
            weights = backend.asarray(np.asarray(sample_weight).reshape(n, 1), net.dtype)
            starts = np.arange(0, n, self.batch_size)
            batch_sums = np.add.reduceat(np.asarray(sample_weight)[host_order], starts)
        total = 0.0
        batch_hooks = [callback.on_batch_end for callback in self.callbacks
                       if _has_hooks(callback) and hasattr(callback, "on_batch_end")]
        for number, start in enumerate(range(0, n, self.batch_size)):
            index = order[start:start + self.batch_size]
            rows = index.shape[0]
            buffers = self.step_buffers(rows, X, T)
            row_weights, weight_sum = None, float(rows)
            if weighted:
                weight_sum = float(batch_sums[number])
                if weight_sum <= 0:  # nothing to learn from: sklearn would divide by zero
                    continue
                if buffers.w is None:
                    buffers.w = backend.empty((rows, 1), net.dtype)
                backend.gather_rows(weights, index, buffers.w)
                row_weights = buffers.w.reshape(rows)

            if sparse:  # X's rows densified on the host, T's gathered as usual
                def gather(b: StepBuffers, index: Any = index, start: int = start) -> None:
                    rows_csr = X[host_order[start:start + b.x.shape[0]]]
                    b.x[...] = backend.asarray(rows_csr.toarray(), net.dtype)
                    backend.gather_rows(T, index, b.t)
            else:
                gather = step.gather_rows(X, T, index)

            loss = step(gather, buffers, step=self.step_count,
                        weight_sum=weight_sum, row_weights=row_weights)
            self.step_count += 1
            total = total + loss * rows  # stays on the device until epoch end
            for hook in batch_hooks:  # told the rows only: nothing that waits for the device
                hook(self, number, rows)
        return float(total) / n

    def step_buffers(self, rows: int, X: Any, T: Any) -> StepBuffers:
        """The buffers of a step of ``rows`` rows, made on first use.

        Only the sizes of the current epoch (full batches and the remainder) are kept, so
        ``partial_fit`` on data of ever-changing lengths does not accumulate buffers.
        """
        buffers = self._step_buffers.get(rows)
        if buffers is None or buffers.x.shape[1] != X.shape[1] or buffers.t.shape[1] != T.shape[1]:
            full, rest = min(self.batch_size, X.shape[0]), X.shape[0] % self.batch_size
            for stale in set(self._step_buffers) - {full, rest}:
                del self._step_buffers[stale]
            buffers = self._step_buffers[rows] = self.step.new_buffers(rows, X.shape[1],
                                                                       T.shape[1])
        return buffers

    # ----------------------------------------------------------------- stopping criteria
    def _record_progress(self, loss: float) -> bool:
        """Update best loss / score and the no-improvement count, as scikit-learn does."""
        history = self.history
        if self.validation is not None:
            score = float(self.validation(self.network))
            history.validation_score.append(score)
            improved = score >= history.best_validation_score + self.tol
            if score > history.best_validation_score:
                history.best_validation_score = score
                self._best[...] = self.network.params
        else:
            improved = loss <= history.best_loss - self.tol
        history.best_loss = min(history.best_loss, loss)
        self._no_improvement = 0 if improved else self._no_improvement + 1
        return improved


def _has_hooks(callback: Any) -> bool:
    """Whether ``callback`` is a hook object (else a ``callback(epoch, history)`` function)."""
    return hasattr(callback, "on_epoch_end")


def check_callbacks(callbacks: Any) -> list:
    """``callbacks`` as a list, each a function or a hook object, else a ``TypeError``."""
    if callbacks is None:
        return []
    if callable(callbacks) or _has_hooks(callbacks) or isinstance(callbacks, (str, bytes)):
        raise TypeError(f"callbacks must be a list of callbacks, got {callbacks!r}; wrap a "
                        "single one in a list")
    callbacks = list(callbacks)
    for callback in callbacks:
        if not (_has_hooks(callback) or callable(callback)):
            raise TypeError(f"callbacks: {callback!r} is neither a function "
                            "callback(epoch, history) nor an object with on_epoch_end "
                            "(see gpumlp.callbacks)")
    return callbacks
