"""The callbacks of gpumlp/callbacks.py with the estimators and the Trainer (NumPy backend);
host synchronisations on the CUDA paths are counted on the emulated CuPy."""

from __future__ import annotations

import copy
import csv
import io
import math
import pickle
import re
import types

import numpy as np
import pytest

import gpumlp
from gpumlp import MLPClassifier, MLPRegressor
from gpumlp.callbacks import (Callback, CSVLogger, EarlyStopping, LearningRateScheduler,
                              ModelCheckpoint, ProgressBar, StepDecay, WarmupCosine)
from gpumlp.network import Network
from gpumlp.optim import Adam
from gpumlp.training import Trainer

from conftest import load_support

pytestmark = pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")


@pytest.fixture
def split():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(240, 5))
    y = (X[:, 0] - X[:, 1] * X[:, 2] > 0).astype(int)
    return X[:180], y[:180], X[180:], y[180:]


class Snapshots:
    """A plain callback(epoch, history) keeping the weights after every epoch."""

    def __init__(self):
        self.model, self.params = None, {}

    def __call__(self, epoch, history):
        self.params[epoch] = self.model.network_.get_flat_params()


def model(callbacks, **options):
    settings = dict(hidden_layer_sizes=(10,), max_iter=12, batch_size=30, random_state=0,
                    backend="numpy", learning_rate_init=0.02, n_iter_no_change=1000)
    settings.update(options)
    return MLPClassifier(callbacks=callbacks, **settings)


# ------------------------------------------------------------------------- ModelCheckpoint
def test_checkpoint_keeps_the_best_epoch_atomically_through_save(split, tmp_path):
    X, y, X_val, y_val = split
    snapshots, path = Snapshots(), tmp_path / "best.npz"
    checkpoint = ModelCheckpoint(path, monitor="val_score", save_best_only=True)
    clf = model([checkpoint, snapshots], learning_rate_init=0.2)
    snapshots.model = clf
    clf.fit(X, y, validation_data=(X_val, y_val))
    scores = clf.history_["val_score"]
    best = int(np.argmax(scores)) + 1  # the first epoch reaching the best score
    assert (checkpoint.best_epoch, checkpoint.best) == (best, max(scores))
    improvements = [e for e in range(1, len(scores) + 1)
                    if scores[e - 1] > max(scores[:e - 1], default=-math.inf)]
    assert len(checkpoint.saved) == len(improvements) < clf.n_iter_
    saved = gpumlp.load(path)
    np.testing.assert_array_equal(saved.network_.get_flat_params(), snapshots.params[best])
    assert saved.score(X_val, y_val) == max(scores)
    assert [p.name for p in tmp_path.iterdir()] == ["best.npz"]  # no temporary left behind


def test_checkpoint_every_epoch_fills_in_the_name(split, tmp_path):
    X, y, X_val, y_val = split
    checkpoint = ModelCheckpoint(tmp_path / "e{epoch:02d}-{loss:.2f}.npz", save_best_only=False)
    clf = model([checkpoint], max_iter=3).fit(X, y)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [f"e{e:02d}-{loss:.2f}.npz" for e, loss in
                     zip((1, 2, 3), clf.loss_curve_)]


def test_checkpoint_names_what_it_cannot_monitor_or_save(split, tmp_path):
    X, y, _, _ = split
    with pytest.raises(ValueError, match=r"monitor='val_loss' is not logged; the logged values "
                                         r"are \['epoch_seconds', 'loss', 'lr', "
                                         r"'samples_per_second'\] \(the val_ values need "
                                         r"fit\(\.\.\., validation_data"):
        model([ModelCheckpoint(tmp_path / "m.npz")]).fit(X, y)
    net = Network([5, 4, 2], seed=0, backend="numpy")
    trainer = Trainer(net, Adam(net.backend, net.params), callbacks=[
        ModelCheckpoint(tmp_path / "m.npz", monitor="loss")])
    with pytest.raises(ValueError, match=r"ModelCheckpoint saves an estimator .* give a bare "
                                         r"Trainer the estimator it trains: Trainer\.fit\("
                                         r"\.\.\., owner=estimator\)"):
        trainer.fit(X, np.eye(2)[y], 2)
    with pytest.raises(ValueError, match="mode='auto' cannot tell whether monitor='lr'"):
        ModelCheckpoint("m.npz", monitor="lr")


