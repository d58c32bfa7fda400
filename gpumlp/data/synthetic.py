"""MNIST-shaped synthetic data: for throughput benchmarks and tests, never for accuracy claims."""

from __future__ import annotations

import numpy as np

# Fraction of "ink" pixels in a prototype; MNIST digits cover about a fifth of the image.
_INK_FRACTION = 0.2
# Fraction of pixels where a class prototype departs from the shared background shape. Classes
# that share most of their ink, plus strong noise, make a problem that is learnable but not
# trivially separable (nearest-centroid accuracy is roughly 80-85%, not 100%).
_CLASS_FRACTION = 0.02
# Half-width of the uniform per-pixel noise (uniform is about twice as fast to draw as normal).
_NOISE_HALF_WIDTH = 0.8


def _check_positive_int(value: object, argument: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{argument} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{argument}={value} is too small; allowed: an int >= {minimum}")
    return int(value)


def synthetic_mnist(
    n_samples: int = 60000, n_features: int = 784, n_classes: int = 10, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a deterministic, learnable, MNIST-shaped classification problem.

    Every class prototype is a sparse "ink" image (values in [0.6, 1] on a dark background)
    that shares most of its pixels with the other classes; a sample is its class prototype plus
    uniform noise, clipped to [0, 1]. Classes are balanced to within one sample and shuffled.
    A small MLP does far better than chance but, because of the shared ink and the noise,
    no single pixel decides the class.

    Parameters
    ----------
    n_samples : int, default 60000
        Number of rows.
    n_features : int, default 784
        Number of columns (28 x 28 for MNIST).
    n_classes : int, default 10
        Number of classes, at least 2.
    seed : int, default 0
        Seed for :func:`numpy.random.default_rng`; the same arguments give the same arrays.

    Returns
    -------
    X : numpy.ndarray
        float32, shape ``(n_samples, n_features)``, values in [0, 1].
    y : numpy.ndarray
        int64, shape ``(n_samples,)``, values in ``0 .. n_classes - 1``.

    Examples
    --------
    >>> X, y = synthetic_mnist(1000, seed=1)
    >>> X.shape, X.dtype, y.dtype
    ((1000, 784), dtype('float32'), dtype('int64'))
    """
    n_samples = _check_positive_int(n_samples, "n_samples")
    n_features = _check_positive_int(n_features, "n_features")
    n_classes = _check_positive_int(n_classes, "n_classes", minimum=2)
    seed = _check_positive_int(seed, "seed", minimum=0)
    rng = np.random.default_rng(seed)

    def ink(shape: tuple[int, ...]) -> np.ndarray:
        return (rng.random(shape) < _INK_FRACTION) * rng.uniform(0.6, 1.0, size=shape)

    shared = ink((n_features,))
    own = rng.random((n_classes, n_features)) < _CLASS_FRACTION
    prototypes = np.where(own, ink((n_classes, n_features)), shared).astype(np.float32)

    y = rng.permutation(np.arange(n_samples, dtype=np.int64) % n_classes)
    # Draw float32 directly and work in place: no float64 temporary of the full size.
    X = rng.random((n_samples, n_features), dtype=np.float32)
    X -= np.float32(0.5)
    X *= np.float32(2 * _NOISE_HALF_WIDTH)
    X += prototypes[y]
    np.clip(X, 0.0, 1.0, out=X)
    return X, y
