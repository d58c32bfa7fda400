"""Saving and loading fitted models: NumPy arrays plus JSON metadata in one ``.npz`` file.

No pickle is written or read (``allow_pickle=False``), so loading a file cannot run code.
Files are written atomically: an interrupted save leaves the previous file untouched.

Examples
--------
>>> import gpumlp, numpy as np, tempfile, os
>>> X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
>>> clf = gpumlp.MLPClassifier((4,), max_iter=3, backend="numpy", random_state=0)
>>> clf = clf.fit(X, X[:, 0] > 0)  # doctest: +SKIP
>>> clf.save(os.path.join(tempfile.mkdtemp(), "model.npz"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any

import numpy as np

from .atomic import atomic_write
from .backends import BACKEND_NAMES, Backend
from .validation import check_choice

FORMAT = "gpumlp-model"
VERSION = 1
_META = "metadata_json"
#: JSON-safe constructor parameters kept in the file (callbacks and backend objects are not).
_SKIPPED_PARAMS = ("callbacks",)


def save(model: Any, path: str | os.PathLike) -> None:
    """Write a fitted ``MLPClassifier``, ``MLPRegressor`` or ``Perceptron`` to ``path``."""
    from .estimators import BaseMLP
    from .perceptron import Perceptron

    if isinstance(model, BaseMLP):
        model._check_fitted()
        arrays, state = _mlp_state(model)
    elif isinstance(model, Perceptron) and hasattr(model, "coef_"):
        arrays = {"coef": model.coef_, "intercept": model.intercept_}
        state = {"n_iter": model.n_iter_, "converged": model.converged_}
    else:
        raise TypeError(f"model must be a fitted gpumlp estimator; got {type(model).__name__}")
    params = {k: v for k, v in model.get_params().items() if k not in _SKIPPED_PARAMS}
    # JSON has no tuples or NumPy types: keep how each such parameter was given, so that
    # get_params() of the loaded model equals the saved one's.
    kinds = {}
    if not isinstance(params.get("backend", "numpy"), str):
        params["backend"] = "auto"
    if "hidden_layer_sizes" in params:
        hidden = params["hidden_layer_sizes"]
        kinds["hidden_layer_sizes"] = ("int" if np.isscalar(hidden) else
                                       "tuple" if isinstance(hidden, tuple) else "list")
        params["hidden_layer_sizes"] = [int(h) for h in np.atleast_1d(hidden)]
    if "dtype" in params:
        dtype = params["dtype"]
        kinds["dtype"] = ("str" if isinstance(dtype, str) else
                          "dtype" if isinstance(dtype, np.dtype) else "type")
        params["dtype"] = np.dtype(dtype).name
    if isinstance(params.get("random_state"), np.integer):
        params["random_state"] = int(params["random_state"])
    if not isinstance(params.get("random_state"), (int, type(None))):
        params["random_state"] = None
    metadata = {"format": FORMAT, "version": VERSION, "estimator": type(model).__name__,
                "params": params, "param_kinds": kinds, "state": state}
    arrays["classes"] = np.asarray(model.classes_) if hasattr(model, "classes_") else np.zeros(0)
    if arrays["classes"].dtype.kind == "O":
        raise TypeError("classes_ of dtype object cannot be saved without pickle; use "
                        "integer or string labels")
    arrays[_META] = np.frombuffer(json.dumps(metadata, default=_json_scalar).encode(),
                                  dtype=np.uint8)
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)


def load(path: str | os.PathLike, backend: str | None = None) -> Any:
    """Load a model saved by :func:`save`; ``backend`` overrides the saved one.

    Raises ``ValueError`` when the file is not a gpumlp model (or is damaged).
    """
    arrays, metadata = _read(path)
    from .estimators import MLPClassifier, MLPRegressor
    from .perceptron import Perceptron

    classes = {"MLPClassifier": MLPClassifier, "MLPRegressor": MLPRegressor,
               "Perceptron": Perceptron}
    name = metadata.get("estimator")
    if name not in classes:
        raise ValueError(f"{path}: unknown estimator {name!r} in a gpumlp model file")
    if backend is not None and not isinstance(backend, Backend):  # not the file's fault
        check_choice("backend", backend, BACKEND_NAMES)
    try:
        return _rebuild(classes[name], arrays, metadata, backend)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise ValueError(f"{path}: damaged gpumlp model file ({type(exc).__name__}: "
                         f"{exc})") from None


def _rebuild(cls: type, arrays: dict, metadata: dict, backend: str | None) -> Any:
    """The estimator described by a file's arrays and metadata."""
    params = dict(metadata["params"])
    kinds = metadata.get("param_kinds", {})
    if kinds.get("hidden_layer_sizes") == "int":
        params["hidden_layer_sizes"] = params["hidden_layer_sizes"][0]
    elif kinds.get("hidden_layer_sizes") == "tuple":
        params["hidden_layer_sizes"] = tuple(params["hidden_layer_sizes"])
    if kinds.get("dtype") == "dtype":
        params["dtype"] = np.dtype(params["dtype"])
    elif kinds.get("dtype") == "type":
        params["dtype"] = np.dtype(params["dtype"]).type
    if backend is not None:
        params["backend"] = backend
    model = cls(**params)
    name = cls.__name__
    state = metadata["state"]
    if arrays["classes"].size:
        model.classes_ = arrays["classes"]
    if name == "Perceptron":
        model.coef_, model.intercept_ = arrays["coef"], arrays["intercept"]
        model.n_iter_, model.converged_ = state["n_iter"], state["converged"]
        model.n_features_in_ = model.coef_.shape[1]
        model._n_units = model.coef_.shape[0]
        model._rng = np.random.default_rng(model.random_state)
        return model
    _restore_mlp(model, arrays, state)
    return model