# --------------------------------------------------------------------------- EarlyStopping
def test_early_stopping_waits_patience_epochs_and_restores_the_best(split):
    X, y, X_val, y_val = split
    snapshots = Snapshots()
    # mode="max" on the (falling) training loss: epoch 1 stays the best, so training stops
    # after `patience` more epochs and the weights of epoch 1 come back.
    stopper = EarlyStopping(monitor="loss", mode="max", patience=3)
    clf = model([snapshots, stopper])
    snapshots.model = clf
    clf.fit(X, y)
    assert clf.n_iter_ == 4 and stopper.stopped_epoch == 4 and stopper.best_epoch == 1
    assert clf._trainer_.history.stop_reason == "callback"
    np.testing.assert_array_equal(clf.network_.get_flat_params(), snapshots.params[1])
    kept = model([EarlyStopping(monitor="loss", mode="max", patience=3, restore_best=False)])
    kept.fit(X, y)
    assert not np.array_equal(kept.network_.get_flat_params(), snapshots.params[1])


def test_early_stopping_min_delta_and_patience_on_a_given_sequence():
    """The rule itself, on values chosen to hit each case (improvement by less than
    min_delta, a NaN, a late improvement that resets the wait)."""
    net = Network([2, 2], seed=0, backend="numpy")
    trainer = types.SimpleNamespace(network=net, history=types.SimpleNamespace(n_iter=0))
    stopper = EarlyStopping(monitor="val_loss", patience=2, min_delta=0.1)
    stopper.on_train_begin(trainer)

    def feed(values, first):
        decisions = []
        for epoch, value in enumerate(values, start=first):
            net.params[...] = epoch
            decisions.append(stopper.on_epoch_end(trainer, epoch, {"val_loss": value}))
        return decisions

    # 0.95 and NaN are no improvement (wait 1, 2: stop at epoch 3 with patience 2)...
    assert feed([1.0, 0.95, math.nan], 1) == [False, False, True]
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (1.0, 1, 3)
    # ...and had training gone on, 0.8 improves by 0.2 and resets the wait; 0.75 and 0.72
    # improve by less than min_delta.
    assert feed([0.8, 0.75, 0.72], 4) == [False, False, True]
    assert (stopper.best, stopper.best_epoch, stopper.stopped_epoch) == (0.8, 4, 6)
    trainer.history.n_iter = 6
    stopper.on_train_end(trainer)
    assert (net.params == 4).all()  # the weights of epoch 4 (val_loss 0.8) are restored


# ------------------------------------------------------------------------------- CSVLogger
def test_csv_logger_writes_one_row_per_epoch_complete_after_each(split, tmp_path):
    X, y, X_val, y_val = split
    path = tmp_path / "log.csv"
    rows_seen = []
    clf = model([CSVLogger(path), lambda epoch, history: rows_seen.append(
        len(path.read_text().splitlines()) - 1)], max_iter=4)
    clf.fit(X, y, validation_data=(X_val, y_val))
    assert rows_seen == [1, 2, 3, 4]  # the file is whole after every epoch
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["epoch", *clf.history_]
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3, 4]
    for name, values in clf.history_.items():
        assert [float(row[name]) for row in rows] == values  # exact round trip
    model([CSVLogger(path, append=True)], max_iter=2).fit(X, y, validation_data=(X_val, y_val))
    assert len(path.read_text().splitlines()) == 1 + 4 + 2


# -------------------------------------------------------------------- LearningRateScheduler
def test_scheduler_sets_the_rate_each_epoch_trains_with(split):
    X, y, _, _ = split
    seen = []

    def schedule(epoch, lr):
        seen.append((epoch, lr))
        return 0.05 * 0.5 ** epoch

    clf = model([LearningRateScheduler(schedule)], max_iter=4, solver="sgd").fit(X, y)
    assert clf.history_["lr"] == [0.05, 0.025, 0.0125, 0.00625]
    assert seen == [(0, 0.02), (1, 0.05), (2, 0.025), (3, 0.0125)]
    # The rate reaches the update: Adam at rate 0 leaves every weight where it was.
    snapshots = Snapshots()
    frozen = model([LearningRateScheduler(lambda epoch, lr: 0.0 if epoch else 0.01),
                    snapshots], max_iter=3)
    snapshots.model = frozen
    frozen.fit(X, y)
    np.testing.assert_array_equal(snapshots.params[1], snapshots.params[3])
    with pytest.raises(ValueError, match=r"schedule\(0, 0.02\) returned nan; it must return"):
        model([LearningRateScheduler(lambda epoch, lr: math.nan)]).fit(X, y)


