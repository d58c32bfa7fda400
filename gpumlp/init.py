"""Weight initialisation from a seed: He for rectifiers, Glorot for the rest.

Weights are drawn on the host with NumPy's generator and then moved to the backend, so the
same seed gives the same weights on every backend.
"""

from __future__ import annotations

import numpy as np

RECTIFIERS = frozenset({"relu", "leaky_relu"})


def init_bound(fan_in: int, fan_out: int, activation: str) -> float:
    """Half-width of the uniform initialisation range.

    He-uniform ``sqrt(6 / fan_in)`` keeps the variance of rectified activations steady;
    Glorot-uniform ``sqrt(6 / (fan_in + fan_out))`` suits symmetric and identity units, and
    sigmoid takes Glorot's factor 2 as scikit-learn does.
    """
    if activation in RECTIFIERS:
        return float(np.sqrt(6.0 / fan_in))
    factor = 2.0 if activation == "sigmoid" else 6.0
    return float(np.sqrt(factor / (fan_in + fan_out)))


def init_layer(rng: np.random.Generator, fan_in: int, fan_out: int, activation: str,
               dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Uniform weights in ``[-bound, bound]`` and zero biases for one layer."""
    bound = init_bound(fan_in, fan_out, activation)
    weights = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(dtype)
    return weights, np.zeros(fan_out, dtype=dtype)
