"""``gpumlp train --data`` on your own CSV, .npz and Parquet files, and ``gpumlp predict``:
options checked before any data is read, one-line errors naming file, line and column."""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np
import pytest

import gpumlp
from gpumlp import cli

SMALL = ["--hidden", "16", "--epochs", "3", "--batch-size", "32", "--lr", "0.01",
         "--backend", "numpy", "--dropout", "0"]


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    return X, np.where(X[:, 0] + X[:, 1] > 0, "yes", "no")


def write_csv(path, X, y, names=("a", "b", "c"), target="label", extra=None):
    header = list(names) + [target] + (["id"] if extra else [])
    lines = [",".join(header)]
    for i, (row, label) in enumerate(zip(X, y)):
        cells = [repr(float(v)) for v in row] + [str(label)] + ([f"r{i}"] if extra else [])
        lines.append(",".join(cells))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def csv_pair(tmp_path):
    X, y = blobs(200, 0)
    train = write_csv(tmp_path / "train.csv", X, y)
    X_new, y_new = blobs(30, 1)
    # columns in another order, with the target and an id column the model does not use
    new = write_csv(tmp_path / "new.csv", X_new[:, ::-1], y_new, names=("c", "b", "a"),
                    extra=True)
    return train, new, X_new


def test_train_on_a_csv_then_predict_another(tmp_path, csv_pair):
    train, new, X_new = csv_pair
    model_path = tmp_path / "m.npz"
    code, out, err = run(["train", "--data", str(train), "--target", "label",
                          "--test-fraction", "0.25", *SMALL, "--output", str(model_path)])
    assert code == 0, err
    assert "task classify (target 'label' holds text labels)" in out
    assert "150 training / 50 test samples; 3-16-1 (2 classes)" in out
    assert "test accuracy: " in out and err == ""
    model = gpumlp.load(model_path)
    assert isinstance(model, gpumlp.MLPClassifier)
    assert model.feature_names_in_.tolist() == ["a", "b", "c"]
    code, out, err = run(["predict", str(model_path), str(new), "--output",
                          str(tmp_path / "p.csv"), "--proba"])
    assert code == 0, err
    written = tmp_path / "p.csv"
    assert out.strip() == f"30 predictions of {model_path} for {new} written to {written}"
    lines = (tmp_path / "p.csv").read_text().splitlines()
    assert lines[0] == "prediction,proba_no,proba_yes" and len(lines) == 31
    rows = [line.split(",") for line in lines[1:]]
    expected = model.predict(X_new.astype(np.float32))  # the columns by name, in order
    assert [row[0] for row in rows] == expected.tolist()
    np.testing.assert_allclose([float(r[1]) + float(r[2]) for r in rows], 1.0, rtol=1e-6)


def test_predict_writes_csv_to_standard_output(tmp_path, csv_pair):
    train, new, _ = csv_pair
    assert run(["train", "--data", str(train), "--target", "label", *SMALL, "--output",
                str(tmp_path / "m.npz")])[0] == 0
    code, out, err = run(["predict", str(tmp_path / "m.npz"), str(new)])
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == "prediction" and len(lines) == 31
    assert set(lines[1:]) <= {"yes", "no"}


def test_regression_from_npz_with_a_test_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = X @ [1.0, -2.0, 0.5, 0.0] + 0.3
    np.savez(tmp_path / "train.npz", X=X[:90], y=y[:90])
    np.savez(tmp_path / "test.npz", X=X[90:], y=y[90:])
    code, out, err = run(["train", "--data", str(tmp_path / "train.npz"), "--target", "y",
                          "--test", str(tmp_path / "test.npz"), *SMALL, "--epochs", "20",
                          "--output", str(tmp_path / "r.npz")])
    assert code == 0, err
    assert "task regress (target 'y' holds non-integer numbers" in out
    assert "90 training / 30 test samples; 4-16-1," in out and "test R2: " in out
    assert "R2 " in out.splitlines()[2]  # the per-epoch line names the metric
    model = gpumlp.load(tmp_path / "r.npz")
    assert isinstance(model, gpumlp.MLPRegressor)
    assert model.feature_names_in_.tolist() == ["x0", "x1", "x2", "x3"]
    code, out, err = run(["predict", str(tmp_path / "r.npz"), str(tmp_path / "test.npz")])
    assert code == 0
    values = np.array(out.splitlines()[1:], dtype=float)
    np.testing.assert_allclose(values, model.predict(X[90:].astype(np.float32)), rtol=1e-6)
    code, _, err = run(["predict", str(tmp_path / "r.npz"), str(tmp_path / "test.npz"),
                        "--proba"])
    assert code == 2 and "--proba: the MLPRegressor in" in err and "no class probabilities" in err


def test_parquet_with_task_given_and_no_test_set(tmp_path):
    pa = pytest.importorskip("pyarrow")
    parquet = pytest.importorskip("pyarrow.parquet")
    X, _ = blobs(100, 2)
    labels = (X[:, 0] > 0).astype(int) * 3  # integers 0 and 3: classes
    parquet.write_table(pa.table({"u": X[:, 0], "v": X[:, 1], "k": labels}),
                        tmp_path / "d.parquet")
    code, out, err = run(["train", "--data", str(tmp_path / "d.parquet"), "--target", "k",
                          "--task", "classify", *SMALL, "--output", str(tmp_path / "m.npz")])
    assert code == 0, err
    assert "task classify (--task given)" in out
    assert "no test (--test or --test-fraction) samples" in out
    assert "training accuracy: " in out and "(no test set)" in out
    code, out, _ = run(["predict", str(tmp_path / "m.npz"), str(tmp_path / "d.parquet"),
                        "--proba"])
    assert code == 0 and out.splitlines()[0] == "prediction,proba_0,proba_3"


