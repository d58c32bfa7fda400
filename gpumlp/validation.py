"""Checks of user input: each failure names the argument, the value and what is allowed.

The wording of the data checks follows scikit-learn's where its estimator checks look for
it ("Reshape your data", "0 feature(s)", "Unknown label type", "is expecting N features"), so
gpumlp's estimators pass scikit-learn's conformance suite.

Any array comes in: NumPy and CuPy arrays, lists, SciPy sparse matrices (kept sparse on the
host and densified a batch at a time), and objects of other libraries that expose
``__cuda_array_interface__`` or ``__dlpack__`` (PyTorch, JAX, ...), which are wrapped without a
copy — as a CuPy array when they live on a CUDA device, as a NumPy array when on the CPU.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from . import exceptions
from .backends import cuda

#: DLPack device types (``__dlpack_device__()[0]``).
_DLPACK_CPU, _DLPACK_CUDA, _DLPACK_CUDA_HOST, _DLPACK_CUDA_MANAGED = 1, 2, 3, 13
#: Bytes of ``X`` checked (or converted) at a time: validation never makes a temporary the
#: size of the whole input, so its memory is bounded whatever the number of rows.
CHUNK_BYTES = 8 * 2**20


def block_rows(row_bytes: int, multiple: int = 1) -> int:
    """Rows per block of about :data:`CHUNK_BYTES`: a multiple of ``multiple``, at least
    ``multiple``."""
    return multiple * max(1, CHUNK_BYTES // max(1, multiple * row_bytes))


def all_finite(X: Any, xp: Any = np) -> bool:
    """Whether every value of ``X`` is finite, checked a block of rows at a time."""
    if X.dtype.kind not in "fc":
        return True
    step = block_rows(X.dtype.itemsize * (math.prod(X.shape[1:]) if X.ndim > 1 else 1))
    return all(bool(xp.isfinite(X[start:start + step]).all())
               for start in range(0, X.shape[0], step))


# --------------------------------------------------------------------------- feature names
def feature_names_of(X: Any) -> np.ndarray | None:
    """The column names of a data frame (pandas, polars, pyarrow) when all are strings, as
    scikit-learn takes them; ``None`` for arrays and frames of non-string names.

    Raises
    ------
    TypeError
        Names that mix strings and other types (scikit-learn's message).
    """
    if type(X).__module__.startswith("pyarrow"):  # a Table's .columns are its arrays
        columns = getattr(X, "column_names", None)
    elif hasattr(X, "__dataframe__") or hasattr(X, "iloc"):
        columns = getattr(X, "columns", None)
    else:
        columns = None
    if columns is None or isinstance(columns, str):
        return None
    names = np.asarray(list(columns), dtype=object)
    if len(names) == 0:
        return None
    types = sorted(t.__qualname__ for t in set(type(v) for v in names))
    if len(types) > 1 and "str" in types:
        raise TypeError(
            "Feature names are only supported if all input features have string names, "
            f"but your input has {types} as feature name / column name types. "
            "If you want feature names to be stored and validated, you must convert "
            "them all to strings, by using X.columns = X.columns.astype(str) for "
            "example. Otherwise you can remove feature / column names from your input "
            "data, or convert them all to a non-string data type.")
    return names if types == ["str"] else None


def check_feature_names(estimator: Any, X: Any, reset: bool) -> None:
    """Set (``reset``, in ``fit``) or check ``estimator.feature_names_in_`` against ``X``'s
    column names, with scikit-learn's warnings and errors: a frame with the fitted columns
    in another order, renamed, missing or extra ones is refused (its values would be fed to
    the wrong inputs); names on one side only warn."""
    if reset:
        names = feature_names_of(X)
        if names is not None:
            estimator.feature_names_in_ = names
        elif hasattr(estimator, "feature_names_in_"):
            del estimator.feature_names_in_  # fitted again on data without names
        return
    fitted = getattr(estimator, "feature_names_in_", None)
    given = feature_names_of(X)
    owner = type(estimator).__name__
    if fitted is None and given is None:
        return
    if fitted is None:
        warnings.warn(f"X has feature names, but {owner} was fitted without feature names",
                      UserWarning, stacklevel=4)
        return
    if given is None:
        warnings.warn(f"X does not have valid feature names, but {owner} was fitted with "
                      "feature names", UserWarning, stacklevel=4)
        return
    if len(fitted) == len(given) and not np.any(fitted != given):
        return
    message = "The feature names should match those that were passed during fit.\n"
    unexpected = sorted(set(given) - set(fitted))
    missing = sorted(set(fitted) - set(given))
    if unexpected:
        message += "Feature names unseen at fit time:\n" + _listed(unexpected)
    if missing:
        message += "Feature names seen at fit time, yet now missing:\n" + _listed(missing)
    if not unexpected and not missing:
        message += "Feature names must be in the same order as they were in fit.\n"
    raise ValueError(message)


def _listed(names: list) -> str:
    shown = "".join(f"- {name}\n" for name in names[:5])
    return shown + ("- ...\n" if len(names) > 5 else "")


# ------------------------------------------------------------------------------ any array in
def is_sparse(X: Any) -> bool:
    """Whether ``X`` is a SciPy sparse matrix or array."""
    return type(X).__module__.startswith("scipy.sparse")


def as_array_input(X: Any, name: str = "X") -> Any:
    """``X`` itself, or a zero-copy NumPy/CuPy view of a foreign array.

    Objects with ``__cuda_array_interface__``, or with ``__dlpack__`` on a CUDA device,
    become CuPy arrays (so a CuPy backend trains on them and results come back as CuPy);
    DLPack objects on the CPU become NumPy arrays.  Everything else is returned unchanged for
    the ordinary checks (lists, NumPy, CuPy, SciPy sparse).
    """
    module = type(X).__module__
    if isinstance(X, np.ndarray) or module.startswith(("cupy", "numpy", "scipy.sparse")):
        return X
    if hasattr(X, "__cuda_array_interface__"):
        return _cupy_module(name).asarray(X)  # zero-copy for CUDA memory
    if hasattr(X, "__dlpack__"):
        device = _dlpack_device(X)
        try:
            if device in (_DLPACK_CUDA, _DLPACK_CUDA_MANAGED):
                return _cupy_module(name).from_dlpack(X)
            if device in (_DLPACK_CPU, _DLPACK_CUDA_HOST):
                return np.from_dlpack(X)
        except (TypeError, BufferError, RuntimeError, ValueError):
            pass  # e.g. a tensor that requires grad, or a dtype DLPack cannot carry
    return X


def host_copy(values: Any) -> Any:
    """``values`` with a CuPy array copied to the host; anything else as it is."""
    if hasattr(values, "get") and type(values).__module__.startswith("cupy"):
        return values.get()
    return values


def _dlpack_device(X: Any) -> int | None:
    try:
        return int(X.__dlpack_device__()[0])
    except Exception:
        return _DLPACK_CPU if not hasattr(X, "__dlpack_device__") else None


def _cupy_module(name: str) -> Any:
    return cuda.cupy_module(name)


# ------------------------------------------------------------------------------------- X
def check_X(X: Any, backend: Any, dtype: np.dtype, n_features: int | None = None,
            name: str = "X", owner: str = "the model", convert: bool = True) -> Any:
    """Return ``X`` as a finite, 2-D, non-empty backend array of ``dtype``.

    A SciPy sparse ``X`` is returned as a host CSR matrix of ``dtype`` (densified later, a
    batch at a time).  ``owner`` names the estimator in the feature-count message.  With
    ``convert=False`` a host ``X`` is checked but returned as it is (a memory map stays
    one), for a caller that converts it a block of rows at a time
    (:func:`converted_rows`).  No check makes a temporary the size of ``X``.
    """
    X = as_array_input(X, name)
    if is_sparse(X):
        return _check_sparse(X, dtype, n_features, name, owner)
    xp = backend.xp
    on_host = backend.arrays_on_host or not backend.owns(X)  # a device array stays one
    if on_host:
        X = _host_numeric(X, name)
    _check_shape(X.shape, n_features, name, owner)
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric; got dtype {X.dtype}")
    if not all_finite(X, np if on_host else xp):
        raise ValueError(f"{name} contains NaN or infinity; clean or impute it first")
    if not convert and on_host:
        return X
    with np.errstate(over="ignore"):  # an overflowing cast is refused below, by name
        converted = backend.asarray(X, dtype)
    if converted is not X and not all_finite(converted, xp):
        raise _out_of_range(name, X, dtype)
    return converted


def converted_rows(X: np.ndarray, start: int, stop: int, backend: Any, dtype: np.dtype,
                   name: str = "X") -> Any:
    """Rows ``start:stop`` of a host ``X`` checked by ``check_X(..., convert=False)``, as a
    backend array of ``dtype``; values beyond ``dtype``'s range are refused."""
    rows = X[start:stop]
    with np.errstate(over="ignore"):  # an overflowing cast is refused below, by name
        converted = backend.asarray(rows, dtype)
    if rows.dtype != dtype and not all_finite(converted, backend.xp):
        raise _out_of_range(name, rows, dtype)
    return converted


def _out_of_range(name: str, X: Any, dtype: np.dtype) -> ValueError:
    limit = float(np.finfo(dtype).max)
    return ValueError(f"{name} has values beyond the range of {np.dtype(dtype).name} (largest "
                      f"magnitude {limit:.4g}); scale {name} (e.g. with StandardScaler) or "
                      "use dtype='float64'")


def _check_shape(shape: tuple, n_features: int | None, name: str, owner: str) -> None:
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features); got shape {shape}. "
                         f"Reshape your data: {name}.reshape(-1, 1) for a single feature, "
                         f"{name}.reshape(1, -1) for a single sample")
    for count, what in ((shape[0], "sample(s)"), (shape[1], "feature(s)")):
        if count == 0:
            raise ValueError(f"{name} is empty: found 0 {what} (shape={tuple(shape)}) while "
                             "a minimum of 1 is required.")
    if n_features is not None and shape[1] != n_features:
        raise ValueError(f"{name} has {shape[1]} features, but {owner} is expecting "
                         f"{n_features} features as input")


