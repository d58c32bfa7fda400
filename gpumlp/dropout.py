"""Inverted dropout driven by a counter-based random generator (Philox4x32-10).

A counter-based generator turns ``(key, counter)`` into random bits with no state, so the
mask of any element can be recomputed anywhere: the backward pass regenerates the forward
mask instead of storing it, and the CUDA kernels (``kernels/philox.cuh``) produce exactly the
same masks as this NumPy/CuPy code from the same seed.

Element ``i`` of a dropout call uses word ``i % 4`` of Philox applied to the counter
``(i // 4 low, i // 4 high, call low, call high)`` under the key ``(seed low, seed high)``.
It is kept when ``(word >> 8) * 2**-24 < keep`` (a float32 comparison in both places).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
ROUNDS = 10


@dataclass(frozen=True)
class Dropout:
    """One dropout application: keep probability, generator key and a call counter.

    ``counter`` must differ between every call that should draw a fresh mask (the trainer
    uses ``step * n_layers + layer``); the same ``(seed, counter)`` always gives the same mask.
    """

    keep: float
    seed: int
    counter: int


def philox4x32(xp: Any, c0: Any, c1: Any, c2: Any, c3: Any, k0: int, k1: int) -> tuple:
    """Philox4x32-10 on arrays of uint64 words holding 32-bit values; returns four words."""
    u64 = xp.uint64
    m0, m1, mask = u64(_M0), u64(_M1), u64(_MASK32)
    for _ in range(ROUNDS):
        p0 = c0 * m0
        p1 = c2 * m1
        hi0, lo0 = p0 >> u64(32), p0 & mask
        hi1, lo1 = p1 >> u64(32), p1 & mask
        c0, c1, c2, c3 = hi1 ^ c1 ^ u64(k0), lo1, hi0 ^ c3 ^ u64(k1), lo0
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def random_words(xp: Any, size: int, seed: int, counter: int) -> Any:
    """Return ``size`` uint32 random words (as uint64) for one dropout call."""
    groups = (size + 3) // 4
    index = xp.arange(groups, dtype=xp.uint64)
    mask = xp.uint64(_MASK32)
    c0 = index & mask
    c1 = index >> xp.uint64(32)
    c2 = xp.full(groups, counter & _MASK32, dtype=xp.uint64)
    c3 = xp.full(groups, (counter >> 32) & _MASK32, dtype=xp.uint64)
    words = philox4x32(xp, c0, c1, c2, c3, seed & _MASK32, (seed >> 32) & _MASK32)
    return xp.stack(words, axis=1).reshape(-1)[:size]


def keep_mask(xp: Any, shape: tuple[int, ...], dropout: Dropout) -> Any:
    """Boolean mask of the elements that ``dropout`` keeps, in row-major order."""
    size = int(np.prod(shape))
    words = random_words(xp, size, dropout.seed, dropout.counter)
    uniform = (words >> xp.uint64(8)).astype(xp.float32) * xp.float32(2.0**-24)
    return (uniform < xp.float32(dropout.keep)).reshape(shape)
