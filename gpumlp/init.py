"""Weight initialisation from a seed.

Two schemes:

* ``"glorot"`` — scikit-learn's: weights *and* biases uniform in ``±sqrt(6 / (fan_in +
  fan_out))`` (factor 2 instead of 6 when the hidden activation is logistic, for every layer
  as scikit-learn does), drawn layer by layer, weights then biases, from
  ``numpy.random.RandomState(seed)``.  The same integer seed therefore gives the very
  initial weights scikit-learn's MLPs start from.  The estimators' default.
* ``"he"`` — He-uniform ``sqrt(6 / fan_in)`` for rectifier layers, Glorot-uniform for the
  others, zero biases, from ``numpy.random.default_rng(seed)``.  :class:`gpumlp.Network`'s
  default, and what the command-line recipe trains with.

Weights are drawn on the host and then moved to the backend, so the same seed gives the same
weights on every backend.

Examples
--------
>>> import numpy as np
>>> from gpumlp.init import initial_parameters
>>> flat = initial_parameters("glorot", [3, 4, 2], ["relu"], seed=0, dtype=np.float64)
>>> flat.shape   # W1 (3x4), b1 (4), W2 (4x2), b2 (2), packed
(26,)
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

INIT_SCHEMES = ("glorot", "he")
RECTIFIERS = frozenset({"relu", "leaky_relu"})


def init_bound(fan_in: int, fan_out: int, activation: str) -> float:
    """Half-width of the uniform range of the ``"he"`` scheme for one layer.

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
    """Uniform weights in ``[-bound, bound]`` and zero biases for one layer (``"he"``)."""
    bound = init_bound(fan_in, fan_out, activation)
    weights = rng.uniform(-bound, bound, size=(fan_in, fan_out)).astype(dtype)
    return weights, np.zeros(fan_out, dtype=dtype)


def glorot_layers(sizes: Sequence[int], hidden_activation: str, seed: int,
                  dtype: np.dtype) -> list[tuple[np.ndarray, np.ndarray]]:
    """scikit-learn's ``_init_coef`` for every layer: ``(W, b)`` pairs, both uniform.

    ``hidden_activation`` is the canonical name of the hidden units' activation; it sets
    the factor of every layer, the output layer included, as in scikit-learn.
    """
    rng = np.random.RandomState(seed)
    factor = 2.0 if hidden_activation == "sigmoid" else 6.0
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        bound = np.sqrt(factor / (fan_in + fan_out))
        weights = rng.uniform(-bound, bound, (fan_in, fan_out)).astype(dtype)
        biases = rng.uniform(-bound, bound, fan_out).astype(dtype)
        layers.append((weights, biases))
    return layers


def initial_parameters(scheme: str, sizes: Sequence[int], hidden_activations: Sequence[str],
                       seed: int, dtype: np.dtype) -> np.ndarray:
    """Initial parameters packed as ``W_1, b_1, W_2, b_2, ...`` (host array of ``dtype``).

    ``hidden_activations`` holds one canonical name per hidden layer; the output layer counts
    as identity for ``"he"``.  ``"glorot"`` uses the first hidden activation for every layer
    (scikit-learn has one activation for all hidden layers).
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"init={scheme!r} is not valid; choose one of {INIT_SCHEMES}")
    if scheme == "glorot":
        hidden = hidden_activations[0] if len(hidden_activations) else "identity"
        layers = glorot_layers(sizes, hidden, seed, dtype)
    else:
        rng = np.random.default_rng(seed)
        acts = list(hidden_activations) + ["identity"]
        layers = [init_layer(rng, fan_in, fan_out, act, dtype)
                  for fan_in, fan_out, act in zip(sizes[:-1], sizes[1:], acts)]
    return np.concatenate([part.ravel() for layer in layers for part in layer]).astype(dtype)