def _json_scalar(value: Any) -> Any:
    """NumPy scalars (``np.int64(3)``, ``np.float32(0.1)``) as Python numbers for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} cannot be saved as JSON metadata")


def _mlp_state(model: Any) -> tuple[dict, dict]:
    net, history = model.network_, model._trainer_.history
    arrays = {"params": net.get_flat_params()}
    state = {"sizes": net.sizes, "loss_curve": history.loss,
             "validation_scores": history.validation_score, "best_loss": history.best_loss,
             "best_validation_score": history.best_validation_score,
             "n_iter": history.n_iter, "samples_seen": history.samples_seen,
             "flags": {k: getattr(model, k) for k in ("_multiclass", "_multilabel", "_y_1d")
                       if hasattr(model, k)}}
    return arrays, state


def _restore_mlp(model: Any, arrays: dict, state: dict) -> None:
    from .backends import get_backend

    for key, value in state["flags"].items():
        setattr(model, key, value)
    model._check_hyperparameters()
    model._build(get_backend(model.backend), np.dtype(model.dtype), state["sizes"])
    model.network_.set_flat_params(arrays["params"])
    model._trainer_ = model._make_trainer(previous=None)
    history = model._trainer_.history
    history.loss = list(state["loss_curve"])
    history.validation_score = list(state["validation_scores"])
    history.best_loss = state["best_loss"]
    history.best_validation_score = state["best_validation_score"]
    history.n_iter = state["n_iter"]
    history.samples_seen = state["samples_seen"]


def _read(path: str | os.PathLike) -> tuple[dict, dict]:
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a single .npy array
            raise ValueError(f"a single {type(archive).__name__}, not an .npz archive")
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{path} is not a readable gpumlp model file ({exc})") from None
    if _META not in arrays:
        raise ValueError(f"{path} is not a gpumlp model file (no metadata)")
    try:
        metadata = json.loads(arrays.pop(_META).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: damaged gpumlp metadata ({exc})") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: damaged gpumlp metadata (a JSON {type(metadata).__name__}, "
                         "not an object)")
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a gpumlp model file (format {metadata.get('format')!r})")
    if metadata.get("version") != VERSION:
        raise ValueError(f"{path} was written by format version {metadata.get('version')}; "
                         f"this gpumlp reads version {VERSION}")
    return arrays, metadata
