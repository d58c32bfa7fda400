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

import math
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
    """Philox4x32-10 on uint64 arrays holding 32-bit words; returns the four output words.

    The four counter arrays are overwritten with the result (they must be distinct arrays).

    Written with ``out=`` so each round reuses two product buffers instead of allocating.
    """
    u64 = xp.uint64
    m0, m1, mask, shift = u64(_M0), u64(_M1), u64(_MASK32), u64(32)
    p0, p1 = xp.empty_like(c0), xp.empty_like(c0)
    for _ in range(ROUNDS):
        xp.multiply(c0, m0, out=p0)
        xp.multiply(c2, m1, out=p1)
        # (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
        xp.right_shift(p1, shift, out=c0)
        xp.bitwise_xor(c0, c1, out=c0)
        xp.bitwise_xor(c0, u64(k0), out=c0)
        xp.bitwise_and(p1, mask, out=c1)
        xp.right_shift(p0, shift, out=c2)
        xp.bitwise_xor(c2, c3, out=c2)
        xp.bitwise_xor(c2, u64(k1), out=c2)
        xp.bitwise_and(p0, mask, out=c3)
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def random_words(xp: Any, size: int, seed: int, counter: int) -> Any:
    """Return ``size`` uint32 random words (as uint64) for one dropout call."""
    groups = (size + 3) // 4
    index = xp.arange(groups, dtype=xp.uint64)
    c0 = index & xp.uint64(_MASK32)
    c1 = index >> xp.uint64(32)
    c2 = xp.full(groups, counter & _MASK32, dtype=xp.uint64)
    c3 = xp.full(groups, (counter >> 32) & _MASK32, dtype=xp.uint64)
    words = philox4x32(xp, c0, c1, c2, c3, seed & _MASK32, (seed >> 32) & _MASK32)
    out = xp.empty((groups, 4), dtype=xp.uint64)
    for column, word in enumerate(words):
        out[:, column] = word
    return out.reshape(-1)[:size]


def keep_threshold(keep: float) -> int:
    """Integer form of the float32 test ``(word >> 8) * 2**-24 < keep``.

    ``(word >> 8) * 2**-24`` is exact in float32, so the test equals
    ``(word >> 8) < float32(keep) * 2**24`` and, for integers, ``< ceil(...)``.
    """
    return math.ceil(float(np.float32(keep)) * 2.0**24)


def keep_mask(xp: Any, shape: tuple[int, ...], dropout: Dropout) -> Any:
    """Boolean mask of the elements that ``dropout`` keeps, in row-major order."""
    size = int(np.prod(shape))
    words = random_words(xp, size, dropout.seed, dropout.counter)
    words >>= xp.uint64(8)
    return (words < xp.uint64(keep_threshold(dropout.keep))).reshape(shape)