def test_default_output_is_named_after_the_data_file(tmp_path, csv_pair, monkeypatch):
    train, _, _ = csv_pair
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["train", "--data", str(train), "--target", "label", *SMALL])
    assert code == 0, err
    assert (tmp_path / "train-mlp.npz").is_file()


# ---------------------------------------------------------- options checked before the data
@pytest.mark.parametrize("argv, message", [
    (["--target", "y"], "--target needs --data FILE (your own data)"),
    (["--test-fraction", "0.2"], "--test-fraction needs --data FILE"),
    (["--data", "{train}"], "--data needs --target COLUMN, the column to predict"),
    (["--data", "{train}", "--target", "label", "--dataset", "mnist"],
     "--dataset cannot be combined with --data"),
    (["--data", "{dir}/x.txt", "--target", "y"], "--data '{dir}/x.txt': unknown file type "
                                                  "'.txt'; allowed: .csv, .npz, .parquet, .pq"),
    (["--data", "{dir}/missing.csv", "--target", "y"], "--data {dir}/missing.csv: no such file"),
    (["--data", "{dir}/pipe.csv", "--target", "y"],
     "--data '{dir}/pipe.csv' is a FIFO (named pipe), not a regular file"),
    (["--data", "{train}", "--target", "label", "--test", "{dir}/none.npz"],
     "--test {dir}/none.npz: no such file"),
    (["--data", "{train}", "--target", "label", "--test-fraction", "1"],
     "--test-fraction must be in (0, 1), got 1"),
    (["--data", "{train}", "--target", "label", "--test", "{train}", "--test-fraction", "0.1"],
     "--test-fraction: not allowed with argument --test"),
    (["--data", "{train}", "--target", "label", "--task", "sort"],
     "--task: invalid choice: 'sort'"),
    (["--data", "{train}", "--target", "label", "--output", "{dir}"], "is a directory"),
])
def test_bad_options_fail_before_any_data_is_read(tmp_path, csv_pair, monkeypatch, argv,
                                                  message):
    from gpumlp.data import tables

    train, _, _ = csv_pair
    os.mkfifo(tmp_path / "pipe.csv")
    monkeypatch.setattr(tables, "_read_csv", lambda *a: pytest.fail("data was read"))
    argv = [a.format(train=train, dir=tmp_path) for a in argv]
    code, out, err = run(["train", *argv, *SMALL])
    assert code == 2
    assert message.format(dir=tmp_path) in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize("text, message", [
    ("a,b,c,label\n1,2,3,x\n1,oops,3,y\n",
     "gpumlp train: error: {path}, line 3, column 'b': 'oops' is not a number"),
    ("a,b,c,label\n1,2,3,x\n1,2\n", "gpumlp train: error: {path}, line 3: 2 fields, but the "
                                    "header has 4"),
    ("a,b,c\n1,2,3\n", "gpumlp train: error: {path}: no column 'label' (the target); "
                       "columns: 'a', 'b', 'c'"),
    ("a,b,c,label\n1.5,2,3,0.25\n2,3,4,1\n", None),  # regress inferred: trains
])
def test_bad_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    code, out, err = run(["train", "--data", str(path), "--target", "label", *SMALL,
                          "--no-save"])
    if message is None:
        assert code == 0, err
        return
    assert code == 1
    assert err == message.format(path=path) + "\n"


def test_predict_checks_and_errors(tmp_path, csv_pair):
    train, new, _ = csv_pair
    model = tmp_path / "m.npz"
    assert run(["train", "--data", str(train), "--target", "label", *SMALL, "--output",
                str(model)])[0] == 0
    (tmp_path / "p.csv").write_text("keep\n")
    code, _, err = run(["predict", str(model), str(new), "--output", str(tmp_path / "p.csv")])
    assert code == 2 and "--output" in err and "exists; add --force" in err
    assert (tmp_path / "p.csv").read_text() == "keep\n"
    assert run(["predict", str(model), str(new), "--output", str(tmp_path / "p.csv"),
                "--force"])[0] == 0
    assert (tmp_path / "p.csv").read_text().startswith("prediction\n")
    code, _, err = run(["predict", str(model), str(tmp_path / "new.json")])
    assert code == 2 and "data '" in err and "unknown file type '.json'" in err
    code, _, err = run(["predict", str(tmp_path / "nope.npz"), str(new)])
    assert code == 2 and "no such file" in err
    os.mkfifo(tmp_path / "pipe.csv")  # refused at once, never opened for reading
    code, _, err = run(["predict", str(model), str(tmp_path / "pipe.csv")])
    assert code == 2 and "is a FIFO (named pipe), not a regular file" in err
    missing = tmp_path / "missing_column.csv"
    missing.write_text("a,b\n1,2\n")
    code, _, err = run(["predict", str(model), str(missing)])
    assert code == 1 and err.strip() == (f"gpumlp predict: error: {missing}: no column 'c', a "
                                         "feature the model was trained on; columns: 'a', 'b'")


def test_predict_with_a_model_trained_in_python_takes_every_column(tmp_path):
    X, y = blobs(60, 3)
    model = gpumlp.Perceptron().fit(X, y)
    model.save(tmp_path / "p.npz")
    np.savez(tmp_path / "x.npz", X=X)
    code, out, err = run(["predict", str(tmp_path / "p.npz"), str(tmp_path / "x.npz")])
    assert code == 0, err
    assert out.splitlines()[1:] == model.predict(X).tolist()
    np.savez(tmp_path / "narrow.npz", X=X[:, :2])
    code, _, err = run(["predict", str(tmp_path / "p.npz"), str(tmp_path / "narrow.npz")])
    assert code == 1 and "narrow.npz: 2 feature columns, but the model in" in err