def test_step_decay_and_warmup_cosine():
    step = StepDecay(0.1, factor=0.5, every=3)
    assert [step(e, None) for e in range(7)] == [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025]
    warm = WarmupCosine(1.0, warmup_epochs=2, total_epochs=6, final_lr=0.2)
    values = [warm(e, None) for e in range(8)]
    np.testing.assert_allclose(values[:2], [0.5, 1.0])
    np.testing.assert_allclose(values[2:], 0.2 + 0.8 * 0.5 * (1 + np.cos(np.pi * np.array(
        [0, 0.25, 0.5, 0.75, 1, 1]))))
    with pytest.raises(ValueError, match="warmup_epochs=6 must be less than total_epochs=6"):
        WarmupCosine(1.0, 6, 6)


# ----------------------------------------------------------------------------- ProgressBar
def test_progress_bar_plain_lines_within_and_after_each_epoch(split):
    X, y, X_val, y_val = split
    out = io.StringIO()  # not a terminal: plain lines
    clf = model([ProgressBar(stream=out, interval=1e-9)], max_iter=2)
    clf.fit(X, y, validation_data=(X_val, y_val))
    lines = out.getvalue().splitlines()
    # 180 rows in batches of 30: five lines within each epoch and one at its end.
    assert len(lines) == 12
    assert lines[0].startswith("epoch 1/2  30/180 samples (16%)")
    assert lines[5].startswith("epoch 1/2  loss ") and "val_score" in lines[5]
    assert lines[6].startswith("epoch 2/2  30/180 samples")
    assert "\r" not in out.getvalue()
    quiet = io.StringIO()
    model([ProgressBar(stream=quiet, interval=0)], max_iter=2).fit(X, y)
    assert len(quiet.getvalue().splitlines()) == 2  # one per epoch


def test_progress_bar_draws_tqdm_bars():
    pytest.importorskip("tqdm")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 3))
    out = io.StringIO()
    model([ProgressBar(stream=out, bar=True)], max_iter=2).fit(X, X[:, 0] > 0)
    text = out.getvalue()
    for epoch, loss in zip((1, 2), model([]).set_params(max_iter=2).fit(
            X, X[:, 0] > 0).loss_curve_):
        assert re.search(rf"epoch {epoch}/2: 100%\|#+\| 90/90 \[.*, loss {loss:.4f}\]\n",
                         text), text


# ---------------------------------------------------------------- copies, clone and search
def every_callback(tmp_path):
    return [ModelCheckpoint(tmp_path / "ckpt.npz", monitor="loss"),
            EarlyStopping(monitor="loss", patience=2), CSVLogger(tmp_path / "log.csv"),
            LearningRateScheduler(WarmupCosine(0.02, 1, 5)), ProgressBar(stream=None,
                                                                           interval=0)]


def test_clone_copies_settings_and_not_the_state_of_a_run(split, tmp_path, capsys):
    from sklearn.base import clone

    X, y, _, _ = split
    clf = model(every_callback(tmp_path), max_iter=3).fit(X, y)
    stopper = clf.callbacks[1]
    assert stopper.best_epoch > 0
    twin = clone(clf)
    for original, copied in zip(clf.callbacks, twin.callbacks):
        assert copied is not original and type(copied) is type(original)
        assert repr(copied) == repr(original)  # the same settings
    assert twin.callbacks[1].best_epoch == 0  # not the fitted run's state
    for copied in (copy.deepcopy(clf), pickle.loads(pickle.dumps(clf))):
        assert [repr(c) for c in copied.callbacks] == [repr(c) for c in clf.callbacks]
    twin.fit(X, y)
    np.testing.assert_array_equal(twin.network_.get_flat_params(),
                                  clf.network_.get_flat_params())


def test_grid_search_over_an_estimator_with_callbacks(split, tmp_path):
    from sklearn.model_selection import GridSearchCV

    X, y, _, _ = split
    search = GridSearchCV(model(every_callback(tmp_path), max_iter=4),
                          {"alpha": [1e-4, 1e-1]}, cv=2)
    search.fit(X, y)
    assert search.best_estimator_.history_["lr"][0] == pytest.approx(0.02)
    assert len(search.cv_results_["mean_test_score"]) == 2
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,loss,lr,")  # the last fit's log


