"""The early-stopping validation split of a classifier's training data: a stratified share
of the rows, drawn from a legacy ``RandomState`` in the order scikit-learn's
``StratifiedShuffleSplit`` draws, so a seeded split is the same rows as scikit-learn's."""

from __future__ import annotations

import math

import numpy as np


def stratified_holdout(y: np.ndarray, fraction: float, rng: np.random.RandomState,
                       option: str = "validation_fraction") -> np.ndarray:
    """Boolean mask of ``ceil(fraction * len(y))`` rows to hold out, each class in
    proportion to its frequency, every class on both sides; ``option`` names the fraction
    in the error.

    Raises
    ------
    ValueError
        If a class has a single row, or either side would have fewer rows than classes.
    """
    n_val = math.ceil(fraction * len(y))
    n_train = len(y) - n_val
    labels, index, counts = np.unique(y, return_inverse=True, return_counts=True)
    if n_val < len(labels) or n_train < len(labels) or counts.min() < 2:
        raise ValueError(f"{option}={fraction} cannot hold out a stratified {n_val} of "
                         f"{len(y)} samples ({len(labels)} classes, the rarest with "
                         f"{counts.min()}): every class needs a sample on each side; change "
                         f"{option} or add samples")
    members = np.split(np.argsort(index, kind="stable"), np.cumsum(counts)[:-1])
    train_counts = _apportion(counts, n_train, rng)
    val_counts = _apportion(counts - train_counts, n_val, rng)
    train, val = [], []
    for rows, n_t, n_v in zip(members, train_counts, val_counts):
        rows = rows[rng.permutation(len(rows))]
        train.extend(rows[:n_t])
        val.extend(rows[n_t:n_t + n_v])
    rng.permutation(train), rng.permutation(val)  # the split's last draws (stream order)
    mask = np.zeros(len(y), dtype=np.bool_)
    mask[np.asarray(val, dtype=np.int64)] = True
    return mask


def _apportion(counts: np.ndarray, total: int, rng: np.random.RandomState) -> np.ndarray:
    """``total`` draws shared among classes of ``counts`` in proportion, rounded down, the
    rest going to the largest remainders (ties broken at random)."""
    exact = counts / counts.sum() * total
    shares = np.floor(exact)
    missing = int(total - shares.sum())
    remainder = exact - shares
    for value in np.sort(np.unique(remainder))[::-1]:
        if missing <= 0:
            break
        tied = np.flatnonzero(remainder == value)
        chosen = rng.choice(tied, size=min(len(tied), missing), replace=False)
        shares[chosen] += 1
        missing -= len(chosen)
    return shares.astype(int)
