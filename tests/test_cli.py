"""The ``gpumlp`` command line, called in-process through ``gpumlp.cli.main``.

The train/evaluate round trip uses the real Fashion-MNIST test set (skipped, with the reason,
where /usr/share/datasets/fashion-mnist is absent) on a 2000-sample training subset.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import cli

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not all((FASHION / f"{stem}.gz").is_file() or (FASHION / stem).is_file()
            for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    reason=f"real Fashion-MNIST not installed at {FASHION} (apt-get install "
           "dataset-fashion-mnist)")
ACCURACY = re.compile(r"test accuracy(?: on [\w-]+)?: ([0-9.]+)")


def run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured (it returns the status, never exits)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_help_lists_the_commands(capsys):
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("train", "evaluate", "info", "bench"):
        assert command in text
    assert "gpumlp info" in text  # tells a newcomer where to start


def test_train_help_explains_the_options(capsys):
    assert cli.main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--dataset", "--hidden", "--epochs", "--batch-size", "--lr", "--backend",
                   "--seed", "--dropout", "--output"):
        assert option in text
    assert "fashion-mnist" in text  # defaults are shown


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) != 0
    assert "train" in capsys.readouterr().out


def test_info_reports_backends_and_datasets(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert gpumlp.__version__ in text
    assert re.search(r"numpy\s+available", text)
    reason = gpumlp.available_backends()["cupy"]
    assert re.search(r"cupy\s+" + ("available" if reason is None else "unavailable: "), text)
    for name in ("mnist", "fashion-mnist", "kmnist"):
        assert name in text
    assert "datasets" in text and "backends" in text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short real training run shared by the train and evaluate tests."""
    model = tmp_path_factory.mktemp("cli") / "model.npz"
    code, out, err = run(["train", "--dataset", "fashion-mnist", "--limit", "2000",
                          "--epochs", "2", "--hidden", "32", "--batch-size", "32",
                          "--backend", "numpy", "--output", str(model), "--seed", "0"])
    return code, out, err, model


@needs_fashion
def test_train_prints_progress_accuracy_and_saves(trained):
    code, out, err, model = trained
    assert code == 0, err
    epochs = re.findall(r"^epoch (\d)/2 .*loss ([0-9.]+)", out, flags=re.MULTILINE)
    assert [e for e, _ in epochs] == ["1", "2"]
    assert float(epochs[1][1]) < float(epochs[0][1])  # the loss went down
    accuracy = float(ACCURACY.search(out).group(1))
    assert accuracy > 0.6  # ten classes: chance is 0.1
    assert "2000 training / 10000 test" in out
    assert model.is_file()
    loaded = gpumlp.load(model)
    assert loaded.hidden_layer_sizes == (32,) and loaded.n_iter_ == 2
    assert loaded.n_features_in_ == 784 and list(loaded.classes_) == list(range(10))
    assert loaded.get_params()["init"] == "he"  # the recipe's, not the estimators' default


@needs_fashion
def test_evaluate_reproduces_the_training_accuracy(trained):
    code, out, err, model = trained
    assert code == 0, err
    trained_accuracy = ACCURACY.search(out).group(1)
    code, out, err = run(["evaluate", str(model), "--dataset", "fashion-mnist"])
    assert code == 0, err
    assert str(model) in out
    assert ACCURACY.search(out).group(1) == trained_accuracy
    # and the printed figure is the model's real score on the test set
    data = gpumlp.data.load_dataset("fashion-mnist", download=False)
    assert gpumlp.load(model).score(data.X_test, data.y_test) == pytest.approx(
        float(trained_accuracy), abs=5e-5)


