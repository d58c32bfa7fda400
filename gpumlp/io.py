"""Saving and loading fitted models: NumPy arrays plus JSON metadata in one ``.npz`` file.

No pickle is written or read, so loading a file cannot run code. Files are written
atomically: an interrupted save leaves the previous file untouched.

A model file may come from anyone, so :func:`load` treats it as hostile until proven
otherwise. It first reads only the zip directory and the ``.npy`` headers, then checks every
size, dtype, count and flag of the metadata against each other and against the arrays'
declared shapes (which must agree with the bytes the archive really holds) and against fixed
caps, and only then reads the arrays and builds the estimator. A 2 KB file declaring a
network of billions of parameters (or 200,000 layers) is therefore rejected before anything
of that size exists. Whatever is wrong with a file (a flipped bit in a zip header, a
truncation, a hostile metadata value, a FIFO in its place), :func:`load` raises one error,
:class:`gpumlp.FileFormatError` (a ``ValueError``) naming the file and what is wrong.

The round trip is exact: the file holds the estimator's parameters as they are when it is
saved (also when ``set_params`` changed them after ``fit``) and, apart from them, the network
as fitted (sizes, activations, precision, dtype of the weights). The loaded estimator has
the same parameters and the same network; where a parameter set after ``fit`` disagrees with
the network, both refuse to predict in the same words. Not saved: ``callbacks`` (code), and a
``Backend`` object (saved as ``"auto"``); a ``random_state`` other than an int or ``None``
is refused by :func:`save`. Loading reads the parameters straight into the network and
allocates no optimizer state, so it peaks near one copy of the parameters.

This module knows the estimators only through :mod:`gpumlp.model_registry` (by name), never
by import, so it sits below them in the import order.

Examples
--------
>>> import gpumlp, numpy as np, tempfile, os
>>> X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
>>> clf = gpumlp.MLPClassifier((4,), max_iter=3, backend="numpy", random_state=0)
>>> clf = clf.fit(X, X[:, 0] > 0)  # doctest: +SKIP
>>> clf.save(os.path.join(tempfile.mkdtemp(), "model.npz"))  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import math
import numbers
import os
import reprlib
import struct
import zipfile
from typing import Any

import numpy as np

from . import activations
from .atomic import atomic_write
from .backends import BACKEND_NAMES, Backend, BackendUnavailable, get_backend
from .exceptions import FileFormatError
from .files import open_regular_file
from .model_registry import model_class, registered_models
from .precision import PRECISIONS
from .training import History
from .validation import check_choice

FORMAT = "gpumlp-model"
VERSION = 1
_META = "metadata_json"
#: JSON-safe constructor parameters kept in the file (callbacks and backend objects are not).
_SKIPPED_PARAMS = ("callbacks",)

#: Most parameter values (weights and biases of all layers) a file may declare: 2**31 is
#: 8 GiB of float32, far above any model this library trains, far below a denial of service.
MAX_PARAMETERS = 2**31
#: Most layers (hidden and output) a file may declare: far above any trained network, far
#: below the 200,000 one-unit layers that would cost seconds and hundreds of MB of objects.
MAX_LAYERS = 1000
#: Most bytes of JSON metadata (loss curves of 100k epochs fit in a few MB; parsed JSON
#: takes several times its bytes as Python objects).
MAX_METADATA_BYTES = 16 * 2**20
#: Most bytes of the zip directory (a model file's four entries take a few hundred).
MAX_DIRECTORY_BYTES = 64 * 2**10
#: Bytes at the end of a zip file searched for its end-of-directory record (the record, a
#: comment of at most 64 KiB, and the Zip64 locator before it).
_EOCD_SEARCH = 22 + 65535 + 20
#: Most bytes of the class-label array.
MAX_LABEL_BYTES = 64 * 2**20
#: Parameters read from the file at a time (through a buffer of this many values).
_READ_CHUNK = 2**20
#: Deflate cannot expand data by more than about 1032:1; a zip member claiming more lies.
_MAX_DEFLATE_RATIO = 1032
#: The arrays a model file may hold, by layout.
_ARRAYS = {"mlp": {"params", "classes"}, "linear": {"coef", "intercept", "classes"}}
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_LABEL_KINDS = "biufUS"  # bool, integers, floats, str, bytes; never objects
#: How a parameter that JSON cannot hold as given was spelled (see ``save``).
_KINDS = {"hidden_layer_sizes": ("int", "tuple", "list"), "dtype": ("str", "dtype", "type")}
_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict = 80, 80, 8, 8


# =============================================================================== saving
def save(model: Any, path: str | os.PathLike) -> None:
    """Write a fitted ``MLPClassifier``, ``MLPRegressor`` or ``Perceptron`` to ``path``.

    Parameters
    ----------
    model : estimator
        A fitted estimator of a class registered with
        :func:`gpumlp.model_registry.register_model`.
    path : str or os.PathLike
        Destination ``.npz`` file. Written atomically; an existing file keeps its permission
        mode (a new one gets the umask's), and a symbolic link is written through to its
        target and stays a link.

    Raises
    ------
    TypeError
        If ``model`` is not a fitted gpumlp estimator, its labels cannot be stored
        without pickle (objects other than all-``str`` or all-``int``), or its
        ``random_state`` is a generator (not an int or ``None``).
    ValueError
        If its parameters are not ones ``fit`` would accept (a file ``load`` would refuse
        is never written), or ``path`` is a FIFO, device node or folder.
    """
    cls = type(model)
    if registered_models().get(cls.__name__) is not cls:
        raise TypeError(f"model must be a fitted gpumlp estimator; got {cls.__name__}")
    if _layout(cls) == "mlp":
        model._check_fitted()
        arrays, state = _mlp_state(model)
    elif hasattr(model, "coef_"):
        arrays = {"coef": model.coef_, "intercept": model.intercept_}
        state = {"n_iter": model.n_iter_, "converged": model.converged_, "t": model.t_}
    else:
        raise TypeError(f"model must be a fitted gpumlp estimator; this {cls.__name__} is "
                        "not fitted yet")
    check = getattr(model, "_check_hyperparameters", None)
    if callable(check):  # a file load would refuse is never written
        try:
            check()
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"cannot save: {exc}") from None
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
    if isinstance(params.get("class_weight"), dict):  # JSON keys are strings: keep pairs
        params["class_weight"] = [[k, v] for k, v in params["class_weight"].items()]
    seed = params.get("random_state")
    if isinstance(seed, np.integer):
        params["random_state"] = int(seed)
    elif not isinstance(seed, (int, type(None))) or isinstance(seed, bool):
        raise TypeError(f"random_state={seed!r} cannot be saved in a model file (no pickle): "
                        "set_params(random_state=<an int or None>) before saving")
    if hasattr(model, "feature_names_in_"):  # the columns it was trained on, by name
        state["feature_names"] = [str(name) for name in model.feature_names_in_]
    classes = np.asarray(model.classes_) if hasattr(model, "classes_") else np.zeros(0)
    if classes.dtype.kind == "O":
        classes = _object_labels(classes)
        state["classes_object"] = True  # load turns them back into an object array
    arrays["classes"] = classes
    metadata = {"format": FORMAT, "version": VERSION, "estimator": cls.__name__,
                "params": params, "param_kinds": kinds, "state": state}
    arrays[_META] = np.frombuffer(json.dumps(metadata, default=_json_scalar).encode(),
                                  dtype=np.uint8)
    with atomic_write(path) as handle:
        np.savez(handle, **arrays)


def _object_labels(classes: np.ndarray) -> np.ndarray:
    """Object-dtype labels (a pandas column of str, say) as a fixed-width array that
    ``.npy`` stores without pickle: unicode for all-``str``, int64 for all-``int``."""
    values = classes.tolist()
    if all(isinstance(v, str) for v in values):
        return np.array(values, dtype=str)
    if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.int64)
    types = sorted({type(v).__name__ for v in values})
    raise TypeError(f"classes_ of dtype object holding {', '.join(types)} cannot be saved "
                    "without pickle; allowed: labels that are all str or all int")


def _json_scalar(value: Any) -> Any:
    """NumPy scalars (``np.int64(3)``, ``np.float32(0.1)``) as Python numbers for JSON."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} {value!r} cannot be saved as JSON metadata")


