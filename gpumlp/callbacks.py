"""Callbacks: checkpoints, early stopping, a CSV log, step-size schedules and progress.

Pass them as ``callbacks=[...]`` to :class:`~gpumlp.MLPClassifier`,
:class:`~gpumlp.MLPRegressor` or :class:`~gpumlp.training.Trainer`.  A callback is an object
with some of these hooks (all receive the trainer: its ``network``, ``optimizer``,
``history``, ``epochs`` and ``owner``, the estimator being fitted, if any):

``on_train_begin(trainer)``
    Before the first epoch of ``fit`` (and of the first ``partial_fit``).
``on_epoch_begin(trainer, epoch)``
    ``epoch`` is the number of epochs finished so far (0 for the first).
``on_batch_end(trainer, batch, rows)``
    After each step the host runs (the eager path); it is told the batch's number and rows
    only, so it never waits for the device.  On the CUDA graph path the steps of an epoch
    are replayed as whole graphs and this hook is not called.
``on_epoch_end(trainer, epoch, logs) -> bool``
    ``epoch`` counts the finished epochs, this one included; ``logs`` holds this epoch's
    entries of ``history_`` (``loss``, ``lr``, ``epoch_seconds``, ``samples_per_second``,
    and ``val_loss`` and ``val_score`` with validation data).  A true return stops training.
``on_train_end(trainer)``
    After the last epoch of ``fit``.

Every hook runs between epochs or between steps on the host, with values the epoch has
already read back: a callback adds no device synchronisation to a step.  Plain functions
``callback(epoch, history)`` work too (called after every epoch; a true return stops).

Callbacks are copied as scikit-learn copies parameters (``clone``, ``GridSearchCV``,
pickling for worker processes): a copy has the same settings and none of the state of a run,
which every callback resets when a fit begins.  Copies given the same file name write the same
file: give each fit of a search its own path if the files matter.

Examples
--------
>>> import numpy as np, os, tempfile
>>> from gpumlp import MLPClassifier
>>> from gpumlp.callbacks import CSVLogger, EarlyStopping
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(200, 4)); y = (X[:, 0] > 0).astype(int)
>>> log = os.path.join(tempfile.mkdtemp(), "log.csv")
>>> clf = MLPClassifier((8,), max_iter=5, backend="numpy", random_state=0,
...                     callbacks=[CSVLogger(log), EarlyStopping("val_loss", patience=2)])
>>> clf = clf.fit(X[:150], y[:150], validation_data=(X[150:], y[150:]))  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import time
from typing import Any, Callable, TextIO

from .atomic import atomic_write
from .io import save
from .progress import _is_terminal
from .validation import check_choice, check_float, check_int

MODES = ("auto", "min", "max")


class Callback:
    """Base class: every hook does nothing (``on_batch_end`` is optional: define it only when
    needed, so the trainer calls nothing per step otherwise)."""

    def on_train_begin(self, trainer: Any) -> None:
        pass

    def on_epoch_begin(self, trainer: Any, epoch: int) -> None:
        pass

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> bool:
        return False

    def on_train_end(self, trainer: Any) -> None:
        pass

    # A copy (clone, deepcopy, pickle) is the constructor's settings and no run state: the
    # state may hold device arrays or open progress bars, which neither copy nor pickle.
    def _settings(self) -> dict[str, Any]:
        names = [name for name in inspect.signature(type(self).__init__).parameters
                 if name != "self"]
        return {name: getattr(self, name) for name in names}

    def __getstate__(self) -> dict[str, Any]:
        return self._settings()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def __deepcopy__(self, memo: dict) -> "Callback":
        return type(self)(**self._settings())

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={value!r}" for name, value in self._settings().items())
        return f"{type(self).__name__}({settings})"


class _Monitor:
    """A logged quantity and the direction in which it improves."""

    def __init__(self, owner: str, monitor: str, mode: str, min_delta: float):
        if not isinstance(monitor, str) or not monitor:
            raise TypeError(f"{owner}: monitor must be the name of a logged value such as "
                            f"'val_loss'; got {monitor!r}")
        check_choice("mode", mode, MODES)
        if mode == "auto":
            if "loss" in monitor:
                mode = "min"
            elif "score" in monitor or "acc" in monitor:
                mode = "max"
            else:
                raise ValueError(f"{owner}: mode='auto' cannot tell whether monitor="
                                 f"{monitor!r} should go down or up; give mode='min' or "
                                 "mode='max'")
        self.owner, self.monitor, self.mode = owner, monitor, mode
        self.min_delta = check_float("min_delta", min_delta, 0, math.inf)

    def worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def value(self, logs: dict[str, float]) -> float:
        if self.monitor not in logs:
            hint = (" (the val_ values need fit(..., validation_data=(X_val, y_val)))"
                    if self.monitor.startswith("val_") else "")
            raise ValueError(f"{self.owner}: monitor={self.monitor!r} is not logged; the "
                             f"logged values are {sorted(logs)}{hint}")
        return float(logs[self.monitor])

    def improved(self, value: float, best: float) -> bool:
        if math.isnan(value):
            return False
        if self.mode == "min":
            return value < best - self.min_delta
        return value > best + self.min_delta


class ModelCheckpoint(Callback):
    """Save the estimator after an epoch, by default only when ``monitor`` improved.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` file, written atomically with :func:`gpumlp.save` (a crash mid-save
        leaves the previous checkpoint).  ``{epoch}`` and logged names in it are filled in
        (``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``) to keep one file per save.
    monitor : str
        A logged value (see :mod:`gpumlp.callbacks`), default ``"val_loss"``.
    save_best_only : bool
        Save only when ``monitor`` improved on the best so far (else after every epoch).
    mode : {"auto", "min", "max"}
        Whether lower or higher is better; ``auto`` reads the name (``loss`` lower, ``score``
        higher).
    min_delta : float
        The smallest change that counts as an improvement.

    Attributes
    ----------
    best, best_epoch : the best value so far and its epoch.
    saved : list of the paths written in this fit.
    """

    def __init__(self, path: str | os.PathLike, monitor: str = "val_loss",
                 save_best_only: bool = True, mode: str = "auto", min_delta: float = 0.0):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"ModelCheckpoint: path must be a file name; got {path!r}")
        self.path = path
        self.monitor = monitor
        self.save_best_only = save_best_only
        self.mode = mode
        self.min_delta = min_delta
        self._monitor = _Monitor("ModelCheckpoint", monitor, mode, min_delta)
        self.best, self.best_epoch, self.saved = self._monitor.worst(), 0, []

    def on_train_begin(self, trainer: Any) -> None:
        if trainer.owner is None:
            raise ValueError("ModelCheckpoint saves an estimator with gpumlp.save; pass it in "
                             "MLPClassifier(callbacks=...) or MLPRegressor(callbacks=...), or "
                             "give a bare Trainer the estimator it trains: "
                             "Trainer.fit(..., owner=estimator)")
        self.best, self.best_epoch, self.saved = self._monitor.worst(), 0, []

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> bool:
        if self.save_best_only:
            value = self._monitor.value(logs)
            if not self._monitor.improved(value, self.best):
                return False
            self.best, self.best_epoch = value, epoch
        path = os.fspath(self.path)
        if "{" in path:
            try:
                path = path.format(epoch=epoch, **logs)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"ModelCheckpoint: path={path!r} cannot be filled in "
                                 f"({type(exc).__name__}: {exc}); it may name {{epoch}} and "
                                 f"{sorted(logs)}") from None
        save(trainer.owner, path)
        self.saved.append(path)
        return False


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    Parameters
    ----------
    monitor : str
        A logged value, default ``"val_loss"``.
    patience : int
        Epochs without improvement to wait before stopping.
    min_delta : float
        The smallest change that counts as an improvement.
    restore_best : bool
        At the end of the fit, give the network the weights of the best epoch (kept as a copy
        on the network's device: no transfer, no wait).
    mode : {"auto", "min", "max"}

    Attributes
    ----------
    best, best_epoch : the best value and its epoch; stopped_epoch : the epoch it stopped
    after (0 when it did not stop training).

    The estimators also stop by scikit-learn's rule (``tol``, ``n_iter_no_change``) on the
    training loss; raise ``n_iter_no_change`` to leave the decision to this callback.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 10, min_delta: float = 0.0,
                 restore_best: bool = True, mode: str = "auto"):
        self.monitor = monitor
        self.patience = check_int("patience", patience, 0)
        self.min_delta = min_delta
        self.restore_best = restore_best
        self.mode = mode
        self._monitor = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self._reset()

    def _reset(self) -> None:
        self.best, self.best_epoch, self.stopped_epoch = self._monitor.worst(), 0, 0
        self._wait = 0
        self._best_params: Any = None

    def on_train_begin(self, trainer: Any) -> None:
        self._reset()

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> bool:
        value = self._monitor.value(logs)
        if self._monitor.improved(value, self.best):
            self.best, self.best_epoch, self._wait = value, epoch, 0
            if self.restore_best:
                params = trainer.network.params
                if self._best_params is None:
                    self._best_params = trainer.network.backend.empty(params.shape,
                                                                      params.dtype)
                self._best_params[...] = params
            return False
        self._wait += 1
        if self._wait >= self.patience:
            self.stopped_epoch = epoch
            return True
        return False

    def on_train_end(self, trainer: Any) -> None:
        if self._best_params is not None and self.best_epoch != trainer.history.n_iter:
            trainer.network.params[...] = self._best_params
        self._best_params = None  # a device copy of the weights: not kept past the fit


class CSVLogger(Callback):
    """Write one row per epoch: ``epoch`` and the logged values (``history_``'s keys).

    The whole file is rewritten atomically after every epoch, so it is complete and readable
    at any moment, even while training runs or after a crash.

    Parameters
    ----------
    path : str or os.PathLike
    separator : str, default ","
    append : bool
        Keep the rows already in the file (from an earlier fit) and add to them.
    """

    def __init__(self, path: str | os.PathLike, separator: str = ",", append: bool = False):
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"CSVLogger: path must be a file name; got {path!r}")
        if not isinstance(separator, str) or len(separator) != 1 or separator in "\r\n\"":
            raise ValueError(f"CSVLogger: separator must be one character (not a quote or a "
                             f"line break); got {separator!r}")
        self.path = path
        self.separator = separator
        self.append = append
        self._lines: list[str] = []
        self._columns: list[str] | None = None

    def on_train_begin(self, trainer: Any) -> None:
        self._lines, self._columns = [], None
        if self.append and os.path.isfile(self.path):
            with open(self.path, encoding="utf-8") as handle:
                self._lines = handle.read().splitlines()
            if self._lines:
                self._columns = self._lines[0].split(self.separator)

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> bool:
        row = {"epoch": epoch, **logs}
        if self._columns is None:
            self._columns = list(row)
            self._lines.append(self.separator.join(self._columns))
        self._lines.append(self.separator.join(_cell(row.get(name)) for name in self._columns))
        with atomic_write(self.path) as handle:
            handle.write(("\n".join(self._lines) + "\n").encode("utf-8"))
        return False


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    return str(value)


class LearningRateScheduler(Callback):
    """Set the step size before every epoch: ``lr = schedule(epoch, lr)``.

    ``epoch`` is the number of epochs finished (0 before the first) and ``lr`` the current step
    size (the one this callback set last, or what the estimator's ``learning_rate`` schedule
    made of it).  On the CUDA graph path the new rate is written to the device once per epoch,
    as the built-in schedules are.  See :class:`StepDecay` and :class:`WarmupCosine`.
    """

    def __init__(self, schedule: Callable[[int, float], float], verbose: bool = False):
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be a function "
                            f"(epoch, lr) -> lr; got {schedule!r}")
        self.schedule = schedule
        self.verbose = verbose

    def on_epoch_begin(self, trainer: Any, epoch: int) -> None:
        optimizer = trainer.optimizer
        rate = self.schedule(epoch, optimizer.learning_rate)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or \
                not math.isfinite(rate) or rate < 0:
            raise ValueError(f"LearningRateScheduler: schedule({epoch}, "
                             f"{optimizer.learning_rate}) returned {rate!r}; it must return "
                             "a finite number >= 0")
        optimizer.schedule.learning_rate = float(rate)
        if self.verbose:
            print(f"epoch {epoch + 1}: learning rate {float(rate):.6g}", flush=True)


class StepDecay:
    """``initial_lr * factor ** (epoch // every)``: the step size cut by ``factor`` every
    ``every`` epochs (a schedule for :class:`LearningRateScheduler`)."""

    def __init__(self, initial_lr: float, factor: float = 0.5, every: int = 10):
        self.initial_lr = check_float("initial_lr", initial_lr, 0, math.inf, low_open=True)
        self.factor = check_float("factor", factor, 0, 1, low_open=True)
        self.every = check_int("every", every, 1)

    def __call__(self, epoch: int, lr: float) -> float:
        return self.initial_lr * self.factor ** (epoch // self.every)

    def __repr__(self) -> str:
        return f"StepDecay({self.initial_lr!r}, factor={self.factor!r}, every={self.every!r})"


class WarmupCosine:
    """Linear warm-up to ``initial_lr`` over ``warmup_epochs``, then cosine annealing to
    ``final_lr`` at ``total_epochs`` (a schedule for :class:`LearningRateScheduler`).

    Epoch ``e < warmup_epochs`` trains at ``initial_lr * (e + 1) / warmup_epochs``; after it,
    ``final_lr + (initial_lr - final_lr) * (1 + cos(pi * p)) / 2`` with ``p`` the fraction of
    the remaining epochs done (``final_lr`` from ``total_epochs`` on).
    """

    def __init__(self, initial_lr: float, warmup_epochs: int, total_epochs: int,
                 final_lr: float = 0.0):
        self.initial_lr = check_float("initial_lr", initial_lr, 0, math.inf, low_open=True)
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, 0)
        self.total_epochs = check_int("total_epochs", total_epochs, 1)
        if self.warmup_epochs >= self.total_epochs:
            raise ValueError(f"warmup_epochs={warmup_epochs} must be less than "
                             f"total_epochs={total_epochs}")
        self.final_lr = check_float("final_lr", final_lr, 0, initial_lr)

    def __call__(self, epoch: int, lr: float) -> float:
        if epoch < self.warmup_epochs:
            return self.initial_lr * (epoch + 1) / self.warmup_epochs
        progress = min((epoch - self.warmup_epochs) / (self.total_epochs - self.warmup_epochs),
                       1.0)
        return self.final_lr + (self.initial_lr - self.final_lr) * 0.5 * (
            1 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return (f"WarmupCosine({self.initial_lr!r}, warmup_epochs={self.warmup_epochs!r}, "
                f"total_epochs={self.total_epochs!r}, final_lr={self.final_lr!r})")


class ProgressBar(Callback):
    """Progress within each epoch, and one summary line per epoch.

    On a terminal with ``tqdm`` installed it draws a tqdm bar per epoch (samples done, rate,
    time left) that ends with the epoch's loss and validation values.  Written to a log file
    or a pipe it prints plain whole lines: one every ``interval`` seconds within a long epoch
    (``epoch 3/30  12800/60000 samples (21%)  4.1s``) and one at the end of each epoch.

    Within-epoch progress comes from the eager steps; on the CUDA graph path an epoch's steps
    are replayed as whole graphs without the host in the loop, and the bar fills at the end.

    Parameters
    ----------
    stream : file, default ``sys.stdout`` (looked up when written to)
    bar : bool or None
        ``None``: a tqdm bar when tqdm is installed and ``stream`` is a terminal; ``True``
        insists (an error without tqdm); ``False``: plain lines.
    interval : float
        Seconds between plain lines within an epoch (0: none within the epoch).
    """

    def __init__(self, stream: TextIO | None = None, bar: bool | None = None,
                 interval: float = 10.0):
        self.stream = stream
        self.bar = bar
        self.interval = check_float("interval", interval, 0, math.inf)
        self._tqdm: Any = None
        self._done = self._total = 0
        self._label = ""
        self._started = self._last_line = 0.0

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stdout

    def _bar_class(self) -> Any:
        if self.bar is False:
            return None
        try:
            from tqdm import tqdm
        except ImportError:
            if self.bar:
                raise ValueError("ProgressBar(bar=True) needs tqdm (pip install tqdm); "
                                 "bar=None prints plain lines without it") from None
            return None
        if self.bar is None:
            return tqdm if _is_terminal(self._out()) else None
        return tqdm

    def on_epoch_begin(self, trainer: Any, epoch: int) -> None:
        self._total, self._done = trainer.epoch_samples, 0
        of = f"/{trainer.epochs}" if trainer.epochs else ""
        self._label = f"epoch {epoch + 1}{of}"
        self._started = self._last_line = time.perf_counter()
        bar = self._bar_class()
        self._tqdm = bar(total=self._total, desc=self._label, unit="sample",
                         file=self._out(), leave=True) if bar is not None else None

    def on_batch_end(self, trainer: Any, batch: int, rows: int) -> None:
        self._done += rows
        if self._tqdm is not None:
            self._tqdm.update(rows)
            return
        now = time.perf_counter()
        if self.interval and now - self._last_line >= self.interval and self._done < self._total:
            self._last_line = now
            print(f"{self._label}  {self._done}/{self._total} samples "
                  f"({100 * self._done // max(self._total, 1)}%)  {now - self._started:.1f}s",
                  file=self._out(), flush=True)

    def on_epoch_end(self, trainer: Any, epoch: int, logs: dict[str, float]) -> bool:
        shown = "  ".join(f"{name} {logs[name]:.4f}" for name in
                          ("loss", "val_loss", "val_score") if name in logs)
        if self._tqdm is not None:
            self._tqdm.update(self._total - self._done)
            self._tqdm.set_postfix_str(shown.replace("  ", ", "))
            self._tqdm.close()
            self._tqdm = None
        else:
            print(f"{self._label}  {shown}  {logs['epoch_seconds']:.2f}s  "
                  f"{logs['samples_per_second']:,.0f} samples/s", file=self._out(), flush=True)
        return False

    def on_train_end(self, trainer: Any) -> None:
        if self._tqdm is not None:  # an epoch that did not finish (divergence)
            self._tqdm.close()
            self._tqdm = None