def _check_sparse(X: Any, dtype: np.dtype, n_features: int | None, name: str,
                  owner: str) -> Any:
    X = X.tocsr()
    _check_shape(X.shape, n_features, name, owner)
    if X.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {X.dtype}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric; got a sparse matrix of dtype {X.dtype}")
    X = X.astype(dtype, copy=False)
    if not np.isfinite(X.data).all():
        raise ValueError(f"{name} contains NaN or infinity; clean or impute it first")
    X.sort_indices()
    return X


def dense_rows(X: Any, backend: Any, dtype: np.dtype, index: Any = None) -> Any:
    """Rows ``index`` (all rows when ``None``) of a checked ``X`` as a dense backend array."""
    if is_sparse(X):
        rows = X if index is None else X[np.asarray(index)]
        return backend.asarray(rows.toarray(), dtype)
    return X if index is None else X[index]


def _host_numeric(X: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(X)
    except Exception as exc:
        raise TypeError(f"{name} could not be converted to an array: {exc}") from None
    if array.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {array.dtype}")
    if array.dtype.kind == "O":  # numbers held as objects convert; anything else cannot
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be numeric (bool, int or float); got dtype object "
                            f"holding non-numeric values ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric (bool, int or float); got dtype "
                        f"{array.dtype}")
    return array