def _mlp_state(model: Any) -> tuple[dict, dict]:
    net, history = model.network_, model._trainer_.history
    arrays = {"params": net.get_flat_params()}
    # The network as fitted, which parameters set since (set_params after fit) do not change:
    # the loaded network is this one, and both refuse to predict with parameters it ignores.
    state = {"sizes": net.sizes, "activations": list(net.hidden_activations),
             "precision": net.precision, "loss_curve": history.loss,
             "validation_scores": history.validation_score, "best_loss": history.best_loss,
             "best_validation_score": history.best_validation_score,
             "n_iter": history.n_iter, "samples_seen": history.samples_seen,
             "metrics": getattr(history, "metrics", {}),
             # n_iter_ counts the last call's epochs: the epochs before that call
             "epochs_before_call": getattr(model, "_epochs_before_call", 0),
             "flags": {k: getattr(model, k) for k in ("_multiclass", "_multilabel", "_y_1d")
                       if hasattr(model, k)}}
    return arrays, state


def _layout(cls: type) -> str:
    """``"mlp"`` for network estimators (one flat parameter buffer, a ``_build`` method),
    ``"linear"`` for the single-layer perceptron (``coef_`` and ``intercept_``)."""
    return "mlp" if callable(getattr(cls, "_build", None)) else "linear"