def test_function_callbacks_and_hook_objects_together(split):
    X, y, _, _ = split
    calls = []

    class Recorder(Callback):
        def on_train_begin(self, trainer):
            calls.append(("begin", trainer.epochs))

        def on_epoch_begin(self, trainer, epoch):
            calls.append(("epoch", epoch))

        def on_epoch_end(self, trainer, epoch, logs):
            calls.append(("end", epoch, sorted(logs)))

        def on_train_end(self, trainer):
            calls.append(("done", trainer.history.n_iter))

    model([Recorder(), lambda epoch, history: epoch == 2], max_iter=5).fit(X, y)
    keys = ["epoch_seconds", "loss", "lr", "samples_per_second"]
    assert calls == [("begin", 5), ("epoch", 0), ("end", 1, keys), ("epoch", 1),
                     ("end", 2, keys), ("done", 2)]
    with pytest.raises(TypeError, match="callbacks must be a list of callbacks"):
        model(ProgressBar()).fit(X, y)
    with pytest.raises(TypeError, match="is neither a function"):
        model([3]).fit(X, y)


def test_partial_fit_runs_the_callbacks_every_epoch(split, tmp_path):
    X, y, _, _ = split
    path = tmp_path / "log.csv"
    clf = model([CSVLogger(path)])
    for _ in range(3):
        clf.partial_fit(X, y, classes=[0, 1])
    assert len(path.read_text().splitlines()) == 1 + 3


# ---------------------------------------------------------- no host sync per step on CUDA
def host_waits_per_epoch(cp, emulated, monkeypatch, n_rows, cuda_graph, callbacks):
    """Host synchronisations of each epoch (training, validation and callbacks) of a fit."""
    from gpumlp.backends.cuda.backend import CupyBackend

    waits = []
    wait = emulated._host_wait
    monkeypatch.setattr(emulated, "_host_wait",
                        lambda *args: (waits.append(args[1]), wait(*args))[1])

    class Marker(Callback):
        def __init__(self):
            self.marks = []

        def on_epoch_begin(self, trainer, epoch):
            self.marks.append(len(waits))

    marker = Marker()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n_rows + 16, 6))
    y = rng.integers(0, 3, n_rows + 16)
    clf = MLPClassifier((8,), batch_size=8, max_iter=4, random_state=0, dtype="float64",
                        backend=CupyBackend(gemm_path="fused"), cuda_graph=cuda_graph,
                        n_iter_no_change=100, callbacks=[marker, *callbacks])
    clf.fit(cp.asarray(X[:n_rows]), y[:n_rows], validation_data=(cp.asarray(X[n_rows:]),
                                                                   y[n_rows:]))
    marks = marker.marks + [len(waits)]
    return [after - before for before, after in zip(marks[1:-1], marks[2:])]  # epochs 2..4


@pytest.mark.kernels
@pytest.mark.parametrize("cuda_graph", ["on", "off"])
def test_callbacks_add_no_host_sync_per_step(cp, monkeypatch, tmp_path, cuda_graph):
    from gpumlp.backends.cuda import graph_auto

    monkeypatch.setattr(graph_auto, "VERDICTS", graph_auto.GraphVerdicts())
    emulated = load_support("emulated_cupy")

    def callbacks():
        return [EarlyStopping(monitor="val_loss", patience=100),
                CSVLogger(tmp_path / "log.csv"), LearningRateScheduler(StepDecay(0.01)),
                ProgressBar(stream=io.StringIO(), interval=1e-9)]

    short = host_waits_per_epoch(cp, emulated, monkeypatch, 16, cuda_graph, callbacks())
    long = host_waits_per_epoch(cp, emulated, monkeypatch, 64, cuda_graph, callbacks())
    # 2 steps or 8 steps per epoch: the same synchronisations (the epoch's loss, the
    # validation values), so none of them is per step.
    assert short == long
    assert max(long) <= 4

    class SyncsEveryStep(Callback):  # what the count would catch: a per-step device read
        def on_batch_end(self, trainer, batch, rows):
            float(trainer.network.params[0])

    if cuda_graph == "off":
        short = host_waits_per_epoch(cp, emulated, monkeypatch, 16, "off", [SyncsEveryStep()])
        long = host_waits_per_epoch(cp, emulated, monkeypatch, 64, "off", [SyncsEveryStep()])
        assert [b - a for a, b in zip(short, long)] == [6, 6, 6]