# ------------------------------------------------------------------------------ targets
def check_targets(y: Any, n_samples: int, name: str = "y", owner: str = "the model",
                  warn_column: bool = True) -> np.ndarray:
    """Return ``y`` as a host array of 1 or 2 dimensions with ``n_samples`` rows.

    A column vector ``(n, 1)`` is flattened with scikit-learn's ``DataConversionWarning``
    (unless ``warn_column`` is False).
    """
    if y is None:
        raise ValueError(f"{owner} requires y to be passed, but the target y is None")
    y = host_copy(as_array_input(y, name))
    if is_sparse(y):
        y = y.toarray()
    y = np.asarray(y)
    if y.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        if warn_column:
            warnings.warn("A column-vector y was passed when a 1d array was expected. Please "
                          "change the shape of y to (n_samples, ), for example using ravel().",
                          exceptions.DataConversionWarning, stacklevel=4)
        y = y.ravel()
    if y.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (or 2-D for several outputs); got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"{name} has {y.shape[0]} samples but X has {n_samples}")
    return y


def check_classification_targets(y: np.ndarray, name: str = "y") -> None:
    """Reject targets a classifier cannot learn: continuous values, a 2-D ``y`` that is
    not a 0/1 indicator matrix (scikit-learn's "Unknown label type"), or labels of mixed
    types, which cannot be sorted into classes."""
    check_label_types(y, name)
    if y.ndim == 2:
        if not np.isin(y, (0, 1)).all():
            kind = ("continuous-multioutput" if y.dtype.kind == "f" and _non_integer(y)
                    else "multiclass-multioutput")
            raise ValueError(f"Unknown label type: {kind}. A 2-D {name} must be a 0/1 "
                             "indicator matrix (multilabel)")
        return
    if y.dtype.kind == "f" and _non_integer(y):
        raise ValueError(f"Unknown label type: continuous. {name} holds non-integer values "
                         "(e.g. a regression target); a classifier needs discrete labels")