# ============================================================================== loading
def load(path: str | os.PathLike, backend: str | None = None) -> Any:
    """Load a model saved by :func:`save`.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npz`` model file.
    backend : str or Backend, optional
        Overrides the backend saved in the file (``"auto"``, ``"numpy"``, ``"cupy"``).

    Returns
    -------
    estimator
        The fitted estimator, of the class the file names.

    Raises
    ------
    gpumlp.FileFormatError
        A ``ValueError``: the path is not a regular file (a FIFO, a device, a folder), or the
        file is not a gpumlp model, is damaged or truncated, or declares anything
        inconsistent or beyond the caps (:data:`MAX_PARAMETERS`, :data:`MAX_LAYERS`,
        :data:`MAX_METADATA_BYTES`, :data:`MAX_LABEL_BYTES`). The message names the file,
        the field, its value and what is allowed. Nothing the file declares is allocated
        before it has been checked.
    FileNotFoundError
        If ``path`` does not exist.
    """
    if backend is not None and not isinstance(backend, Backend):  # not the file's fault
        check_choice("backend", backend, BACKEND_NAMES)
    with open_regular_file(path, "model file") as handle:
        _check_zip_directory(handle, path)
        try:
            archive = zipfile.ZipFile(handle)
        except Exception as exc:  # noqa: BLE001 - zipfile raises many types on bad bytes
            raise FileFormatError(f"{path} is not a readable gpumlp model file (not a zip "
                                  f"archive of .npy arrays: {_describe(exc)})") from None
        with archive:
            try:
                return _ModelFile(path, archive).load(backend)
            except (FileFormatError, BackendUnavailable, MemoryError):
                raise  # ours, or the machine's (no GPU for a "cupy" model): not the file's
            except Exception as exc:  # noqa: BLE001 - a damaged member can make zipfile,
                # zlib, NumPy's header parser or JSON raise almost any type (a flipped flag
                # bit gives NotImplementedError or RuntimeError): one documented error
                raise FileFormatError(f"{path}: damaged gpumlp model file "
                                      f"({_describe(exc)})") from None


def _check_zip_directory(handle: Any, path: str | os.PathLike) -> None:
    """Refuse a zip directory larger than a model file's before ``zipfile`` parses it: it
    builds an object per entry, so 28 MB of empty entries cost it minutes and 158 MiB.

    Reads the end-of-directory record (and its Zip64 form) as ``zipfile`` finds it: the last
    signature within the final 64 KiB plus the record."""
    size = os.fstat(handle.fileno()).st_size
    handle.seek(max(0, size - _EOCD_SEARCH))
    tail = handle.read(_EOCD_SEARCH)
    handle.seek(0)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        raise FileFormatError(f"{path} is not a readable gpumlp model file (not a zip archive "
                              "of .npy arrays: no end of zip directory)")
    directory_bytes = struct.unpack("<I", tail[at + 12:at + 16])[0]
    if at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":  # Zip64: the sizes are there
        handle.seek(struct.unpack("<Q", tail[at - 12:at - 4])[0])
        record = handle.read(56)
        handle.seek(0)
        if len(record) == 56 and record[:4] == b"PK\x06\x06":
            directory_bytes = struct.unpack("<Q", record[40:48])[0]
    if directory_bytes > MAX_DIRECTORY_BYTES:
        raise FileFormatError(f"{path}: zip directory of {directory_bytes} bytes; a gpumlp "
                              f"model file's has at most MAX_DIRECTORY_BYTES="
                              f"{MAX_DIRECTORY_BYTES} (its four arrays)")


class _BadFile(FileFormatError):
    """A check failed; :meth:`_ModelFile.load` adds the path to the message."""


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line, at most 200 characters, never NumPy's pickle advice."""
    text = " ".join(str(exc).split(";")[0].split())[:200]
    return f"{type(exc).__name__}: {text}"


def _bad(field: str, value: Any, allowed: str) -> _BadFile:
    return _BadFile(f"{field}={_short.repr(value)} is not valid; {allowed}")


