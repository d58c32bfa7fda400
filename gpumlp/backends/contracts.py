"""Array contracts checked once per backend call, before anything is launched.

A raw CUDA kernel sees only a data pointer.  A strided view (``X[:, ::2]``, a transposed
weight), an array of another dtype, a host array or an array on another device is read as if
it were the contiguous array of the kernel's type on the current device: silent garbage, or a
fault far from the cause.  :func:`check` rejects each of these at the backend boundary with a
message naming the operation, the argument, what was passed and what is allowed.  It runs
once per call on the host (microseconds); captured graphs replay without it.

Shapes are given as patterns of size names, bound on first use: ``x=(x, "n k")``,
``w=(w, "k m")`` requires ``w.shape[0] == x.shape[1]``.

Examples
--------
>>> import numpy as np
>>> from gpumlp.backends import contracts
>>> x, w = np.zeros((4, 3), np.float32), np.zeros((3, 2), np.float32)
>>> contracts.check(np, "affine_act", x.dtype, x=(x, "n k"), w=(w, "k m"))
{'n': 4, 'k': 3, 'm': 2}
>>> contracts.check(np, "affine_act", x.dtype, x=(x, "n k"), w=(w[:2], "k m"))
Traceback (most recent call last):
...
ValueError: affine_act: w has shape (2, 2), but the shapes of this call need (3, m)
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: dtypes the fused kernels are instantiated for.
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_dtype(op: str, name: str, array: Any) -> np.dtype:
    """The dtype of ``array`` if the kernels support it, else a ``TypeError``."""
    dtype = getattr(array, "dtype", None)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} has dtype {dtype}; allowed: float32 or float64")
    return dtype


def check(xp: Any, op: str, dtype: Any, device: int | None = None,
          **arrays: Any) -> dict[str, int]:
    """Check every array argument of one backend call; returns the bound size names.

    ``arrays`` maps an argument name to ``(array, pattern)`` or ``(array, pattern, dtype)``
    (the dtype of index arrays differs from the call's ``dtype``); ``None`` arrays are
    skipped.  ``device`` is the current device id (``None``: not checked, e.g. on the host).
    """
    sizes: dict[str, int] = {}
    array_type = xp.ndarray
    for name, spec in arrays.items():
        array, pattern = spec[0], spec[1]
        if array is None:
            continue
        want = np.dtype(spec[2]) if len(spec) > 2 else np.dtype(dtype)
        if not isinstance(array, array_type):
            raise TypeError(f"{op}: {name} must be a {xp.__name__}.ndarray on this backend's "
                            f"device; got {type(array).__module__}.{type(array).__name__}"
                            + (" (a host array: move it with backend.asarray first)"
                               if isinstance(array, np.ndarray) else ""))
        if array.dtype != want:
            if len(spec) > 2:
                raise TypeError(f"{op}: {name} has dtype {array.dtype}; allowed: {want}")
            shared = ", ".join(f"{n} {a[0].dtype}" for n, a in arrays.items()
                               if len(a) == 2 and a[0] is not None and hasattr(a[0], "dtype"))
            raise TypeError(f"{op}: {name} has dtype {array.dtype}, but the arrays of one call "
                            f"must share one dtype (float32 or float64); got {shared}")
        if not array.flags.c_contiguous:
            raise ValueError(f"{op}: {name} is not C-contiguous (shape {array.shape}, strides "
                             f"{array.strides}); the kernels read only the data pointer: pass "
                             f"a contiguous array ({xp.__name__}.ascontiguousarray)")
        if device is not None:
            where = array.device.id
            if where != device:
                raise ValueError(f"{op}: {name} is on device {where} but the current device "
                                 f"is {device}; copy it or call inside "
                                 f"{xp.__name__}.cuda.Device({where})")
        _match_shape(op, name, array.shape, pattern.split(), sizes)
    return sizes


def _match_shape(op: str, name: str, shape: tuple, pattern: list[str],
                 sizes: dict[str, int]) -> None:
    bound = dict(sizes)
    ok = len(shape) == len(pattern) and all(
        bound.setdefault(symbol, size) == size for size, symbol in zip(shape, pattern))
    if ok:
        sizes.update(bound)
    else:
        need = ", ".join(str(sizes.get(s, s)) for s in pattern)
        need = f"({need},)" if len(pattern) == 1 else f"({need})"
        raise ValueError(f"{op}: {name} has shape {shape}, but the shapes of this call "
                         f"need {need}")
