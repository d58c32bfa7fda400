"""Activation functions and their derivatives, written once for any array module.

Every differentiable hidden activation here has a derivative that is a function of its
*output* ``a = phi(z)`` (relu: ``a > 0``; sigmoid: ``a (1 - a)``; tanh: ``1 - a^2``), so the
forward pass keeps only ``A`` and never ``Z``.  The integer codes are shared with the CUDA
kernels (``kernels/activations.cuh``); keep the two in step.
"""

from __future__ import annotations

from typing import Any

#: Slope of leaky ReLU for ``z < 0``; the kernels use the same constant.
LEAKY_SLOPE = 0.01

#: Activation name -> integer code used by the kernels.
CODES: dict[str, int] = {
    "identity": 0,
    "relu": 1,
    "leaky_relu": 2,
    "sigmoid": 3,
    "tanh": 4,
    "hard_limit": 5,
}

#: Names accepted for hidden layers (``"logistic"`` is scikit-learn's name for sigmoid).
ALIASES = {"logistic": "sigmoid", "linear": "identity"}

#: Activations with no usable derivative: forward (inference) only.
INFERENCE_ONLY = frozenset({"hard_limit"})

HIDDEN_ACTIVATIONS = tuple(sorted(set(CODES) | set(ALIASES)))


def canonical(name: str, argument: str = "activation") -> str:
    """Return the canonical activation name, or raise a ``ValueError`` naming the choices."""
    if not isinstance(name, str):
        raise TypeError(f"{argument} must be a string, got {type(name).__name__} {name!r}")
    key = ALIASES.get(name, name)
    if key not in CODES:
        raise ValueError(
            f"{argument}={name!r} is not a known activation; choose one of {HIDDEN_ACTIVATIONS}"
        )
    return key


def apply(xp: Any, name: str, z: Any, out: Any) -> Any:
    """Write ``phi(z)`` into ``out`` (which may be ``z``) and return it."""
    if name == "identity":
        if out is not z:
            out[...] = z
    elif name == "relu":
        xp.maximum(z, 0, out=out)
    elif name == "leaky_relu":
        # max(z, s z) equals leaky relu for 0 < s < 1 and needs no temporary mask.
        xp.maximum(z, z * z.dtype.type(LEAKY_SLOPE), out=out)
    elif name == "sigmoid":
        # Split by sign so exp never overflows: sigmoid(z) = e^{-|z|}/(1+e^{-|z|}) for z<0.
        e = xp.exp(-xp.abs(z))
        out[...] = xp.where(z >= 0, 1 / (1 + e), e / (1 + e))
    elif name == "tanh":
        xp.tanh(z, out=out)
    elif name == "hard_limit":
        out[...] = z >= 0
    else:  # pragma: no cover - canonical() guards every entry point
        raise ValueError(f"unknown activation {name!r}")
    return out


def derivative_from_output(xp: Any, name: str, a: Any) -> Any:
    """Return ``phi'(z)`` expressed through the output ``a = phi(z)``."""
    one = a.dtype.type(1)
    if name == "identity":
        return xp.ones_like(a)
    if name == "relu":
        return (a > 0).astype(a.dtype)
    if name == "leaky_relu":
        return xp.where(a > 0, one, a.dtype.type(LEAKY_SLOPE))
    if name == "sigmoid":
        return a * (one - a)
    if name == "tanh":
        return one - a * a
    if name == "hard_limit":
        raise ValueError(
            "activation='hard_limit' has no derivative: it is for inference and the "
            "perceptron rule only; train with 'relu', 'sigmoid', 'tanh', ... instead"
        )
    raise ValueError(f"unknown activation {name!r}")  # pragma: no cover