class _ModelFile:
    """One model file: the checks, in order, and the rebuild."""

    def __init__(self, path: str | os.PathLike, archive: zipfile.ZipFile):
        self.path = path
        self.archive = archive
        self.headers: dict[str, tuple[zipfile.ZipInfo, tuple, np.dtype, bool]] = {}

    def load(self, backend: Any) -> Any:
        """Check everything, then build. Errors of the checks become one
        ``FileFormatError`` naming the file (as does anything else a damaged file raises,
        in :func:`load`)."""
        try:
            model, arrays, state = self._checked(backend)
            if _layout(type(model)) == "mlp":
                self._restore_mlp(model, arrays, state)
            else:
                _restore_linear(model, arrays, state)
            if "feature_names" in state:
                model.feature_names_in_ = np.array(state["feature_names"], dtype=object)
        except _BadFile as exc:
            raise FileFormatError(f"{self.path}: {exc}") from None
        return model

    def _checked(self, backend: Any) -> tuple[Any, dict, dict]:
        """The unfitted estimator with the file's parameters, the arrays and the state, all
        checked; the arrays are read only once their headers have passed."""
        self._read_headers()
        metadata = self._read_metadata()
        try:
            cls = model_class(metadata.get("estimator"))
        except ValueError as exc:
            raise _BadFile(str(exc)) from None
        layout = _layout(cls)
        self._check_array_names(layout)
        state = _mapping(metadata, "state")
        if layout == "mlp":
            self._check_mlp(cls, metadata, state)
        else:
            self._check_linear(state)
        self._check_feature_names(state, state["sizes"][0] if layout == "mlp"
                                  else self._header("coef")[0][1])
        if state.get("classes_object", True) is not True:
            raise _bad("state.classes_object", state["classes_object"], "allowed: true")
        model = self._construct(cls, metadata, backend)
        # A network's parameters are read later, straight into the network (one copy).
        arrays = {key: self._read_array(key) for key in _ARRAYS[layout] if key != "params"}
        self._check_values(arrays, state)
        if state.get("classes_object"):
            arrays["classes"] = arrays["classes"].astype(object)
        return model, arrays, state

    # ------------------------------------------------------------------- the archive
    def _read_headers(self) -> None:
        """The name, shape and dtype of every array, from the zip directory and the ``.npy``
        headers only; each must agree with the bytes the archive really holds."""
        size = os.fstat(self.archive.fp.fileno()).st_size if _has_fileno(self.archive) else None
        members = self.archive.infolist()
        if len(members) > len(_ARRAYS["linear"]) + 1:
            raise _BadFile(f"is not a gpumlp model file: {len(members)} members; a model "
                           f"file has at most {len(_ARRAYS['linear']) + 1}")
        for info in members:
            if not info.filename.endswith(".npy"):
                raise _BadFile(f"is not a gpumlp model file: member {info.filename!r} is not "
                               "a .npy array")
            key = info.filename[:-4]
            if key in self.headers:
                raise _BadFile(f"is not a gpumlp model file: array {key!r} appears twice")
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise _BadFile(f"array {key!r} uses zip compression method "
                               f"{info.compress_type}; allowed: stored or deflated")
            stored = info.compress_type == zipfile.ZIP_STORED
            if (stored and info.compress_size != info.file_size) or (
                    info.file_size > info.compress_size * _MAX_DEFLATE_RATIO + 1024) or (
                    size is not None and info.header_offset + info.compress_size > size):
                raise _BadFile(f"array {key!r} declares {info.file_size} bytes, more than the "
                               f"{info.compress_size} stored bytes can hold")
            with self.archive.open(info) as member:
                try:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
                    elif version == (2, 0):
                        shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
                    else:
                        raise ValueError(f".npy format version {version}; allowed: 1.0, 2.0")
                except Exception as exc:  # noqa: BLE001 - NumPy parses the header with
                    # ast and tokenize, which raise many types. Its message may also advise
                    # allow_pickle=True: never pass that on.
                    raise _BadFile(f"array {key!r} has an unreadable .npy header "
                                   f"({str(exc).split(';')[0][:200]})") from None
                header_bytes = member.tell()
            if dtype.hasobject:
                raise _bad(f"dtype of array {key!r}", str(dtype), "object arrays need pickle, "
                           "which gpumlp model files never contain")
            count = math.prod(shape)  # Python ints: no overflow
            if header_bytes + count * dtype.itemsize != info.file_size:
                raise _BadFile(f"array {key!r} declares shape {shape} of {dtype}, which "
                               f"disagrees with its {info.file_size} bytes in the archive")
            self.headers[key] = (info, shape, dtype, fortran)

    def _read_metadata(self) -> dict:
        if _META not in self.headers:
            raise _BadFile("is not a gpumlp model file (no metadata)")
        _, shape, dtype, _ = self.headers[_META]
        if dtype != np.uint8 or len(shape) != 1 or shape[0] > MAX_METADATA_BYTES:
            raise _bad("metadata", f"{dtype} array of shape {shape}",
                       f"allowed: uint8 bytes, at most {MAX_METADATA_BYTES}")
        raw = self._read_array(_META).tobytes()
        try:
            metadata = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise _BadFile(f"damaged gpumlp metadata ({exc})") from None
        if not isinstance(metadata, dict):
            raise _BadFile(f"damaged gpumlp metadata (a JSON {type(metadata).__name__}, "
                           "not an object)")
        if metadata.get("format") != FORMAT:
            raise _BadFile(f"is not a gpumlp model file (format {metadata.get('format')!r}; "
                           f"allowed: {FORMAT!r})")
        if not _is_int(metadata.get("version")) or metadata["version"] != VERSION:
            raise _BadFile(f"was written by format version {metadata.get('version')!r}; "
                           f"this gpumlp reads version {VERSION}")
        return metadata

    def _check_array_names(self, layout: str) -> None:
        names = set(self.headers) - {_META}
        if names != _ARRAYS[layout]:
            raise _bad("arrays", sorted(names), f"allowed: exactly {sorted(_ARRAYS[layout])}")

    def _read_array(self, key: str) -> np.ndarray:
        """The array ``key``, whose header has been checked: one allocation of the declared
        size, filled from the member, then the member's CRC is verified."""
        info, shape, dtype, fortran = self.headers[key]
        array = np.empty(math.prod(shape), dtype=dtype)
        with self.archive.open(info) as member:
            member.seek(info.file_size - array.nbytes)
            _read_into(member, array.view(np.uint8), key)
            member.read(1)  # reaching the end makes zipfile check the CRC
        array = array.reshape(shape, order="F" if fortran else "C")
        return array.astype(dtype.newbyteorder("="), copy=False)

    # ------------------------------------------------------------------- the checks
    def _header(self, key: str) -> tuple[tuple, np.dtype]:
        _, shape, dtype, _ = self.headers[key]
        return shape, dtype

    def _check_labels(self, n_expected: int | None) -> int:
        """The class-label array's header; returns the number of labels."""
        shape, dtype = self._header("classes")
        if len(shape) != 1 or dtype.kind not in _LABEL_KINDS:
            raise _bad("classes", f"{dtype} array of shape {shape}", "allowed: a 1-D array of "
                       "bool, integer, float, str or bytes labels")
        if shape[0] * dtype.itemsize > MAX_LABEL_BYTES:
            raise _bad("classes", f"{dtype} array of shape {shape}",
                       f"allowed: at most {MAX_LABEL_BYTES} bytes of labels")
        if n_expected is not None and shape[0] != n_expected:
            raise _bad("classes", f"{shape[0]} labels", f"the outputs need {n_expected}")
        return shape[0]

    def _check_mlp(self, cls: type, metadata: dict, state: dict) -> None:
        sizes = state.get("sizes")
        if not (isinstance(sizes, list) and 2 <= len(sizes) <= MAX_LAYERS + 1
                and all(_is_int(s) and 1 <= s <= MAX_PARAMETERS for s in sizes)):
            raise _bad("state.sizes", sizes, f"allowed: a list of 2 to {MAX_LAYERS + 1} "
                       "positive integers [inputs, hidden..., outputs] (at most "
                       f"MAX_LAYERS={MAX_LAYERS} layers)")
        n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        if n_params > MAX_PARAMETERS:
            raise _bad("state.sizes", sizes, f"it declares {n_params} parameters; allowed: "
                       f"at most MAX_PARAMETERS={MAX_PARAMETERS}")
        shape, dtype = self._header("params")
        if shape != (n_params,):
            raise _bad("state.sizes", sizes, f"it declares {n_params} parameters but the "
                       f"params array has shape {shape}; they must agree")
        if dtype.newbyteorder("=") not in _FLOAT_DTYPES:
            raise _bad("dtype of array 'params'", str(dtype), "allowed: float32 or float64")
        # The network is the one state.sizes, state.activations, state.precision and the
        # params array's dtype describe; the parameters may have been set since (they are
        # checked as parameters in _construct), as they were when the model was saved.
        n_hidden = len(sizes) - 2
        names = state.get("activations")
        if names is not None and not (isinstance(names, list) and len(names) == n_hidden
                                      and all(_trainable(name) for name in names)):
            raise _bad("state.activations", names, f"allowed: {n_hidden} names of trainable "
                       f"activations, one per hidden layer, e.g. {['relu'] * n_hidden}")
        precision = state.get("precision", "float32")
        if precision not in PRECISIONS or (precision == "tf32" and dtype.itemsize != 4):
            raise _bad("state.precision", precision, f"allowed: one of {PRECISIONS} "
                       "('tf32' with float32 parameters only)")
        for key in ("n_iter", "samples_seen"):
            if not _is_int(state.get(key)) or state[key] < 0:
                raise _bad(f"state.{key}", state.get(key), "allowed: an integer >= 0")
        before = state.get("epochs_before_call", 0)  # absent from older files
        if not _is_int(before) or not 0 <= before <= state["n_iter"]:
            raise _bad("state.epochs_before_call", before,
                       f"allowed: an integer from 0 to state.n_iter={state['n_iter']}")
        for key in ("loss_curve", "validation_scores"):
            values = state.get(key)
            if not isinstance(values, list) or not all(map(_is_real, values)):
                raise _bad(f"state.{key}", values, "allowed: a list of numbers")
        for key in ("best_loss", "best_validation_score"):
            if not _is_real(state.get(key)):
                raise _bad(f"state.{key}", state.get(key), "allowed: a number")
        metrics = state.get("metrics", {})  # absent from files written before it existed
        if not (isinstance(metrics, dict) and all(
                isinstance(values, list) and all(map(_is_real, values))
                for values in metrics.values())):
            raise _bad("state.metrics", metrics, "allowed: an object of lists of numbers, "
                       "one list per per-epoch measure")
        flags = _mapping(state, "flags", "state.flags")
        outputs = sizes[-1]
        if cls._estimator_type == "classifier":
            self._check_classifier_flags(flags, outputs)
        else:
            if set(flags) != {"_y_1d"} or not isinstance(flags["_y_1d"], bool):
                raise _bad("state.flags", flags, "allowed: {'_y_1d': true or false}")
            if flags["_y_1d"] and outputs != 1:
                raise _bad("state.flags._y_1d", True, f"a 1-D target needs one output, the "
                           f"network has {outputs}")
            shape, _ = self._header("classes")
            if math.prod(shape) != 0:
                raise _bad("classes", f"shape {shape}", "a regressor has no classes (empty)")

    def _check_classifier_flags(self, flags: dict, outputs: int) -> None:
        if set(flags) != {"_multiclass", "_multilabel"} or not all(
                isinstance(v, bool) for v in flags.values()):
            raise _bad("state.flags", flags, "allowed: {'_multiclass': true or false, "
                       "'_multilabel': true or false}")
        if flags["_multilabel"]:
            if flags["_multiclass"]:
                raise _bad("state.flags._multiclass", True, "a multilabel model is not "
                           "multiclass (must be false)")
            self._check_labels(outputs)
            return
        n_classes = self._check_labels(None)
        if n_classes < 2:
            raise _bad("classes", f"{n_classes} labels", "a classifier needs at least two")
        if flags["_multiclass"] != (n_classes > 2):
            raise _bad("state.flags._multiclass", flags["_multiclass"], f"with {n_classes} "
                       f"classes it must be {str(n_classes > 2).lower()}")
        needed = n_classes if n_classes > 2 else 1
        if outputs != needed:
            raise _bad("classes", f"{n_classes} labels", f"the network has {outputs} outputs; "
                       f"{n_classes} classes need {needed}")

    @staticmethod
    def _check_feature_names(state: dict, n_features: int) -> None:
        names = state.get("feature_names")
        if names is None and "feature_names" not in state:
            return
        if not (isinstance(names, list) and len(names) == n_features
                and all(isinstance(name, str) for name in names)):
            # Not necessarily distinct: a data frame may repeat a column name, and a model
            # fitted on one must load (scikit-learn keeps such names too).
            raise _bad("state.feature_names", names, f"allowed: {n_features} strings, one "
                       "per input feature")

    def _check_linear(self, state: dict) -> None:
        coef, coef_dtype = self._header("coef")
        intercept, intercept_dtype = self._header("intercept")
        if len(coef) != 2 or min(coef) < 1 or math.prod(coef) > MAX_PARAMETERS:
            raise _bad("coef", f"shape {coef}", "allowed: (units, features), both >= 1, at "
                       f"most MAX_PARAMETERS={MAX_PARAMETERS} values")
        if intercept != coef[:1]:
            raise _bad("intercept", f"shape {intercept}", f"it must be ({coef[0]},) to match "
                       f"coef of shape {coef}")
        for name, dtype in (("coef", coef_dtype), ("intercept", intercept_dtype)):
            if dtype.newbyteorder("=") not in _FLOAT_DTYPES:
                raise _bad(f"dtype of array {name!r}", str(dtype), "allowed: float32 or float64")
        n_classes = self._check_labels(None)
        if n_classes < 2:
            raise _bad("classes", f"{n_classes} labels", "a perceptron needs at least two")
        units = 1 if n_classes == 2 else n_classes
        if coef[0] != units:
            raise _bad("coef", f"shape {coef}", f"{n_classes} classes need {units} units")
        if not _is_int(state.get("n_iter")) or state["n_iter"] < 0:
            raise _bad("state.n_iter", state.get("n_iter"), "allowed: an integer >= 0")
        if not isinstance(state.get("converged"), bool):
            raise _bad("state.converged", state.get("converged"), "allowed: true or false")
        if "t" in state and not (_is_real(state["t"]) and math.isfinite(state["t"])
                                 and state["t"] >= 1):
            raise _bad("state.t", state["t"], "allowed: a number >= 1")

    def _construct(self, cls: type, metadata: dict, backend: Any) -> Any:
        """The estimator with the file's parameters, each checked against the constructor's
        signature and the estimator's own hyper-parameter checks; nothing large is built."""
        params = dict(_mapping(metadata, "params"))
        signature = inspect.signature(cls.__init__).parameters
        for key, value in params.items():
            if key not in signature or key == "self" or key in _SKIPPED_PARAMS:
                raise _bad("params", key, f"{cls.__name__} has no such saved parameter")
            default = signature[key].default
            if key == "hidden_layer_sizes":
                if not (isinstance(value, list) and len(value) <= MAX_LAYERS
                        and all(map(_is_int, value))):
                    raise _bad("params.hidden_layer_sizes", value, "allowed: a list of at "
                               f"most MAX_LAYERS={MAX_LAYERS} positive integers")
            elif key == "random_state":
                if value is not None and not (_is_int(value) and value >= 0):
                    raise _bad("params.random_state", value, "allowed: an integer >= 0 or "
                               "null")
            elif key == "class_weight" and isinstance(value, list):
                if not all(isinstance(pair, list) and len(pair) == 2
                           and isinstance(pair[0], (int, float, str))
                           and not isinstance(pair[0], bool) and _is_real(pair[1])
                           for pair in value):
                    raise _bad("params.class_weight", value,
                               "allowed: null, 'balanced' or a list of [label, weight] pairs")
            elif isinstance(value, (list, dict)):
                raise _bad(f"params.{key}", value, "allowed: a number, a string, true, false "
                           "or null")
            elif isinstance(default, bool) and not isinstance(value, bool):
                raise _bad(f"params.{key}", value, "allowed: true or false")
            elif (isinstance(default, numbers.Real) and not isinstance(default, bool)
                  and not _is_real(value)):
                raise _bad(f"params.{key}", value, "allowed: a number")
        kinds = metadata.get("param_kinds", {})
        if not isinstance(kinds, dict):
            raise _bad("param_kinds", kinds, "allowed: a JSON object")
        for key, value in kinds.items():
            if key not in _KINDS or value not in _KINDS[key] or key not in params:
                raise _bad(f"param_kinds.{key}", value, "allowed: "
                           + "; ".join(f"{k}: one of {v}" for k, v in _KINDS.items())
                           + ", for a parameter the file has")
        hidden = params.get("hidden_layer_sizes")
        if kinds.get("hidden_layer_sizes") == "int" and len(hidden) == 1:
            params["hidden_layer_sizes"] = hidden[0]
        elif kinds.get("hidden_layer_sizes") == "tuple":
            params["hidden_layer_sizes"] = tuple(hidden)
        if isinstance(params.get("class_weight"), list):
            params["class_weight"] = {label: weight for label, weight in params["class_weight"]}
        if kinds.get("dtype") == "dtype":
            params["dtype"] = np.dtype(params["dtype"])
        elif kinds.get("dtype") == "type":
            params["dtype"] = np.dtype(params["dtype"]).type
        if backend is not None and "backend" in signature:  # a Perceptron runs on the host
            params["backend"] = backend
        model = cls(**params)
        check = getattr(model, "_check_hyperparameters", None)
        if callable(check):
            try:
                check()
            except (TypeError, ValueError) as exc:
                raise _BadFile(f"params: {exc}") from None
        return model

    def _restore_mlp(self, model: Any, arrays: dict, state: dict) -> None:
        """Build the fitted network the state describes and read the parameters into it:
        no initial weights are drawn and no optimizer state is allocated (the next
        ``partial_fit`` makes it), so loading peaks near one copy of the parameters."""
        for key, value in state["flags"].items():
            setattr(model, key, value)
        if arrays["classes"].size:
            model.classes_ = arrays["classes"]
        sizes = state["sizes"]
        names = state.get("activations")
        if names is None:  # files written before the state recorded them
            names = [activations.canonical(model.activation)] * (len(sizes) - 2)
        _, dtype = self._header("params")
        model._build(get_backend(model.backend), dtype.newbyteorder("="), sizes,
                     hidden_activations=names, precision=state.get("precision", "float32"),
                     initialize=False)
        self._read_params_into(model.network_)
        history = History(
            loss=[float(v) for v in state["loss_curve"]],
            validation_score=[float(v) for v in state["validation_scores"]],
            best_loss=float(state["best_loss"]),
            best_validation_score=float(state["best_validation_score"]),
            n_iter=state["n_iter"], samples_seen=state["samples_seen"],
            metrics={name: [float(v) for v in values]
                     for name, values in state.get("metrics", {}).items()})
        model._trainer_ = model._make_trainer(previous=None, optimizer=False, history=history)
        model._epochs_before_call = state.get("epochs_before_call", 0)

    def _read_params_into(self, network: Any) -> None:
        """Fill the network's weight and bias views from the ``params`` member, a bounded
        chunk at a time, counting non-finite values; then let zipfile check the CRC."""
        info, shape, dtype, _ = self.headers["params"]
        chunk = np.empty(min(_READ_CHUNK, shape[0]), dtype=dtype)
        bad = 0
        backend = network.backend
        with self.archive.open(info) as member:
            member.seek(info.file_size - shape[0] * dtype.itemsize)
            for start, size in network._spans():
                for offset in range(0, size, chunk.size):
                    part = chunk[:min(chunk.size, size - offset)]
                    _read_into(member, part.view(np.uint8), "params")
                    values = part.astype(network.dtype, copy=False)  # native byte order
                    bad += part.size - int(np.count_nonzero(np.isfinite(values)))
                    network.params[start + offset:start + offset + part.size] = (
                        backend.asarray(values, network.dtype))
            member.read(1)  # reaching the end makes zipfile check the CRC
        if bad:
            raise _bad("array 'params'", f"{bad} non-finite values", "allowed: finite "
                       "numbers only (NaN or infinity means a diverged or damaged model)")

    def _check_values(self, arrays: dict, state: dict) -> None:
        """Checks that need the data: finite parameters, sorted distinct labels."""
        for key in ("params", "coef", "intercept"):
            if key in arrays and not np.isfinite(arrays[key]).all():
                bad = int(np.size(arrays[key]) - np.count_nonzero(np.isfinite(arrays[key])))
                raise _bad(f"array {key!r}", f"{bad} non-finite values",
                           "allowed: finite numbers only (NaN or infinity means a diverged "
                           "or damaged model)")
        classes = arrays["classes"]
        if classes.dtype.kind == "f" and not np.isfinite(classes).all():
            raise _bad("classes", classes, "allowed: finite labels")
        if classes.size > 1 and not (classes[1:] > classes[:-1]).all():
            raise _bad("classes", classes, "allowed: distinct labels in increasing order")
        if state.get("flags", {}).get("_multilabel") and not np.array_equal(classes, np.arange(classes.size)):
            raise _bad("classes", classes, f"a multilabel model's labels are 0..{classes.size - 1}")


