"""``Network.summary()``, ``Network.__repr__`` and ``gpumlp info MODEL`` (gpumlp/summary.py)."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest

import gpumlp
from gpumlp import cli
from gpumlp.network import Network
from gpumlp.optim import SGD, Adam


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def test_summary_counts_parameters_flops_and_memory():
    net = Network([784, 256, 10], activation="tanh", seed=0, backend="numpy",
                  dtype=np.float64)
    summary = net.summary(Adam(net.backend, net.params))
    layers = summary.as_dict()["layers"]
    assert [(layer["n_in"], layer["n_out"], layer["activation"]) for layer in layers] == [
        (784, 256, "tanh"), (256, 10, "softmax")]
    assert [layer["params"] for layer in layers] == [784 * 256 + 256, 256 * 10 + 10]
    assert summary.n_params == net.n_params == 203_530
    # Forward: the product (multiply + add) and the bias, per sample.
    assert summary.flops_forward == (2 * 784 * 256 + 256) + (2 * 256 * 10 + 10)
    # Training adds the weight gradients of both layers and the backward product of layer 2.
    assert summary.flops_training == summary.flops_forward + (2 * 784 * 256) \
        + 2 * (2 * 256 * 10)
    assert summary.parameter_bytes == net.params.size * 8 >= net.n_params * 8
    assert summary.optimizer == ("Adam", 2)
    assert summary.optimizer_state_bytes == 2 * summary.parameter_bytes
    assert net.summary(SGD(net.backend, net.params)).optimizer == ("SGD", 1)
    assert net.summary("lbfgs").optimizer_state_bytes == 0
    text = str(summary)
    for expected in ("dense_1", "784 -> 256", "tanh", "200,960", "203,530",
                     "backend numpy, dtype float64, precision float32", "Adam"):
        assert expected in text
    assert repr(summary) == text  # a REPL shows the table


def test_summary_reports_precision_and_refuses_unknown_optimizers():
    net = Network([3, 4, 2], seed=0, backend="numpy", precision="tf32")
    assert "precision tf32" in str(net.summary())
    with pytest.raises(ValueError, match=r"optimizer='rmsprop' is not known"):
        net.summary("rmsprop")
    with pytest.raises(TypeError, match="optimizer must be"):
        net.summary(3)


def test_network_repr_is_readable():
    net = Network([5, 7, 3, 2], activation=["relu", "tanh"], loss="squared_error", seed=0,
                  backend="numpy")
    text = repr(net)
    assert "object at" not in text
    assert text == ("Network([5, 7, 3, 2], activation=['relu', 'tanh'], loss='squared_error', "
                    "dtype=float32, backend='numpy', precision='float32', params=74)")


def fitted(tmp_path, model):
    X = np.random.default_rng(0).normal(size=(60, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpumlp.ConvergenceWarning)
        model.fit(X, y)
    path = tmp_path / f"{type(model).__name__}.npz"
    model.save(path)
    return path


def test_info_prints_the_summary_of_a_saved_model(tmp_path):
    clf = gpumlp.MLPClassifier((16, 8), solver="sgd", max_iter=3, backend="numpy",
                               random_state=0)
    path = fitted(tmp_path, clf)
    code, out, err = run(["info", str(path)])
    assert (code, err) == (0, "")
    assert out.startswith(f"{path}: MLPClassifier, 4 features, 3 classes, trained 3 epoch(s)")
    assert str(clf.network_.summary("sgd")) in out  # the same table as in Python
    assert "optimizer state" in out and "sgd: 1 buffer" in out


def test_info_describes_a_saved_perceptron(tmp_path):
    path = fitted(tmp_path, gpumlp.Perceptron(random_state=0))
    code, out, err = run(["info", str(path)])
    assert (code, err) == (0, "")
    assert "Perceptron, 4 features, 3 classes" in out
    assert "one hard-limit layer 4 -> 3: 15 parameters" in out


@pytest.mark.parametrize("content, status, message", [
    (None, 2, "no such file"),
    ("folder", 2, "is a directory"),
    (b"not a zip", 1, "is not a readable gpumlp model file"),
    (b"PK\x03\x04" + b"\x00" * 40, 1, "is not a readable gpumlp model file"),
])
def test_info_on_a_bad_model_file_is_one_line(tmp_path, content, status, message):
    path = tmp_path / "model.npz"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    code, out, err = run(["info", str(path)])
    assert code == status and out == ""
    assert err.count("\n") == 1 and err.startswith("gpumlp info: error: ")
    assert message in err and "Traceback" not in err
