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
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
ROUNDS = 10
#: Product buffers are read back as (low, high) uint32 pairs.
_LITTLE_ENDIAN = sys.byteorder == "little"


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
    if xp is np and _LITTLE_ENDIAN:
        flags = np.empty(4 * ((size + 3) // 4), dtype=bool)
        fill_keep_flags(flags, 0, dropout)
        return flags[:size].reshape(shape)
    words = random_words(xp, size, dropout.seed, dropout.counter)
    words >>= xp.uint64(8)
    return (words < xp.uint64(keep_threshold(dropout.keep))).reshape(shape)


def fill_keep_flags(out: np.ndarray, first_group: int, dropout: Dropout) -> None:
    """Write the keep flags of groups ``first_group ..`` into ``out`` (NumPy, in place).

    ``out`` is a contiguous boolean vector of ``4 * groups`` flags: element ``4 * g + j`` of
    the dropout call, for ``g`` from ``first_group``.  Disjoint group ranges may be filled
    by different threads.  Bit for bit :func:`keep_mask`'s generic path, in fewer passes:

    - products go to a uint64 buffer read back as (low, high) uint32 word pairs, so no
      shift or mask splits them;
    - the first three rounds run partly on scalars: the counter words ``c1`` (the group
      index's high word, zero below 2**32 groups), ``c2`` and ``c3`` (the call counter) are
      the same for every group, and that uniformity takes three rounds to wear off;
    - a flag is ``word < threshold * 256`` (``(word >> 8) < threshold`` for integers),
      compared straight into ``out``.
    """
    groups = out.shape[0] // 4 if out.ndim == 1 else 0
    if (out.dtype != np.bool_ or out.ndim != 1 or out.shape[0] != 4 * groups
            or not out.flags.c_contiguous):
        raise ValueError(f"out: a contiguous boolean vector of a multiple of 4 flags is "
                         f"required, got dtype {out.dtype}, shape {out.shape}")
    if groups == 0:
        return
    limit = keep_threshold(dropout.keep) << 8
    flags = out.reshape(groups, 4)
    if limit > _MASK32:  # keep = 1: every word passes
        flags.fill(True)
        return
    if not _LITTLE_ENDIAN or first_group + groups > 1 << 32:  # c1 varies too: generic path
        words = random_words(np, 4 * (first_group + groups), dropout.seed, dropout.counter)
        np.less(words[4 * first_group:], np.uint64(limit), out=out)
        return
    words = _philox_groups(first_group, groups, dropout.seed, dropout.counter)
    for column, word in enumerate(words):
        np.less(word, np.uint32(limit), out=flags[:, column])


def _philox_groups(first: int, groups: int, seed: int, counter: int) -> tuple:
    """Philox4x32-10 of the counters ``(g, 0, counter low, counter high)`` for ``g`` in
    ``first .. first + groups - 1`` (``first + groups <= 2**32``): four uint32 arrays."""
    u32, u64 = np.uint32, np.uint64
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    # Two product buffers per lane, alternating: a round reads the low words of the previous
    # round's products (its c1 and c3) while writing its own.
    prod0 = [np.empty(2 * groups, u32) for _ in range(2)]
    prod1 = [np.empty(2 * groups, u32) for _ in range(2)]
    mult0, mult2 = np.empty(groups, u64), np.empty(groups, u64)  # c0 and c2, widened
    c0, c2 = np.empty(groups, u32), np.empty(groups, u32)

    def low(words: np.ndarray) -> np.ndarray:
        return words[0::2]

    def high(words: np.ndarray) -> np.ndarray:
        return words[1::2]

    # Round 1: c0 = g varies; c1 = 0, c2 and c3 are scalars.
    p1 = (counter & _MASK32) * _M1
    s_c0, s_c1 = ((p1 >> 32) ^ k0) & _MASK32, p1 & _MASK32
    np.multiply(np.arange(first, first + groups, dtype=u64), u64(_M0), out=prod0[0].view(u64))
    np.bitwise_xor(high(prod0[0]), u32(((counter >> 32) & _MASK32) ^ k1), out=c2)
    mult2[...] = c2
    c3 = low(prod0[0])
    k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    # Round 2: c0 and c1 are scalars; c2 and c3 vary.
    p0 = s_c0 * _M0
    np.multiply(mult2, u64(_M1), out=prod1[0].view(u64))
    np.bitwise_xor(high(prod1[0]), u32(s_c1 ^ k0), out=c0)
    np.bitwise_xor(c3, u32(((p0 >> 32) ^ k1) & _MASK32), out=c2)
    mult0[...] = c0
    mult2[...] = c2
    c1, s_c3 = low(prod1[0]), p0 & _MASK32
    k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    # Round 3: c3 is still a scalar.
    np.multiply(mult0, u64(_M0), out=prod0[1].view(u64))
    np.multiply(mult2, u64(_M1), out=prod1[1].view(u64))
    np.bitwise_xor(high(prod1[1]), c1, out=c0)
    c0 ^= u32(k0)
    np.bitwise_xor(high(prod0[1]), u32(s_c3 ^ k1), out=c2)
    mult0[...] = c0
    mult2[...] = c2
    c1, c3 = low(prod1[1]), low(prod0[1])
    k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    for round_ in range(3, ROUNDS):
        buf0, buf1 = prod0[(round_ + 1) & 1], prod1[(round_ + 1) & 1]
        np.multiply(mult0, u64(_M0), out=buf0.view(u64))
        np.multiply(mult2, u64(_M1), out=buf1.view(u64))
        np.bitwise_xor(high(buf1), c1, out=c0)
        c0 ^= u32(k0)
        np.bitwise_xor(high(buf0), c3, out=c2)
        c2 ^= u32(k1)
        if round_ < ROUNDS - 1:
            mult0[...] = c0
            mult2[...] = c2
        c1, c3 = low(buf1), low(buf0)
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return c0, c1, c2, c3