@pytest.fixture
def tiny_dataset(monkeypatch):
    """Replace the data loader by a small synthetic dataset (nothing is read from disk).

    Returns the list of load calls, so a test can check that no data was loaded.
    """
    import gpumlp.data as data_module

    rng = np.random.default_rng(0)
    X = rng.random((60, 784), dtype=np.float32)
    y = np.arange(60) % 10
    fake = data_module.Dataset(X, y, X[:20], y[:20], name="fashion-mnist", source="memory")
    calls = []

    def load_dataset(*args, **kwargs):
        calls.append(args)
        return fake

    monkeypatch.setattr(data_module, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize("hidden", ["32,x", "0", "-5", ",", "3.5"])
def test_bad_hidden_sizes_are_reported(tiny_dataset, tmp_path, hidden):
    code, out, err = run(["train", f"--hidden={hidden}", "--epochs", "1", "--backend", "numpy",
                          "--output", str(tmp_path / "m.npz")])
    assert code != 0
    assert "--hidden" in err and hidden in err
    assert not (tmp_path / "m.npz").exists()
    assert err.count("\n") == 1 and "Traceback" not in err


def test_unknown_dataset_is_a_clear_error():
    code, out, err = run(["train", "--dataset", "not-a-dataset", "--epochs", "1"])
    assert code != 0
    assert "not-a-dataset" in err
    assert "fashion-mnist" in err  # says which ones exist
    assert "Traceback" not in err


def test_evaluate_a_missing_model_file(tmp_path):
    code, out, err = run(["evaluate", str(tmp_path / "nope.npz")])
    assert code != 0 and "nope.npz" in err and err.count("\n") == 1


def test_evaluate_a_file_that_is_not_a_model(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a model at all")
    code, out, err = run(["evaluate", str(path)])
    assert code != 0 and str(path) in err and "Traceback" not in err


def test_version_in_a_subprocess():
    root = Path(gpumlp.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-m", "gpumlp.cli", "--version"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"gpumlp {gpumlp.__version__}"


# ------------------------------------------------------------------ options checked up front
def _subparsers():
    parser = cli.build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return parser, commands.choices


def test_every_option_has_help_and_shows_its_default_once():
    parser, commands = _subparsers()
    for name, command in [("gpumlp", parser), *commands.items()]:
        formatter = command._get_formatter()
        for action in command._actions:
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            text = formatter._expand_help(action)
            assert "(default: None)" not in text and "(default: False)" not in text, text
            assert "(default: )" not in text, text
            if "(default: " in text:  # the formatter's, and no second one in the text
                assert text.count("default") == 1, f"{name} {action.option_strings[0]}: {text}"
    train = commands["train"].format_help()
    assert "(default: None)" not in train and "default: 30" in train


def test_finite_options_offer_their_choices():
    _, commands = _subparsers()
    options = {option: action for action in commands["train"]._actions
               for option in action.option_strings}
    for option in ("--activation", "--solver", "--dtype", "--backend", "--schedule",
                   "--cuda-graph", "--dataset"):
        assert options[option].choices, option
    assert "relu" in options["--activation"].choices
    assert "hard_limit" not in options["--activation"].choices  # no derivative: cannot train
    assert {"constant", "cosine"} <= set(options["--schedule"].choices)


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "-1"], "--epochs must be >= 1, got -1"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--epochs", "two"], "--epochs must be an integer, got 'two'"),
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--dropout", "1.0"], "--dropout must be in [0, 1), got 1.0"),
    (["--dropout", "-0.1"], "--dropout must be in [0, 1), got -0.1"),
    (["--limit", "-59000"], "--limit must be >= 1, got -59000"),
    (["--limit", "0"], "--limit must be >= 1, got 0"),
    (["--lr", "0"], "--lr must be > 0, got 0"),
    (["--lr", "nan"], "--lr must be > 0, got nan"),
    (["--alpha", "-1"], "--alpha must be >= 0, got -1"),
    (["--seed", "-3"], "--seed must be >= 0, got -3"),
    (["--hidden", "512,,x"], "--hidden must be comma-separated integers"),
    (["--activation", "softmax"], "invalid choice: 'softmax'"),
    (["--solver", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["--schedule", "step"], "invalid choice: 'step'"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
])
def test_bad_options_fail_before_the_data_loads(tiny_dataset, tmp_path, argv, message):
    code, out, err = run(["train", *argv, "--output", str(tmp_path / "m.npz")])
    assert code == 2
    assert err.startswith("gpumlp train: error: ") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err  # one line
    assert tiny_dataset == []  # no data was loaded
    assert list(tmp_path.iterdir()) == []


def test_unavailable_cupy_is_refused_with_the_reason_before_loading(tiny_dataset):
    reason = gpumlp.available_backends()["cupy"]
    if reason is None:
        pytest.skip("CuPy runs here; the refusal needs a machine without it")
    code, out, err = run(["train", "--backend", "cupy", "--no-save"])
    assert code == 2 and tiny_dataset == []
    assert f"--backend cupy is unavailable: {reason}" in " ".join(err.split())
    assert err.count("\n") == 1
    code, out, err = run(["train", "--backend", "numpy", "--cuda-graph", "on", "--no-save"])
    assert code == 2 and "--cuda-graph on needs the cupy backend" in err
    assert tiny_dataset == []


def test_evaluate_refuses_unavailable_cupy_before_loading(tmp_path):
    reason = gpumlp.available_backends()["cupy"]
    if reason is None:
        pytest.skip("CuPy runs here")
    code, out, err = run(["evaluate", str(tmp_path / "m.npz"), "--backend", "cupy"])
    assert code == 2 and "--backend cupy is unavailable" in err and err.count("\n") == 1


# ---------------------------------------------------------------------- where models are saved
def test_output_that_is_a_directory_fails_before_training(tiny_dataset, tmp_path):
    code, out, err = run(["train", "--epochs", "1", "--output", str(tmp_path)])
    assert code == 2 and "--output" in err and "is a directory" in err
    assert tiny_dataset == [] and "epoch" not in out


def test_output_below_a_file_fails_before_training(tiny_dataset, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    code, out, err = run(["train", "--epochs", "1", "--output", str(blocker / "m.npz")])
    assert code == 2 and "--output" in err and "is a file, not a folder" in err
    assert tiny_dataset == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root may write in any folder")
def test_output_in_a_read_only_folder_fails_before_training(tiny_dataset, tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, out, err = run(["train", "--epochs", "1", "--output", str(folder / "m.npz")])
    finally:
        folder.chmod(0o700)
    assert code == 2 and "no permission" in err and tiny_dataset == []


def test_output_in_a_missing_folder_is_created(tiny_dataset, tmp_path):
    target = tmp_path / "new" / "deeper" / "m.npz"
    code, out, err = run(["train", "--epochs", "1", "--hidden", "8", "--backend", "numpy",
                          "--output", str(target)])
    assert code == 0, err
    assert gpumlp.load(target).n_iter_ == 1


def test_existing_output_needs_force(tiny_dataset, tmp_path):
    target = tmp_path / "m.npz"
    target.write_bytes(b"an earlier model")
    code, out, err = run(["train", "--epochs", "1", "--hidden", "8", "--backend", "numpy",
                          "--output", str(target)])
    assert code == 2 and "exists" in err and "--force" in err
    assert target.read_bytes() == b"an earlier model" and tiny_dataset == []
    code, out, err = run(["train", "--epochs", "1", "--hidden", "8", "--backend", "numpy",
                          "--output", str(target), "--force"])
    assert code == 0, err
    assert gpumlp.load(target).hidden_layer_sizes == (8,)


def test_train_saves_by_default_and_never_overwrites(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--epochs", "1", "--hidden", "8", "--backend", "numpy"]
    code, out, err = run(argv)
    assert code == 0, err
    first = tmp_path / "fashion-mnist-mlp.npz"
    assert "model saved to fashion-mnist-mlp.npz" in out
    content = first.read_bytes()
    code, out, err = run([*argv, "--seed", "1"])
    assert code == 0, err
    assert "model saved to fashion-mnist-mlp-2.npz" in out
    assert first.read_bytes() == content  # the first model is untouched
    assert gpumlp.load(tmp_path / "fashion-mnist-mlp-2.npz").n_iter_ == 1
    code, out, err = run([*argv, "--no-save"])
    assert code == 0 and "saved" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fashion-mnist-mlp-2.npz",
                                                         "fashion-mnist-mlp.npz"]


# ------------------------------------------------------------- interruptions keep the model
def _fail_at_step(monkeypatch, step: int, exc: BaseException) -> None:
    """Make the optimizer raise ``exc`` at its ``step``-th update (1-based)."""
    from gpumlp import optim

    calls = {"n": 0}
    original = optim.Adam.step

    def step_or_fail(self, params, grads, backend=None, **options):
        calls["n"] += 1
        if calls["n"] == step:
            raise exc
        return original(self, params, grads, backend, **options)

    monkeypatch.setattr(optim.Adam, "step", step_or_fail)


# 60 samples in batches of 20: three steps per epoch; step 8 is the middle of epoch 3.
TINY = ["train", "--hidden", "8", "--batch-size", "20", "--backend", "numpy",
        "--schedule", "constant", "--dropout", "0", "--seed", "3"]


def test_ctrl_c_mid_epoch_saves_the_last_finished_epoch(tiny_dataset, tmp_path, monkeypatch):
    reference = tmp_path / "two-epochs.npz"
    assert run([*TINY, "--epochs", "2", "--output", str(reference)])[0] == 0
    _fail_at_step(monkeypatch, 8, KeyboardInterrupt())
    target = tmp_path / "m.npz"
    code, out, err = run([*TINY, "--epochs", "5", "--output", str(target)])
    assert code == 130
    saved = tmp_path / "m.interrupted.npz"
    assert err.strip() == (f"gpumlp train: interrupted; the model after epoch 2 of 5 is saved "
                           f"to {saved}")
    assert not target.exists()
    model, expected = gpumlp.load(saved), gpumlp.load(reference)
    assert model.n_iter_ == 2 and len(model.loss_curve_) == 2
    # exactly the weights of a run that stopped after two epochs (constant step size)
    np.testing.assert_array_equal(model.network_.get_flat_params(),
                                  expected.network_.get_flat_params())


def test_ctrl_c_between_epochs_saves_that_epoch(tiny_dataset, tmp_path, monkeypatch):
    from gpumlp import progress

    original = progress.EpochProgress.__call__

    def interrupt_after_epoch_3(self, epoch, history):
        original(self, epoch, history)
        if epoch == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(progress.EpochProgress, "__call__", interrupt_after_epoch_3)
    code, out, err = run([*TINY, "--epochs", "6", "--output", str(tmp_path / "m.npz")])
    assert code == 130 and "after epoch 3 of 6" in err
    assert gpumlp.load(tmp_path / "m.interrupted.npz").n_iter_ == 3


def test_ctrl_c_before_any_epoch_saves_nothing(tiny_dataset, tmp_path, monkeypatch):
    _fail_at_step(monkeypatch, 2, KeyboardInterrupt())
    code, out, err = run([*TINY, "--epochs", "5", "--output", str(tmp_path / "m.npz")])
    assert code == 130 and "no epoch had finished" in err
    assert list(tmp_path.iterdir()) == []


def test_an_error_after_some_epochs_saves_the_model_and_is_one_line(tiny_dataset, tmp_path,
                                                                     monkeypatch):
    _fail_at_step(monkeypatch, 8, RuntimeError("device lost"))
    code, out, err = run([*TINY, "--epochs", "5", "--output", str(tmp_path / "m.npz")])
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gpumlp train: error: device lost; the model after epoch 2 of 5 "
                          "is saved to ")
    assert gpumlp.load(tmp_path / "m.interrupted.npz").n_iter_ == 2


def test_interrupted_saves_never_overwrite_each_other(tiny_dataset, tmp_path, monkeypatch):
    (tmp_path / "m.interrupted.npz").write_bytes(b"kept")
    _fail_at_step(monkeypatch, 8, KeyboardInterrupt())
    code, out, err = run([*TINY, "--epochs", "5", "--output", str(tmp_path / "m.npz")])
    assert code == 130 and "m.interrupted-2.npz" in err
    assert (tmp_path / "m.interrupted.npz").read_bytes() == b"kept"


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(tiny_dataset, tmp_path,
                                                                      monkeypatch):
    _fail_at_step(monkeypatch, 1, MemoryError())
    code, out, err = run([*TINY, "--epochs", "2", "--no-save"])
    assert code == 1 and err.count("\n") == 1 and "MemoryError" in err
    assert "Traceback" not in err
    for argv in (["--debug", *TINY], [*TINY, "--debug"]):  # before or after the command
        _fail_at_step(monkeypatch, 1, MemoryError())
        code, out, err = run([*argv, "--epochs", "2", "--no-save"])
        assert code == 1 and "Traceback" in err and "MemoryError" in err.splitlines()[-1]


@needs_fashion
def test_a_real_sigint_saves_the_model(tmp_path):
    """Ctrl-C as a terminal sends it: SIGINT to a running ``gpumlp train`` process."""
    root = Path(gpumlp.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(root), os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        [sys.executable, "-m", "gpumlp.cli", "train", "--limit", "500", "--epochs", "1000",
         "--hidden", "16", "--backend", "numpy", "--output", str(tmp_path / "m.npz")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        for line in process.stdout:
            if line.startswith("epoch") and line.split()[1].startswith("2/"):
                process.send_signal(signal.SIGINT)
                break
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted; the model after epoch" in err
    assert gpumlp.load(tmp_path / "m.interrupted.npz").n_iter_ >= 2


# ------------------------------------------------------------------- progress and the plot
def test_progress_in_a_log_is_one_plain_line_per_epoch(tiny_dataset):
    code, out, err = run([*TINY, "--epochs", "3", "--no-save"])
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 3
    assert "\r" not in out and "[" not in "".join(lines)  # no bar in a file
    for number, line in enumerate(lines, 1):
        assert re.fullmatch(rf"epoch {number}/3  loss [0-9.]+  accuracy [0-9.]+  "
                            r"elapsed [0-9.]+s  eta [0-9.]+s", line), line


def test_progress_on_a_terminal_draws_a_bar():
    from gpumlp.progress import EpochProgress
    from gpumlp.training import History

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    progress = EpochProgress(4, evaluate=lambda: 0.75, stream=screen)
    assert progress(2, History(loss=[0.9, 0.5])) is False
    line = screen.getvalue()
    assert line.count("\n") == 1 and "\r" not in line
    assert "[" + "#" * 12 + "." * 12 + "]" in line and "accuracy 0.7500" in line
    assert progress.loss == [0.5] and progress.accuracy == [0.75]


def test_quiet_prints_no_progress(tiny_dataset):
    code, out, err = run([*TINY, "--epochs", "2", "--no-save", "--quiet"])
    assert code == 0 and not re.search(r"^epoch", out, flags=re.MULTILINE)


def test_plot_without_matplotlib_fails_before_training(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, out, err = run([*TINY, "--epochs", "2", "--no-save", "--plot",
                          str(tmp_path / "c.png")])
    assert code == 2 and tiny_dataset == []
    assert err.count("\n") == 1 and "--plot needs matplotlib" in err
    assert "pip install matplotlib" in err


def test_plot_draws_loss_and_accuracy(tiny_dataset, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    code, out, err = run([*TINY, "--epochs", "3", "--no-save", "--quiet", "--plot", str(png)])
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"curves plotted to {png}" in out


def test_plot_records_curves_even_when_quiet(tiny_dataset, tmp_path, monkeypatch):
    """The plot gets one loss and one accuracy per epoch (checked without matplotlib)."""
    from gpumlp import progress

    drawn = {}
    monkeypatch.setattr(progress, "matplotlib_missing", lambda: None)
    monkeypatch.setattr(progress, "plot_curves",
                        lambda path, loss, accuracy, **kw: drawn.update(loss=loss,
                                                                        accuracy=accuracy))
    code, out, err = run([*TINY, "--epochs", "3", "--no-save", "--quiet", "--plot",
                          str(tmp_path / "c.png")])
    assert code == 0, err
    assert len(drawn["loss"]) == 3 and len(drawn["accuracy"]) == 3
    assert all(0 <= a <= 1 for a in drawn["accuracy"]) and drawn["loss"][2] < drawn["loss"][0]


def test_warnings_are_one_line_each(tiny_dataset, tmp_path, monkeypatch):
    """A run that diverges in epoch 2 keeps epoch 1, says so in one line, and saves it."""
    from gpumlp import optim

    calls = {"n": 0}
    original = optim.Adam.step

    def step_then_blow_up(self, params, grads, backend=None, **options):
        original(self, params, grads, backend, **options)
        calls["n"] += 1
        if calls["n"] == 5:
            params[...] = np.nan

    monkeypatch.setattr(optim.Adam, "step", step_then_blow_up)
    code, out, err = run([*TINY, "--epochs", "4", "--output", str(tmp_path / "m.npz")])
    assert code == 0, err
    assert err.startswith("gpumlp train: warning: training diverged at epoch 2")
    assert err.count("\n") == 1 and "warnings.warn" not in err
    assert gpumlp.load(tmp_path / "m.npz").n_iter_ == 1
