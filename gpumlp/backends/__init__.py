"""Backend selection: ``get_backend("auto" | "numpy" | "cupy")`` and ``use_backend``.

Nothing here imports CuPy or touches a GPU until a CuPy backend is actually asked for (or
``"auto"`` looks for one).
"""

from __future__ import annotations

import contextlib
import contextvars
import copyreg
import threading
from typing import Any, Iterator

from .base import Backend, L2Term
from .cuda import unavailable_reason as cupy_unavailable_reason
from .cuda.backend import CupyBackend
from .numpy_backend import NumpyBackend

BACKEND_NAMES = ("auto", "numpy", "cupy")

_default: contextvars.ContextVar[str | Backend] = contextvars.ContextVar(
    "gpumlp_backend", default="auto")
_instances: dict[str, Backend] = {}
_instances_lock = threading.Lock()  # one backend per name, even when threads race to make it


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why."""


def _make(name: str) -> Backend:
    if name == "numpy":
        return NumpyBackend()
    reason = cupy_unavailable_reason()
    if reason is not None:
        raise BackendUnavailable(f"backend='cupy' is unavailable: {reason}")
    return CupyBackend()


def _by_name(backend: Backend) -> tuple:
    # A backend holds a module (xp); pickled by name, a fitted model unpickles onto the
    # shared backend of that name.
    return (get_backend, (backend.name,))


for _kind in (NumpyBackend, CupyBackend):
    copyreg.pickle(_kind, _by_name)


def get_backend(name: str | Backend | None = None) -> Backend:
    """Return a backend by name; ``None`` means the current default (see :func:`use_backend`).

    ``"auto"`` picks CuPy when it imports and a CUDA device exists, else NumPy.

    Examples
    --------
    >>> import gpumlp
    >>> gpumlp.get_backend("numpy").name
    'numpy'
    """
    if name is None:
        name = _default.get()
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str) or name not in BACKEND_NAMES:
        raise ValueError(f"backend={name!r} is not valid; choose one of {BACKEND_NAMES} "
                         "or pass a Backend instance")
    if name == "auto":
        name = "cupy" if cupy_unavailable_reason() is None else "numpy"
    with _instances_lock:
        if name not in _instances:
            _instances[name] = _make(name)
        return _instances[name]


def backend_for(x: Any, requested: str | Backend | None = None) -> Backend:
    """The backend that owns array ``x`` ("everything follows X"), else ``requested``."""
    module = type(x).__module__
    if module.startswith("cupy"):
        return get_backend("cupy")
    return get_backend(requested)


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[Backend]:
    """Make ``name`` the default backend inside a ``with`` block.

    Examples
    --------
    >>> import gpumlp
    >>> with gpumlp.use_backend("numpy") as backend:
    ...     backend.name
    'numpy'
    """
    backend = get_backend(name)
    token = _default.set(backend)
    try:
        yield backend
    finally:
        _default.reset(token)


def available_backends() -> dict[str, str | None]:
    """Each concrete backend mapped to ``None`` (available) or the reason it is not."""
    return {"numpy": None, "cupy": cupy_unavailable_reason()}


__all__ = ["Backend", "L2Term", "NumpyBackend", "BackendUnavailable", "get_backend", "use_backend",
           "backend_for", "available_backends", "cupy_unavailable_reason", "BACKEND_NAMES"]