def check_label_types(y: np.ndarray, name: str = "y") -> None:
    """Object-dtype labels must be all strings or all numbers (bool excluded): mixed ones
    (``[1, "a"]``, a ``None`` among strings) have no order to sort classes by."""
    if y.dtype.kind != "O":
        return
    kinds = {"str" if isinstance(v, str) else
             "number" if isinstance(v, numbers.Number) and not isinstance(v, (bool, np.bool_))
             else type(v).__name__ for v in y.ravel().tolist()}
    if len(kinds) > 1 or kinds - {"str", "number"}:
        types = sorted({type(v).__name__ for v in y.ravel().tolist()})
        raise ValueError(f"{name} holds labels of types {types}; labels must be all strings "
                         "or all numbers (convert them, e.g. y.astype(str))")


def _non_integer(y: np.ndarray) -> bool:
    finite = np.isfinite(y)
    return bool((~finite).any() or np.any(y[finite] != np.round(y[finite])))


def check_finite_numeric(y: np.ndarray, name: str = "y") -> np.ndarray:
    if y.dtype.kind == "O":
        try:
            y = y.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be numeric for regression ({exc})") from None
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric for regression; got dtype {y.dtype}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return y


def check_sample_weight(sample_weight: Any, n_samples: int,
                        name: str = "sample_weight") -> np.ndarray | None:
    """``None``, or a host float64 copy of the weights: 1-D, ``n_samples`` long, finite,
    non-negative, not all zero.  A scalar weighs every sample alike."""
    if sample_weight is None:
        return None
    sample_weight = host_copy(as_array_input(sample_weight, name))
    try:
        weights = np.array(sample_weight, dtype=np.float64)  # a copy: never the caller's
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric ({exc})") from None
    if weights.ndim == 0:
        weights = np.full(n_samples, float(weights))
    if weights.shape != (n_samples,):
        raise ValueError(f"{name} must have shape ({n_samples},), one weight per sample; got "
                         f"shape {weights.shape}")
    if not np.isfinite(weights).all():
        raise ValueError(f"{name} contains NaN or infinity")
    if (weights < 0).any():
        raise ValueError(f"{name} has negative values (min {weights.min()}); weights must "
                         "be >= 0")
    if not weights.any():
        raise ValueError(f"{name} is all zero: sample weights must contain at least one "
                         "non-zero number")
    return weights


# --------------------------------------------------------------------------- hyper-parameters
def check_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def check_float(name: str, value: Any, low: float, high: float, low_open: bool = False,
                high_open: bool = False) -> float:
    """``value`` as a float in the interval; open ends are excluded."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {value!r}")
    value = float(value)
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if not np.isfinite(value) or below or above:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name}={value!r} is out of range; allowed: {interval}")
    return value


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of {choices}")
    return value


def seed_from(random_state: Any) -> int:
    """An integer seed from ``None`` (fresh entropy), an int, or a NumPy generator."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0])
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        if random_state < 0:
            raise ValueError(f"random_state={random_state!r} must be >= 0")
        return int(random_state)
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**31 - 1))
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    raise TypeError(f"random_state must be None, an int or a NumPy Generator/RandomState; "
                    f"got {random_state!r}")