@pytest.mark.kernels
def test_scheduler_and_validation_on_the_graph_path_match_eager(cp, monkeypatch):
    """The rate a scheduler sets reaches the captured steps (written once per epoch), and the
    validation values and the weights EarlyStopping restores are those of eager training."""
    from gpumlp.backends.cuda import graph_auto
    from gpumlp.backends.cuda.backend import CupyBackend

    monkeypatch.setattr(graph_auto, "VERDICTS", graph_auto.GraphVerdicts())
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(64, 6)), rng.integers(0, 3, 64)
    fits = {}
    for cuda_graph in ("on", "off"):
        clf = MLPClassifier((8,), batch_size=16, max_iter=4, random_state=0, dtype="float64",
                            backend=CupyBackend(gemm_path="fused"), cuda_graph=cuda_graph,
                            n_iter_no_change=100, callbacks=[
                                LearningRateScheduler(lambda epoch, lr: [0.05, 0.0, 0.1,
                                                                         0.0][epoch]),
                                EarlyStopping(monitor="val_score", patience=10)])
        fits[cuda_graph] = clf.fit(cp.asarray(X[:48]), y[:48],
                                   validation_data=(cp.asarray(X[48:]), y[48:]))
    graph, eager = fits["on"], fits["off"]
    assert graph.n_iter_ == 4  # cuda_graph="on" would have raised had it not captured
    assert graph.history_["lr"] == eager.history_["lr"] == [0.05, 0.0, 0.1, 0.0]
    np.testing.assert_allclose(graph.history_["val_loss"], eager.history_["val_loss"],
                               rtol=1e-10)
    assert graph.history_["val_score"] == eager.history_["val_score"]
    assert graph.callbacks[1].best_epoch == eager.callbacks[1].best_epoch
    np.testing.assert_allclose(graph.network_.get_flat_params(),
                               eager.network_.get_flat_params(), rtol=1e-10, atol=1e-12)
    # A zero rate froze the weights in epochs 2 and 4 (Adam's update is lr times a finite
    # number): the validation loss after each equals the one before it.
    val_loss = graph.history_["val_loss"]
    assert val_loss[1] == val_loss[0] and val_loss[3] == val_loss[2] != val_loss[1]


def test_callbacks_see_the_estimator_as_owner_during_its_call_only():
    """The estimator reaches its trainer as ``fit(..., owner=)`` / ``run_epoch(..., owner=)``:
    hooks see it during that call, and no reference to it is left behind."""
    seen = []

    class Spy(Callback):
        def on_train_begin(self, trainer):
            seen.append(("begin", trainer.owner))

        def on_epoch_end(self, trainer, epoch, logs):
            seen.append(("epoch", trainer.owner))
            return False

    X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    clf = MLPClassifier((4,), max_iter=2, callbacks=[Spy()], backend="numpy", random_state=0)
    with pytest.warns(gpumlp.exceptions.ConvergenceWarning):
        clf.fit(X, y)
    assert seen == [("begin", clf), ("epoch", clf), ("epoch", clf)]
    assert clf._trainer_.owner is None
    seen.clear()
    clf.partial_fit(X, y)
    assert seen == [("epoch", clf)] and clf._trainer_.owner is None


def test_a_warm_start_goes_on_with_the_history_and_step_count_of_the_last_fit():
    X = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    y = (X[:, 1] > 0).astype(int)
    clf = MLPClassifier((4,), max_iter=3, batch_size=10, warm_start=True, dropout=0.2,
                        backend="numpy", random_state=0)
    with pytest.warns(gpumlp.exceptions.ConvergenceWarning):
        clf.fit(X, y)
    first, history = clf._trainer_, clf._trainer_.history
    assert first.step_count == 15 and history.stop_reason == "max_iter"
    with pytest.warns(gpumlp.exceptions.ConvergenceWarning):
        clf.fit(X, y)
    assert clf._trainer_ is not first and clf._trainer_.history is history
    assert clf._trainer_.step_count == 30 and len(history.loss) == 6
    assert history.stop_reason == "max_iter"


def test_a_bare_trainer_given_its_estimator_as_owner_checkpoints_it(split, tmp_path):
    X, y, _, _ = split
    clf = MLPClassifier((4,), max_iter=1, backend="numpy", random_state=0)
    with pytest.warns(gpumlp.exceptions.ConvergenceWarning):
        clf.fit(X, y)
    net = clf.network_
    trainer = Trainer(net, Adam(net.backend, net.params), callbacks=[
        ModelCheckpoint(tmp_path / "m.npz", monitor="loss", save_best_only=False)])
    trainer.fit(X.astype(np.float32), y[:, None].astype(np.float32), 2, owner=clf)
    assert trainer.owner is None
    np.testing.assert_array_equal(gpumlp.load(tmp_path / "m.npz").predict_proba(X),
                                  clf.predict_proba(X))
