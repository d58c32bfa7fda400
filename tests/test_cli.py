"""The ``gpumlp`` command line, called in-process through ``gpumlp.cli.main``.

The train/evaluate round trip uses the real Fashion-MNIST test set (skipped, with the reason,
where /usr/share/datasets/fashion-mnist is absent) on a 2000-sample training subset.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
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
    """``main(argv)`` with stdout and stderr captured; SystemExit becomes the return code."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ("train", "evaluate", "info", "bench"):
        assert command in text
    assert "gpumlp info" in text  # tells a newcomer where to start


def test_train_help_explains_the_options(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
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
    """Replace the data loader by a small synthetic dataset (nothing is read from disk)."""
    import gpumlp.data as data_module

    rng = np.random.default_rng(0)
    X = rng.random((60, 784), dtype=np.float32)
    y = np.arange(60) % 10
    fake = data_module.Dataset(X, y, X[:20], y[:20], name="fashion-mnist", source="memory")
    monkeypatch.setattr(data_module, "load_dataset", lambda *args, **kwargs: fake)


@pytest.mark.parametrize("hidden", ["32,x", "0", "-5", ",", "3.5"])
def test_bad_hidden_sizes_are_reported(tiny_dataset, tmp_path, hidden):
    code, out, err = run(["train", f"--hidden={hidden}", "--epochs", "1", "--backend", "numpy",
                          "--output", str(tmp_path / "m.npz")])
    assert code != 0
    assert "--hidden" in err and hidden in err
    assert not (tmp_path / "m.npz").exists()


def test_unknown_dataset_is_a_clear_error():
    code, out, err = run(["train", "--dataset", "not-a-dataset", "--epochs", "1"])
    assert code != 0
    assert "not-a-dataset" in err
    assert "fashion-mnist" in err  # says which ones exist
    assert "Traceback" not in err


def test_evaluate_a_missing_model_file(tmp_path):
    code, out, err = run(["evaluate", str(tmp_path / "nope.npz")])
    assert code != 0 and "nope.npz" in err


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
