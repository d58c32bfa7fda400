"""GEMM precision: ``"float32"`` (the default) or ``"tf32"`` (TensorFloat-32 tensor cores).

TF32 is a GPU tensor-core mode (compute capability 8.0 and later): the inputs of each matrix
product are rounded to 10 mantissa bits (float32's range, about 3 decimal digits), the products
are exact and are accumulated in float32.  Everything outside the matrix products (bias,
activations, dropout, losses, the optimizer, bias gradients) stays in float32.

On the CuPy backend ``"tf32"`` runs the TF32 tensor-core GEMM kernels.  The NumPy backend has
no tensor cores: it emulates them by rounding the GEMM inputs with :func:`round_to_tf32`
before a float32 product, which previews TF32's accuracy on the CPU (not its speed; the
rounding costs an extra pass over both operands).

Examples
--------
>>> import numpy as np
>>> from gpumlp.precision import round_to_tf32
>>> float(round_to_tf32(np, np.float32(1 + 2**-11)))  # a tie: rounded away from zero
1.0009765625
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["PRECISIONS", "check_precision", "round_to_tf32", "gemm_operand"]

#: Allowed precisions of the matrix products.
PRECISIONS = ("float32", "tf32")


def check_precision(precision: Any, dtype: Any = None) -> str:
    """``precision`` if it is one of :data:`PRECISIONS` and allowed with ``dtype``, else raise.

    ``"tf32"`` is accepted only with float32 parameters (TF32 is a float32 tensor-core mode).
    """
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not valid; choose one of {PRECISIONS}")
    if precision == "tf32" and dtype is not None and np.dtype(dtype) != np.dtype(np.float32):
        raise ValueError(f"precision='tf32' needs dtype float32, got "
                         f"dtype={np.dtype(dtype).name}; use precision='float32' with it")
    return precision


def round_to_tf32(xp: Any, x: Any) -> Any:
    """A new float32 array: ``x`` rounded to TF32 as ``cvt.rna.tf32.f32`` does.

    Round to nearest with ties away from zero, keeping 10 of float32's 23 mantissa bits (the
    low 13 become zero); infinities and NaN pass unchanged.  ``xp`` is NumPy or CuPy.
    """
    bits = xp.array(x, dtype=xp.float32, copy=True).view(xp.uint32)
    finite = (bits & xp.uint32(0x7F800000)) != xp.uint32(0x7F800000)
    # Adding half of the lowest kept bit to the magnitude rounds ties away from zero; a carry
    # into the exponent is the correct rounding up (to infinity past the largest finite).
    rounded = (bits + xp.uint32(0x1000)) & xp.uint32(0xFFFFE000)
    return xp.where(finite, rounded, bits).view(xp.float32)


def gemm_operand(xp: Any, x: Any, precision: str) -> Any:
    """``x`` as a matrix product with ``precision`` reads it: itself, or rounded to TF32."""
    if precision == "float32":
        return x
    check_precision(precision, x.dtype)
    return round_to_tf32(xp, x)
