"""Export fitted models to ONNX, for inference with ONNX Runtime or any other ONNX consumer.

The graph is built with the ``onnx`` helper API (the optional extra ``gpumlp[onnx]``) and
computes exactly what the model computes at prediction time:

- ``MLPClassifier``: output ``probabilities`` is ``predict_proba`` (softmax; the two-column
  ``[1 - p, p]`` of a binary sigmoid model; per-label sigmoids for multilabel) and output
  ``label`` is ``predict`` (class labels, or the 0/1 indicator matrix for multilabel).
- ``MLPRegressor``: output ``predictions`` is ``predict`` (1-D when the model was fitted on 1-D
  targets).
- ``Perceptron``: output ``label`` is ``predict`` and ``unit_outputs`` the hard-limit outputs
  of its units (``decision_function >= 0``, as 0/1 values).
- ``Network``: output ``output`` is ``Network.predict_output`` (any hidden activation,
  hard-limit included).

The single input ``X`` has shape ``(N, n_features)`` and the model's dtype (float32 or
float64; float64 for the Perceptron): cast before feeding it.  Leaky ReLU is written as
``max(z, 0.01 z)``, the formula the backends use, because ONNX Runtime has no float64
``LeakyRelu``.

Examples
--------
>>> import numpy as np, gpumlp
>>> X = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
>>> clf = gpumlp.MLPClassifier((8,), max_iter=5).fit(X, X[:, 0] > 0)  # doctest: +SKIP
>>> clf.to_onnx("model.onnx")  # doctest: +SKIP
>>> import onnxruntime as ort  # doctest: +SKIP
>>> session = ort.InferenceSession("model.onnx")  # doctest: +SKIP
>>> proba, label = session.run(None, {"X": X})  # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import activations
from .atomic import atomic_write
from .network import Network
from .version import __version__

#: ONNX operator set and IR version of the exported files: old enough for every maintained
#: ONNX Runtime (1.10 and later), new enough for ``Softmax`` over one axis (opset 13).
OPSET = 13
IR_VERSION = 7
INPUT_NAME = "X"


@dataclass
class _GraphBuilder:
    """Collects nodes and constant tensors, handing out unique value names."""

    onnx: Any
    dtype: np.dtype
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)

    def constant(self, name: str, value: Any, dtype: Any = None) -> str:
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [output], name=output,
                                                     **attributes))
        return output

    def activation(self, name: str, z: str, prefix: str) -> str:
        """Apply the activation ``name`` (canonical, or ``"softmax"``) to the value ``z``."""
        if name == "identity":
            return z
        if name == "relu":
            return self.node("Relu", [z], f"{prefix}_relu")
        if name == "leaky_relu":
            slope = self.constant(f"{prefix}_leaky_slope", activations.LEAKY_SLOPE)
            scaled = self.node("Mul", [z, slope], f"{prefix}_leaky_scaled")
            return self.node("Max", [z, scaled], f"{prefix}_leaky_relu")
        if name == "sigmoid":
            return self.node("Sigmoid", [z], f"{prefix}_sigmoid")
        if name == "tanh":
            return self.node("Tanh", [z], f"{prefix}_tanh")
        if name == "hard_limit":
            zero = self.constant(f"{prefix}_zero", 0)
            fired = self.node("GreaterOrEqual", [z, zero], f"{prefix}_fired")
            return self.node("Cast", [fired], f"{prefix}_hard_limit",
                             to=self.onnx.helper.np_dtype_to_tensor_dtype(self.dtype))
        if name == "softmax":
            return self.node("Softmax", [z], f"{prefix}_softmax", axis=1)
        raise ValueError(f"activation {name!r} cannot be exported")  # pragma: no cover

    def dense(self, x: str, weight: np.ndarray, bias: np.ndarray, activation: str,
              layer: int) -> str:
        """``activation(x @ weight + bias)`` for the layer numbered ``layer`` (from 1)."""
        prefix = f"layer{layer}"
        w = self.constant(f"{prefix}_weight", weight)
        b = self.constant(f"{prefix}_bias", bias)
        product = self.node("MatMul", [x, w], f"{prefix}_matmul")
        z = self.node("Add", [product, b], f"{prefix}_z")
        return self.activation(activation, z, prefix)


def export_onnx(model: Any, path: str | os.PathLike) -> Any:
    """Write ``model`` as an ONNX file at ``path`` (atomically: complete or not there).

    Parameters
    ----------
    model : MLPClassifier, MLPRegressor, Perceptron or Network
        A fitted estimator, or a network.
    path : str or os.PathLike
        The file to write; missing parent folders are made.

    Raises
    ------
    ImportError
        The ``onnx`` package is not installed (``pip install 'gpumlp[onnx]'``).
    TypeError
        ``model`` is not a gpumlp model, or ``path`` is not a path.
    ValueError
        ``path`` is an existing folder, or a parent of it is a file.
    AttributeError
        The estimator is not fitted (the estimator's own not-fitted error).

    Returns
    -------
    onnx.ModelProto
        The model written.
    """
    target = _check_path(path)
    proto = to_onnx_model(model)
    with atomic_write(target) as handle:
        handle.write(proto.SerializeToString())
    return proto


def to_onnx_model(model: Any) -> Any:
    """The ONNX ``ModelProto`` of ``model`` (see :func:`export_onnx`), checked by onnx.checker."""
    onnx = _import_onnx()
    kind = _model_kind(model)
    if kind == "network":
        graph, estimator = _network_graph(onnx, model), "Network"
    elif kind == "mlp":
        graph, estimator = _mlp_graph(onnx, model), type(model).__name__
    elif kind == "perceptron":
        graph, estimator = _perceptron_graph(onnx, model), type(model).__name__
    else:
        raise TypeError("model must be a fitted gpumlp MLPClassifier, MLPRegressor, Perceptron "
                        f"or a gpumlp Network; got {type(model).__name__}")

    proto = onnx.helper.make_model(graph, producer_name="gpumlp", producer_version=__version__,
                                   opset_imports=[onnx.helper.make_opsetid("", OPSET)],
                                   ir_version=IR_VERSION)
    onnx.helper.set_model_props(proto, {"gpumlp_estimator": estimator})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def _model_kind(model: Any) -> str | None:
    """``"network"``, ``"mlp"``, ``"perceptron"`` or None (not a gpumlp model, e.g. sklearn's).

    The estimator classes are recognised by where they are defined rather than imported, so
    this module stays below them in the import order (they import it lazily in ``to_onnx``).
    """
    if isinstance(model, Network):
        return "network"
    for cls in type(model).__mro__:
        if (cls.__module__, cls.__name__) == ("gpumlp.estimators", "BaseMLP"):
            return "mlp"
        if (cls.__module__, cls.__name__) == ("gpumlp.perceptron", "Perceptron"):
            return "perceptron"
    return None


def _import_onnx() -> Any:
    try:
        import onnx
        import onnx.checker
        import onnx.helper
        import onnx.numpy_helper
    except ImportError as exc:
        raise ImportError(f"ONNX export needs the onnx package ({exc}); install it with "
                          "pip install 'gpumlp[onnx]'") from None
    return onnx


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TypeError(f"path must be a non-empty file path (str or os.PathLike); got "
                        f"{type(path).__name__} {path!r}")
    target = Path(path)
    if target.is_dir():
        raise ValueError(f"path={os.fspath(path)!r} is a folder; give a file name such as "
                         "model.onnx")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"path={os.fspath(path)!r} cannot be written: {parent} is a "
                                 "file, not a folder")
            break
    return target


def _require_fitted(model: Any, attribute: str) -> None:
    """Raise the estimator's own not-fitted error (or an AttributeError) when unfitted."""
    check = getattr(type(model), "_check_fitted", None)
    if callable(check):
        check(model)
    if not hasattr(model, attribute):
        raise AttributeError(f"this {type(model).__name__} is not fitted yet; call fit before "
                             "exporting it")


def _host(backend: Any, array: Any, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(backend.to_numpy(array), dtype=dtype)


def _network_layers(builder: _GraphBuilder, net: Network) -> str:
    """Add every layer of ``net`` and its output activation; return the output value name."""
    value = INPUT_NAME
    for layer in range(net.n_layers):
        value = builder.dense(value, _host(net.backend, net.weights[layer], net.dtype),
                              _host(net.backend, net.biases[layer], net.dtype),
                              net.layer_activation(layer), layer + 1)
    if net.loss.from_logits:
        value = builder.activation(net.output_activation, value, "output")
    return value


def _input(onnx: Any, dtype: np.dtype, n_features: int) -> Any:
    return onnx.helper.make_tensor_value_info(
        INPUT_NAME, onnx.helper.np_dtype_to_tensor_dtype(dtype), ["N", n_features])


def _output(onnx: Any, name: str, dtype: np.dtype, shape: list) -> Any:
    return onnx.helper.make_tensor_value_info(
        name, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


def _graph(onnx: Any, builder: _GraphBuilder, name: str, n_features: int,
           input_dtype: np.dtype, outputs: list, doc: str) -> Any:
    return onnx.helper.make_graph(builder.nodes, name, [_input(onnx, input_dtype, n_features)],
                                  outputs, initializer=builder.initializers, doc_string=doc)


def _network_graph(onnx: Any, net: Network) -> Any:
    builder = _GraphBuilder(onnx, net.dtype)
    out = builder.node("Identity", [_network_layers(builder, net)], "output")
    return _graph(onnx, builder, "gpumlp_network", net.sizes[0], net.dtype,
                  [_output(onnx, out, net.dtype, ["N", net.sizes[-1]])],
                  "output: Network.predict_output(X)")


def _mlp_graph(onnx: Any, model: Any) -> Any:
    _require_fitted(model, "network_")
    net = model.network_
    builder = _GraphBuilder(onnx, net.dtype)
    out = _network_layers(builder, net)
    if not hasattr(model, "predict_proba"):  # regressor
        if getattr(model, "_y_1d", net.sizes[-1] == 1):
            flat = builder.constant("flat_shape", [-1], np.int64)
            predictions = builder.node("Reshape", [out, flat], "predictions")
            shape = ["N"]
        else:
            predictions = builder.node("Identity", [out], "predictions")
            shape = ["N", net.sizes[-1]]
        return _graph(onnx, builder, "gpumlp_mlp_regressor", net.sizes[0], net.dtype,
                      [_output(onnx, predictions, net.dtype, shape)],
                      "predictions: MLPRegressor.predict(X)")
    classes = np.asarray(model.classes_)
    if len(classes) != net.sizes[-1]:  # binary: one sigmoid unit, two probability columns
        one = builder.constant("one", 1)
        negative = builder.node("Sub", [one, out], "negative_class_probability")
        proba = builder.node("Concat", [negative, out], "probabilities", axis=1)
    else:
        proba = builder.node("Identity", [out], "probabilities")
    outputs = [_output(onnx, proba, net.dtype, ["N", len(classes)])]
    if getattr(model, "_multilabel", False):
        half = builder.constant("half", 0.5)
        above = builder.node("Greater", [proba, half], "label_above_half")
        label = builder.node("Cast", [above], "label", to=onnx.TensorProto.INT64)
        outputs.append(_output(onnx, label, np.int64, ["N", len(classes)]))
    else:
        outputs.append(_label_output(onnx, builder, proba, classes))
    return _graph(onnx, builder, "gpumlp_mlp_classifier", net.sizes[0], net.dtype, outputs,
                  "probabilities: MLPClassifier.predict_proba(X); label: MLPClassifier.predict(X)")


def _label_output(onnx: Any, builder: _GraphBuilder, scores: str, classes: np.ndarray) -> Any:
    """Add ``label = classes[argmax(scores)]`` (the first maximum, as NumPy's argmax)."""
    classes = _exportable_classes(classes)
    table = builder.constant("classes", classes, classes.dtype)
    index = builder.node("ArgMax", [scores], "class_index", axis=1, keepdims=0)
    label = builder.node("Gather", [table, index], "label", axis=0)
    return _output(onnx, label, classes.dtype, ["N"])


def _exportable_classes(classes: np.ndarray) -> np.ndarray:
    if classes.dtype.kind == "O":
        as_text = np.asarray(classes.tolist())
        if as_text.dtype.kind != "U":
            raise TypeError(f"classes_ of dtype object holding "
                            f"{sorted({type(c).__name__ for c in classes.tolist()})} cannot be "
                            "exported; ONNX labels must be numbers, booleans or strings")
        return as_text
    return classes


def _perceptron_graph(onnx: Any, model: Any) -> Any:
    _require_fitted(model, "coef_")
    dtype = np.dtype(np.float64)  # the perceptron computes in float64 whatever X is
    builder = _GraphBuilder(onnx, dtype)
    coef = np.asarray(model.coef_, dtype=dtype)
    units = builder.dense(INPUT_NAME, coef.T, np.asarray(model.intercept_, dtype=dtype),
                          "hard_limit", 1)
    units = builder.node("Identity", [units], "unit_outputs")
    classes = np.asarray(model.classes_)
    if coef.shape[0] == 1:  # two classes: a net input > 0 picks the second, as predict
        classes = _exportable_classes(classes)
        table = builder.constant("classes", classes, classes.dtype)
        positive = builder.node("Greater", ["layer1_z", builder.constant("label_zero", 0)],
                                "positive")
        fired = builder.node("Cast", [positive], "class_index_column",
                             to=onnx.TensorProto.INT64)
        flat = builder.constant("flat_shape", [-1], np.int64)
        index = builder.node("Reshape", [fired, flat], "class_index")
        label = builder.node("Gather", [table, index], "label", axis=0)
        label_output = _output(onnx, label, classes.dtype, ["N"])
    else:  # one unit per class: the largest net input wins, as Perceptron.predict
        label_output = _label_output(onnx, builder, "layer1_z", classes)
    outputs = [label_output, _output(onnx, units, dtype, ["N", coef.shape[0]])]
    return _graph(onnx, builder, "gpumlp_perceptron", coef.shape[1], dtype, outputs,
                  "label: Perceptron.predict(X); unit_outputs: decision_function(X) >= 0")


def summarize(proto: Any) -> str:
    """One line naming the inputs and outputs of an ONNX model, e.g. for a command's report."""
    import onnx

    def values(items: Any) -> str:
        return ", ".join(
            f"{v.name} {onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)}"
            f"[{', '.join(d.dim_param or str(d.dim_value) for d in v.type.tensor_type.shape.dim)}]"
            for v in items)

    return (f"input {values(proto.graph.input)}; output {values(proto.graph.output)} "
            f"(opset {proto.opset_import[0].version})")


__all__ = ["export_onnx", "to_onnx_model", "summarize", "OPSET", "IR_VERSION", "INPUT_NAME"]
