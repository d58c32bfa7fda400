"""Everything that executes CUDA: the CuPy backend and what it needs.

Nothing outside this package imports CuPy or loads a CUDA library; the rest of gpumlp reaches
it through the :class:`~gpumlp.backends.base.Backend` interface.  Importing this package (or
any of its modules) never imports CuPy or touches a GPU: CuPy is imported when a CuPy backend
is made.
"""

from __future__ import annotations

from typing import Any


def unavailable_reason() -> str | None:
    """``None`` when CuPy imports and sees a CUDA device, else a sentence saying why not."""
    try:
        import cupy  # here, not at import: importing gpumlp never touches a GPU
    except Exception as exc:  # ImportError, or a broken CUDA installation
        return (f"CuPy is not importable ({type(exc).__name__}: {exc}); install "
                "gpumlp[cuda12] or gpumlp[cuda13] on a machine with an NVIDIA GPU")
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy found no usable CUDA driver or device ({type(exc).__name__}: {exc})"
    if count < 1:
        return "CuPy is installed but no CUDA device is visible"
    return None


def cupy_module(name: str) -> Any:
    """CuPy, to wrap the CUDA device array passed as argument ``name``; a ``TypeError``
    naming it where CuPy cannot be imported."""
    try:
        import cupy  # only for a device array the caller was given
    except Exception as exc:
        raise TypeError(f"{name} is a CUDA device array; CuPy is needed to use it "
                        f"({type(exc).__name__}: {exc}). Install gpumlp[cuda12] or "
                        "gpumlp[cuda13], or pass a host array") from None
    return cupy