def _restore_linear(model: Any, arrays: dict, state: dict) -> None:
    model.classes_ = arrays["classes"]
    model.coef_, model.intercept_ = arrays["coef"], arrays["intercept"]
    model.n_iter_, model.converged_ = state["n_iter"], state["converged"]
    model.t_ = float(state.get("t", 1.0))  # files written before t_ was saved: a fresh count
    model.n_features_in_ = model.coef_.shape[1]


# ============================================================================== helpers
def _read_into(member: Any, target: np.ndarray, key: str) -> None:
    """Fill the bytes ``target`` from ``member``; a short member is a truncated array."""
    filled = 0
    while filled < target.size:
        got = member.readinto(target[filled:])
        if not got:
            raise _BadFile(f"array {key!r} is truncated")
        filled += got


def _mapping(container: dict, key: str, field: str | None = None) -> dict:
    value = container.get(key)
    if not isinstance(value, dict):
        raise _bad(field or key, value, "allowed: a JSON object")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _trainable(name: Any) -> bool:
    """Whether ``name`` is the canonical name of an activation a hidden layer can train."""
    return (isinstance(name, str) and name in activations.CODES
            and name not in activations.INFERENCE_ONLY)


def _has_fileno(archive: zipfile.ZipFile) -> bool:
    try:
        archive.fp.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True
