"""Checks of user input: each failure names the argument, the value and what is allowed."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def check_X(X: Any, backend: Any, dtype: np.dtype, n_features: int | None = None,
            name: str = "X") -> Any:
    """Return ``X`` as a finite, 2-D, non-empty backend array of ``dtype``."""
    xp = backend.xp
    if not backend.owns(X):
        X = _host_numeric(X, name)
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features); got shape {X.shape}. "
                         "Reshape a single sample with X.reshape(1, -1)")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {X.shape}); at least one sample and one "
                         "feature are needed")
    if n_features is not None and X.shape[1] != n_features:
        raise ValueError(f"{name} has {X.shape[1]} features, but the model was fitted with "
                         f"{n_features}")
    if X.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric; got dtype {X.dtype}")
    X = backend.asarray(X, dtype)
    if not bool(xp.isfinite(X).all()):
        raise ValueError(f"{name} contains NaN or infinity; clean or impute it first")
    return X


def check_targets(y: Any, n_samples: int, name: str = "y") -> np.ndarray:
    """Return ``y`` as a host array of 1 or 2 dimensions with ``n_samples`` rows."""
    if hasattr(y, "get") and type(y).__module__.startswith("cupy"):
        y = y.get()
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D (or 2-D for several outputs); got shape {y.shape}")
    if y.shape[0] != n_samples:
        raise ValueError(f"{name} has {y.shape[0]} samples but X has {n_samples}")
    return y


def check_finite_numeric(y: np.ndarray, name: str = "y") -> np.ndarray:
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric for regression; got dtype {y.dtype}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name} contains NaN or infinity")
    return y


def _host_numeric(X: Any, name: str) -> np.ndarray:
    if hasattr(X, "toarray") and type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"{name} is a sparse {type(X).__name__}; sparse input is not "
                        f"supported, pass a dense array ({name}.toarray())")
    try:
        array = np.asarray(X)
    except Exception as exc:
        raise TypeError(f"{name} could not be converted to an array: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numeric (bool, int or float); got dtype "
                        f"{array.dtype}" + (" (mixed or non-numeric values)"
                                            if array.dtype.kind == "O" else ""))
    return array


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
