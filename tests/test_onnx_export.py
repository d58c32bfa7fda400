"""ONNX export: the exported graph, run by ONNX Runtime on the CPU, gives what the model gives.

Every hidden activation, every output kind (softmax, binary logistic with the two-column
``predict_proba``, multilabel logistic, identity regression, hard-limit perceptron units) and
both dtypes are run through ``to_onnx`` and compared with ``predict_proba`` / ``predict``.
"""

from __future__ import annotations

import os
import sys
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from gpumlp import MLPClassifier, MLPRegressor, Network, Perceptron  # noqa: E402
from gpumlp.cli import main  # noqa: E402
from gpumlp.onnx_export import IR_VERSION, OPSET, export_onnx, to_onnx_model  # noqa: E402

HIDDEN = ("identity", "relu", "leaky_relu", "logistic", "tanh")
DTYPES = (np.float32, np.float64)
TOLERANCE = 1e-5


def fit_quietly(model, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a few epochs on purpose: convergence is not the point
        return model.fit(X, y)


def run_onnx(path, X):
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": X})


@pytest.fixture
def X():
    return np.random.default_rng(0).normal(size=(90, 5)).astype(np.float32)


def targets(kind, X):
    if kind == "binary":
        return (X[:, 0] + X[:, 1] > 0).astype(int)
    if kind == "multiclass":
        return np.digitize(X[:, 0], [-0.5, 0.5])
    if kind == "strings":
        return np.array(["cat", "dog", "emu"])[np.digitize(X[:, 1], [-0.4, 0.4])]
    if kind == "multilabel":
        return np.stack([X[:, 0] > 0, X[:, 1] > 0, X[:, 2] > 0.5], axis=1).astype(int)
    if kind == "1d":
        return 2 * X[:, 0] - X[:, 1] ** 2
    return np.stack([X[:, 0] * X[:, 1], X[:, 2] - X[:, 3]], axis=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("activation", HIDDEN)
@pytest.mark.parametrize("kind", ["binary", "multiclass", "strings", "multilabel"])
def test_classifier_matches_predict_proba(tmp_path, X, kind, activation, dtype):
    clf = fit_quietly(MLPClassifier((7, 4), activation=activation, dtype=dtype, max_iter=4,
                                    learning_rate_init=0.05, backend="numpy", random_state=1),
                      X, targets(kind, X))
    path = tmp_path / "clf.onnx"
    clf.to_onnx(path)
    proba, label = run_onnx(path, X.astype(dtype))
    expected = clf.predict_proba(X)
    assert proba.dtype == dtype and proba.shape == expected.shape
    assert expected.shape[1] == (2 if kind == "binary" else 3)
    np.testing.assert_allclose(proba, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_array_equal(label, clf.predict(X))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("activation", HIDDEN)
@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_regressor_matches_predict(tmp_path, X, kind, activation, dtype):
    reg = fit_quietly(MLPRegressor((6,), activation=activation, dtype=dtype, max_iter=4,
                                   learning_rate_init=0.05, backend="numpy", random_state=2),
                      X, targets(kind, X))
    path = tmp_path / "reg.onnx"
    reg.to_onnx(path)
    (predictions,) = run_onnx(path, X.astype(dtype))
    expected = reg.predict(X)
    assert predictions.dtype == dtype and predictions.shape == expected.shape
    assert expected.ndim == (1 if kind == "1d" else 2)
    np.testing.assert_allclose(predictions, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("labels", [[0, 1], [3, 5, 9], ["no", "yes"], ["a", "b", "c", "d"]])
def test_perceptron_label_and_hard_limit_units(tmp_path, labels):
    rng = np.random.default_rng(3)
    X = rng.integers(0, 2, size=(60, 4)).astype(np.float64)
    index = (X[:, 0] * X[:, 1]).astype(int) if len(labels) == 2 else (
        X[:, :2] @ [1, 2]).astype(int) % len(labels)
    y = np.asarray(labels)[index]
    model = Perceptron(random_state=0, max_iter=20).fit(X, y)
    path = tmp_path / "perceptron.onnx"
    model.to_onnx(path)
    label, units = run_onnx(path, X)
    np.testing.assert_array_equal(label, model.predict(X))
    scores = model.decision_function(X).reshape(len(X), -1)
    np.testing.assert_array_equal(units, (scores >= 0).astype(np.float64))
    assert len(np.unique(units)) == 2  # both sides of the threshold are exercised


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("loss, output_activation", [
    ("softmax_xent", None), ("sigmoid_bce", None), ("squared_error", None),
    ("squared_error", "tanh"), ("squared_error", "relu")])
def test_network_every_hidden_activation(tmp_path, X, dtype, loss, output_activation):
    hidden = ["hard_limit", "relu", "leaky_relu", "sigmoid", "tanh", "identity"]
    net = Network([5, 6, 6, 6, 6, 6, 6, 3], activation=hidden, loss=loss,
                  output_activation=output_activation, dtype=dtype, backend="numpy", seed=4)
    path = tmp_path / "net.onnx"
    export_onnx(net, path)
    (output,) = run_onnx(path, X.astype(dtype))
    np.testing.assert_allclose(output, net.predict_output(X), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("labels", [[False, True], [1.0, 2.0, 4.0], [-3, 7]])
def test_classifier_labels_of_other_dtypes(tmp_path, X, labels):
    index = (X[:, 0] > 0).astype(int) + (len(labels) == 3) * (X[:, 1] > 0.6)
    y = np.asarray(labels)[index]
    clf = fit_quietly(MLPClassifier((4,), max_iter=3, backend="numpy", random_state=0), X, y)
    path = tmp_path / "clf.onnx"
    clf.to_onnx(path)
    proba, label = run_onnx(path, X)
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=TOLERANCE)
    assert label.dtype == clf.classes_.dtype
    np.testing.assert_array_equal(label, clf.predict(X))


def test_graph_declares_dtype_shape_and_versions(X):
    clf = fit_quietly(MLPClassifier((4,), max_iter=2, dtype="float64", backend="numpy"),
                      X, targets("multiclass", X))
    proto = to_onnx_model(clf)
    (graph_input,) = proto.graph.input
    assert graph_input.name == "X"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE
    assert [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim] == \
        ["N", 5]
    assert [o.name for o in proto.graph.output] == ["probabilities", "label"]
    assert proto.ir_version == IR_VERSION and proto.opset_import[0].version == OPSET
    assert {p.key: p.value for p in proto.metadata_props} == {"gpumlp_estimator":
                                                               "MLPClassifier"}


def test_export_replaces_a_file_whole_and_leaves_no_temporary(tmp_path, X):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old contents" * 1000)
    reg = fit_quietly(MLPRegressor((3,), max_iter=2, backend="numpy"), X, targets("1d", X))
    reg.to_onnx(str(path))
    assert onnx.load(str(path)).graph.output[0].name == "predictions"
    assert os.listdir(tmp_path) == ["model.onnx"]


@pytest.mark.parametrize("model", [MLPClassifier(), MLPRegressor(), Perceptron()],
                         ids=lambda m: type(m).__name__)
def test_unfitted_model_is_refused_and_leaves_the_file(tmp_path, model):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")
    with pytest.raises((AttributeError, ValueError), match="not fitted"):
        model.to_onnx(path)
    assert path.read_bytes() == b"previous"


def test_bad_arguments_name_the_problem(tmp_path, X):
    clf = fit_quietly(MLPClassifier((3,), max_iter=2, backend="numpy"), X, targets("binary", X))
    with pytest.raises(ValueError, match="is a folder"):
        clf.to_onnx(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        clf.to_onnx(blocker / "model.onnx")
    with pytest.raises(TypeError, match="path must be"):
        clf.to_onnx(None)
    with pytest.raises(TypeError, match="model must be a fitted gpumlp"):
        export_onnx({"weights": [1, 2]}, tmp_path / "x.onnx")
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
    sklearn_mlp = pytest.importorskip("sklearn.neural_network")
    with pytest.raises(TypeError, match="got MLPClassifier"):  # scikit-learn's, not gpumlp's
        export_onnx(sklearn_mlp.MLPClassifier(), tmp_path / "x.onnx")


def test_missing_onnx_package_says_how_to_install(tmp_path, X, monkeypatch):
    clf = fit_quietly(MLPClassifier((3,), max_iter=2, backend="numpy"), X, targets("binary", X))
    monkeypatch.setitem(sys.modules, "onnx", None)  # makes `import onnx` fail
    with pytest.raises(ImportError, match=r"gpumlp\[onnx\]"):
        clf.to_onnx(tmp_path / "model.onnx")
    assert not os.listdir(tmp_path)


def test_cli_export(tmp_path, X, capsys):
    clf = fit_quietly(MLPClassifier((5,), max_iter=3, backend="numpy", random_state=0),
                      X, targets("multiclass", X))
    saved, out = tmp_path / "model.npz", tmp_path / "sub" / "model.onnx"
    clf.save(str(saved))
    assert main(["export", str(saved), str(out)]) == 0
    report = capsys.readouterr().out
    assert str(out) in report and "probabilities" in report
    proba, _ = run_onnx(out, X)
    np.testing.assert_allclose(proba, clf.predict_proba(X), rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("case", ["missing model", "not a model", "output is a folder"])
def test_cli_export_errors_are_one_line(tmp_path, X, capsys, case):
    model = tmp_path / "model.npz"
    output = tmp_path / "out.onnx"
    if case == "not a model":
        model.write_text("hello")
    elif case == "output is a folder":
        fit_quietly(MLPRegressor((3,), max_iter=2, backend="numpy"), X,
                    targets("1d", X)).save(str(model))
        output = tmp_path
    assert main(["export", str(model), str(output)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gpumlp export: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err
