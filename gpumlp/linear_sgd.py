"""One epoch of stochastic gradient descent for a linear binary classifier with the
perceptron loss, with the arithmetic of scikit-learn's plain SGD (``loss="perceptron"``,
constant step ``eta0``), so that :class:`gpumlp.Perceptron` reproduces its fits.

Per sample ``x`` with label ``y`` in {-1, +1}: ``p = w . x + b``; when ``y * p <= 0`` the
update is ``eta0 * y * class_weight * sample_weight``, added to ``w`` (times ``x``) and to
``b`` (times the intercept decay: 1 for dense data, 0.01 for sparse).  An L2 part shrinks
``w`` by ``1 - (1 - l1_ratio) * eta0 * alpha`` before the update (kept as a scale factor, so a
step costs the nonzeros of ``x`` only); an L1 part is the cumulative truncated gradient of
Tsuruoka et al. (2009), applied to the features ``x`` touches.  The epoch's visiting order is
a Fisher-Yates shuffle driven by a 32-bit xorshift generator from a fixed seed, the same
permutation applied again each epoch.

The rule is sequential (each update depends on the previous one), so it runs on the host
whatever backend the rest of gpumlp uses.  Numba (a dependency) compiles the epoch once and
caches it on disk; where Numba is missing the same function runs as Python, correct but about
a thousand times slower.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import numpy as np

#: Penalty codes, scikit-learn's numbering.
PENALTY_CODES = {None: 0, "l1": 1, "l2": 2, "elasticnet": 3}
#: Intercept decay for sparse data (updates to the intercept are damped, as scikit-learn does).
SPARSE_INTERCEPT_DECAY = 0.01

# Slots of the float64 state vector an epoch reads and updates in place.
INTERCEPT, WSCALE, SQ_NORM, L1_NORM, U, T, SUM_LOSS, OBJECTIVE = range(8)
STATE_SIZE = 8
_WSCALE_FLOOR = 1e-9  # below this the scale is folded into the weights


def _epoch(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, dense: bool,
           y: np.ndarray, sample_weight: np.ndarray, order: np.ndarray, shuffle_seed: int,
           held_out: np.ndarray, w: np.ndarray, q: np.ndarray, state: np.ndarray,
           penalty: int, alpha: float, l1_ratio: float, eta: float, weight_pos: float,
           weight_neg: float, fit_intercept: bool, intercept_decay: float,
           track_loss: bool) -> None:
    """One epoch over the rows ``order`` holds (shuffled first when ``shuffle_seed >= 0``),
    skipping rows where ``held_out`` is set.  Row ``i`` is ``data[indptr[i]:indptr[i+1]]``,
    at columns ``indices[...]`` (sparse) or ``0, 1, ...`` (``dense``).  ``w``, ``q`` (the L1
    penalty already applied per feature), ``order`` and ``state`` are updated in place."""
    if shuffle_seed >= 0:
        seed = shuffle_seed if shuffle_seed != 0 else 1
        n = order.shape[0]
        for i in range(n - 1):
            seed ^= (seed << 13) & 0xFFFFFFFF
            seed ^= seed >> 17
            seed ^= (seed << 5) & 0xFFFFFFFF
            j = i + (seed % 2147483648) % (n - i)
            order[i], order[j] = order[j], order[i]
    intercept, wscale = state[INTERCEPT], state[WSCALE]
    sq_norm, l1_norm, u, t = state[SQ_NORM], state[L1_NORM], state[U], state[T]
    sum_loss = 0.0
    objective = 0.0
    shrink = max(0.0, 1.0 - (1.0 - l1_ratio) * eta * alpha)
    for position in range(order.shape[0]):
        row = order[position]
        if held_out[row]:
            continue
        start, stop = indptr[row], indptr[row + 1]
        p = 0.0
        if dense:  # separate loops: the column is the offset, no index to load
            for k in range(start, stop):
                p += w[k - start] * data[k]
        else:
            for k in range(start, stop):
                p += w[indices[k]] * data[k]
        p = p * wscale + intercept
        label = y[row]
        margin = p * label
        if track_loss:
            loss = -margin if margin <= 0.0 else 0.0
            sum_loss += loss
            objective += loss
            if penalty > 0:
                objective += alpha * ((1.0 - l1_ratio) * 0.5 * math.sqrt(sq_norm) ** 2
                                      + l1_ratio * l1_norm)
        class_weight = weight_pos if label > 0.0 else weight_neg
        update = eta * label if margin <= 0.0 else 0.0
        update *= class_weight * sample_weight[row]
        if penalty >= 2:  # an L2 part: shrink by a scale factor, folded in when tiny
            wscale *= shrink
            sq_norm *= shrink * shrink
            l1_norm *= abs(shrink)
            if wscale < _WSCALE_FLOOR:
                for column in range(w.shape[0]):
                    w[column] *= wscale
                wscale = 1.0
        if update != 0.0:
            step = update / wscale
            squares = 0.0
            absolutes = 0.0
            if dense:
                for k in range(start, stop):
                    w[k - start] += data[k] * step
                for k in range(start, stop):
                    squares += w[k - start] * w[k - start]
                    absolutes += abs(w[k - start])
            else:
                for k in range(start, stop):
                    column = indices[k]
                    w[column] += data[k] * step
                    squares += w[column] * w[column]
                    absolutes += abs(w[column])
            sq_norm = squares * (wscale * wscale)
            l1_norm = absolutes * wscale
            if fit_intercept:
                intercept += update * intercept_decay
        if penalty == 1 or penalty == 3:  # an L1 part: truncate towards zero
            u += l1_ratio * eta * alpha
            for k in range(start, stop):
                column = k - start if dense else indices[k]
                before = w[column]
                if wscale * before > 0.0:
                    w[column] = max(0.0, before - (u + q[column]) / wscale)
                elif wscale * before < 0.0:
                    w[column] = min(0.0, before + (u - q[column]) / wscale)
                q[column] += wscale * (w[column] - before)
        t += 1.0
    state[INTERCEPT], state[WSCALE] = intercept, wscale
    state[SQ_NORM], state[L1_NORM], state[U], state[T] = sq_norm, l1_norm, u, t
    state[SUM_LOSS], state[OBJECTIVE] = sum_loss, objective


@functools.lru_cache(maxsize=None)
def epoch_function() -> Callable:
    """The epoch compiled by Numba (no GIL, cached on disk) when Numba is installed, else
    the Python function itself.  Numba is imported on the first call, not with gpumlp."""
    try:
        import numba
    except ImportError:
        return _epoch
    return numba.njit(cache=True, nogil=True)(_epoch)


#: The same epoch as plain Python (the reference the compiled one is tested against).
run_epoch_python = _epoch


class RowData:
    """``X`` as the flat arrays an epoch reads: CSR parts for a sparse matrix, the row-major
    buffer for a dense array (no copy when it is already C-ordered float64)."""

    def __init__(self, X: Any, sparse: bool):
        if sparse:
            self.data = np.ascontiguousarray(X.data, dtype=np.float64)
            self.indices = np.ascontiguousarray(X.indices, dtype=np.int64)
            self.indptr = np.ascontiguousarray(X.indptr, dtype=np.int64)
        else:
            X = np.ascontiguousarray(X, dtype=np.float64)
            self.data = X.reshape(-1)
            self.indices = np.zeros(0, dtype=np.int64)
            self.indptr = np.arange(X.shape[0] + 1, dtype=np.int64) * X.shape[1]
        self.dense = not sparse
        self.intercept_decay = SPARSE_INTERCEPT_DECAY if sparse else 1.0


def new_state(w: np.ndarray, intercept: float, t: float) -> np.ndarray:
    """The state at the start of a fit of one binary problem from weights ``w``."""
    state = np.zeros(STATE_SIZE)
    state[INTERCEPT], state[WSCALE], state[T] = intercept, 1.0, t
    state[SQ_NORM], state[L1_NORM] = float(w @ w), float(np.abs(w).sum())
    return state


def fold_scale(w: np.ndarray, state: np.ndarray) -> None:
    """Multiply the scale factor into ``w`` (the true weights), and reset it to 1."""
    w *= state[WSCALE]
    state[WSCALE] = 1.0
