"""Numba-compiled passes for the NumPy backend's elementwise work.

Each function here is one pass over memory doing what the NumPy reference in
:mod:`gpumlp.backends.numpy_backend` does in several: the bias + activation + dropout epilogue
(with Philox4x32-10 computed in the loop, bit for bit :mod:`gpumlp.dropout` and
``kernels/philox.cuh``), ``delta ⊙ phi'`` with the dropout mask, the L2 term of a weight
gradient, softmax + cross-entropy with its gradient, the Adam and SGD updates of the flat
parameter buffer with the step's whole L2 term folded in (``decay * W`` added to the weights'
gradients and ``sum W * W`` for the loss, in the pass that reads the weights anyway), and the
row gather of a minibatch.  Matrix products stay in BLAS.

Arithmetic rules that keep the results equal to the reference:

- every floating constant arrives as an argument of the arrays' dtype (the wrappers make them
  with ``dtype.type``): a Python literal in the loop would promote float32 work to float64;
- each expression rounds in the order the NumPy passes round (no ``fastmath``, so LLVM may
  not contract a multiply and an add into one FMA), so the update, the epilogues of relu,
  leaky relu, identity and hard limit, and every backward are exact; ``exp`` and ``tanh`` come
  from the C library instead of NumPy's SIMD code and may differ in the last bit, the
  loss sums rows in another order, and the L2 term's sum of squares is a float64 sum split
  over vector lanes (its function alone may reassociate) where the reference takes BLAS dot
  products in the parameters' dtype.

Importing this module imports Numba but compiles nothing: each function compiles on its first
call for the dtypes it meets, or loads from Numba's on-disk cache (``cache=True``: once per
machine).  :func:`compile_all` compiles every signature the backend uses, for a warm-up that
must not happen inside a timed region.

Threads: the kernels are serial and release the GIL (``nogil``), so the backend may split the
rows of one call over its own threads (:mod:`gpumlp.backends.threads`) without Numba's
threading layer (whose default, workqueue, may not be entered from two threads at once).
"""

from __future__ import annotations

import time

import numba
import numpy as np

from ..activations import CODES

IDENTITY, RELU, LEAKY_RELU = CODES["identity"], CODES["relu"], CODES["leaky_relu"]
SIGMOID, TANH, HARD_LIMIT = CODES["sigmoid"], CODES["tanh"], CODES["hard_limit"]

# Philox4x32-10 constants, typed: a mixed uint64 / int64 expression would become float64.
_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK32, _SHIFT32 = np.uint64(0xFFFFFFFF), np.uint64(32)

_jit = numba.njit(cache=True, nogil=True, error_model="numpy")
_inline = numba.njit(cache=True, nogil=True, inline="always", error_model="numpy")


# --------------------------------------------------------------------------------- Philox
@_inline
def _philox(group, call0, call1, key0, key1):
    """Philox4x32-10 of the counter ``(group low, group high, call0, call1)``."""
    c0, c1, c2, c3 = group & _MASK32, group >> _SHIFT32, call0, call1
    k0, k1 = key0, key1
    for _ in range(10):
        p0 = c0 * _M0  # both factors < 2**32: the 64-bit product is exact
        p1 = c2 * _M1
        c0, c1, c2, c3 = ((p1 >> _SHIFT32) ^ c1 ^ k0, p1 & _MASK32,
                          (p0 >> _SHIFT32) ^ c3 ^ k1, p0 & _MASK32)
        k0 = (k0 + _W0) & _MASK32
        k1 = (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


@_inline
def _keep_flags_edge(flags, origin, lo, hi, key0, key1, call0, call1, limit):
    """:func:`_keep_flags` for the few elements of groups cut by ``lo`` or ``hi``."""
    for g in range(lo >> 2, (hi + 3) >> 2):
        words = _philox(np.uint64(g), call0, call1, key0, key1)
        for j in range(4):
            i = 4 * g + j
            if lo <= i < hi:
                flags[i - origin] = words[j] < limit


@_inline
def _keep_flags(flags, origin, lo, hi, key0, key1, call0, call1, limit):
    """``flags[i - origin] = word(i) < limit`` for the elements ``lo <= i < hi`` of one
    dropout call: element ``i`` takes word ``i % 4`` of Philox on the group ``i // 4``.
    Whole groups go through a branch-free loop, which vectorises."""
    first, stop = (lo + 3) >> 2, hi >> 2  # the groups wholly inside [lo, hi)
    if first >= stop:
        _keep_flags_edge(flags, origin, lo, hi, key0, key1, call0, call1, limit)
        return
    _keep_flags_edge(flags, origin, lo, 4 * first, key0, key1, call0, call1, limit)
    whole = flags[4 * first - origin:4 * stop - origin]  # indices from 0: no wraparound test
    for j in range(stop - first):
        c0, c1, c2, c3 = _philox(np.uint64(first + j), call0, call1, key0, key1)
        whole[4 * j] = c0 < limit
        whole[4 * j + 1] = c1 < limit
        whole[4 * j + 2] = c2 < limit
        whole[4 * j + 3] = c3 < limit
    _keep_flags_edge(flags, origin, 4 * stop, hi, key0, key1, call0, call1, limit)


@_jit
def keep_flags(flags, first, key0, key1, call0, call1, limit):
    """The keep flags of elements ``first ..`` of one dropout call, into the flat boolean
    ``flags`` (``first`` lets disjoint ranges be filled separately)."""
    _keep_flags(flags, first, first, first + flags.shape[0], key0, key1, call0, call1, limit)


# ----------------------------------------------------------------------------- epilogue
@_inline
def _activate(z, act, zero, one, leaky):
    if act == RELU:
        return zero if z < zero else z  # NaN passes through, as np.maximum lets it
    if act == LEAKY_RELU:
        scaled = z * leaky
        return scaled if z < scaled else z
    if act == SIGMOID:
        return one / (np.exp(-z) + one)
    if act == TANH:
        return np.tanh(z)
    if act == HARD_LIMIT:
        return one if z >= zero else zero
    return z


@_inline
def _epilogue_row(row, b, keep, act, dropout, scale, zero, one, leaky):
    """``row = act(row + b)``, then ``* keep * scale``; the activation's branch is hoisted so
    each loop body is straight-line and vectorises."""
    m = row.shape[0]
    if act == RELU:
        for c in range(m):
            row[c] = _activate(row[c] + b[c], RELU, zero, one, leaky)
    elif act == LEAKY_RELU:
        for c in range(m):
            row[c] = _activate(row[c] + b[c], LEAKY_RELU, zero, one, leaky)
    elif act == SIGMOID:
        for c in range(m):
            row[c] = _activate(row[c] + b[c], SIGMOID, zero, one, leaky)
    elif act == TANH:
        for c in range(m):
            row[c] = _activate(row[c] + b[c], TANH, zero, one, leaky)
    elif act == HARD_LIMIT:
        for c in range(m):
            row[c] = _activate(row[c] + b[c], HARD_LIMIT, zero, one, leaky)
    else:
        for c in range(m):
            row[c] = row[c] + b[c]
    if dropout:  # inverted dropout as the reference rounds it: (A * mask) * (1 / keep)
        for c in range(m):
            row[c] = (row[c] * (one if keep[c] else zero)) * scale


@_jit
def bias_act(out, b, act, zero, one, leaky):
    """``out = act(out + b)`` in place (``out`` holds the product ``x @ w``)."""
    empty = np.empty(0, np.bool_)
    for r in range(out.shape[0]):
        _epilogue_row(out[r], b, empty, act, False, one, zero, one, leaky)


@_jit
def bias_act_dropout(out, b, act, keep, first, key0, key1, call0, call1, limit, scale, zero,
                     one, leaky):
    """:func:`bias_act`, then inverted dropout; ``keep`` (``out``'s shape) gets the keep
    flags, drawn row by row just before the row's epilogue uses them.  ``first`` is the
    index of ``out[0, 0]`` in the dropout call (rows may be done in separate calls)."""
    m = out.shape[1]
    for r in range(out.shape[0]):
        lo = first + r * m
        _keep_flags(keep[r], lo, lo, lo + m, key0, key1, call0, call1, limit)
        _epilogue_row(out[r], b, keep[r], act, True, scale, zero, one, leaky)


# ----------------------------------------------------------------------------- backward
@_inline
def _sign(u, zero, one):
    if u > zero:
        return one
    if u < zero:
        return -one
    if u == zero:
        return zero
    return u  # NaN stays NaN, as np.sign keeps it


@_inline
def _grad_span(d, a, o, keep, m, act, dropout, undrop, scale, zero, one, leaky, one_m_leaky):
    """``o = (delta ⊙ phi'(a * undrop))`` then ``* keep * scale``: the reference's order."""
    if act == RELU:
        for c in range(m):
            o[c] = d[c] * _sign(a[c] * undrop, zero, one)
    elif act == LEAKY_RELU:
        for c in range(m):
            s = _sign(a[c] * undrop, zero, one)
            s = zero if s < zero else s
            o[c] = d[c] * (s * one_m_leaky + leaky)
    elif act == SIGMOID:
        for c in range(m):
            u = a[c] * undrop
            o[c] = d[c] * ((one - u) * u)
    elif act == TANH:
        for c in range(m):
            u = a[c] * undrop
            o[c] = d[c] * (one - u * u)
    else:
        for c in range(m):
            o[c] = d[c]
    if dropout:
        for c in range(m):
            o[c] = (o[c] * (one if keep[c] else zero)) * scale


@_jit
def act_grad(delta, a, out, act, zero, one, leaky, one_m_leaky):
    """``out = delta ⊙ phi'(a)``; ``out`` may be ``delta``."""
    n, m = a.shape
    empty = np.empty(0, np.bool_)
    for r in range(n):
        _grad_span(delta[r], a[r], out[r], empty, m, act, False, one, one, zero, one, leaky,
                   one_m_leaky)


@_jit
def act_grad_dropout(delta, a, out, keep, act, undrop, scale, zero, one, leaky, one_m_leaky):
    """``out = delta ⊙ phi'(a * undrop) ⊙ keep * scale``; ``keep`` is the (n, m) mask."""
    n, m = a.shape
    for r in range(n):
        _grad_span(delta[r], a[r], out[r], keep[r], m, act, True, undrop, scale, zero, one,
                   leaky, one_m_leaky)


# In place (``delta`` is ``out``): one array for both, so LLVM sees a single pointer; given
# two names for the same memory, its overlap check sends the loop to the scalar version.
@_jit
def act_grad_in_place(out, a, act, zero, one, leaky, one_m_leaky):
    """:func:`act_grad` with ``delta`` and ``out`` the same array."""
    n, m = a.shape
    empty = np.empty(0, np.bool_)
    for r in range(n):
        _grad_span(out[r], a[r], out[r], empty, m, act, False, one, one, zero, one, leaky,
                   one_m_leaky)


@_jit
def act_grad_dropout_in_place(out, a, keep, act, undrop, scale, zero, one, leaky,
                              one_m_leaky):
    """:func:`act_grad_dropout` with ``delta`` and ``out`` the same array."""
    n, m = a.shape
    for r in range(n):
        _grad_span(out[r], a[r], out[r], keep[r], m, act, True, undrop, scale, zero, one,
                   leaky, one_m_leaky)


@_jit
def add_scaled(dw, w, factor):
    """``dw += w * factor`` (the L2 term of a weight gradient) over flat buffers."""
    for i in range(dw.shape[0]):
        dw[i] += w[i] * factor


# ------------------------------------------------------------------------------- losses
@_jit
def softmax_xent(z, b, t, h, inv_n, zero):
    """``z += b``; ``h = (softmax(z) - t) * inv_n``; returns ``sum t (logsumexp(z) - z)``
    (summed row by row in float64: the order differs from the reference's two dot
    products)."""
    n, m = z.shape
    loss = 0.0
    for r in range(n):
        zr, hr, tr = z[r], h[r], t[r]
        for c in range(m):
            zr[c] = zr[c] + b[c]
        top = zr[0]
        for c in range(1, m):
            top = zr[c] if zr[c] > top else top
        total = zero
        for c in range(m):
            hr[c] = np.exp(zr[c] - top)
            total += hr[c]
        log_norm = np.log(total) + top
        for c in range(m):
            hr[c] = (hr[c] / total - tr[c]) * inv_n
            # In float64: no overflow (Numba's float() of a float32 stays float32).
            loss += np.float64(tr[c]) * (np.float64(log_norm) - np.float64(zr[c]))
    return loss


# ---------------------------------------------------------------------------- optimizer
@_inline
def _flush(x, tiny, zero):
    """``x``, or zero where it is subnormal (NaN and infinities pass)."""
    return zero if abs(x) < tiny else x


@_inline
def _adam_range(p, g, m, v, lo, hi, decay, beta1, one_m_beta1, beta2, one_m_beta2, eps,
                lr_t, tiny, zero, decayed):
    """Adam on elements ``lo <= i < hi``, each product and sum rounded as the NumPy passes
    round; with ``decayed`` the gradient is ``g + p * decay`` (the L2 term, rounded as the
    reference adds it to the weight gradient), which is not written back.  A value stored
    below ``tiny`` (subnormal) is stored as zero, the step computed as the reference
    computes it; see :func:`adam`.  The loops index slices from
    0: an index Numba cannot prove non-negative gets a wraparound test that keeps LLVM from
    vectorising."""
    p, g, m, v = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
    if decayed:
        for i in range(p.shape[0]):
            gi = g[i] + p[i] * decay
            mi = m[i] * beta1 + gi * one_m_beta1
            vi = v[i] * beta2 + (gi * gi) * one_m_beta2
            m[i] = _flush(mi, tiny, zero)
            v[i] = _flush(vi, tiny, zero)
            p[i] = _flush(p[i] - (mi / (np.sqrt(vi) + eps)) * lr_t, tiny, zero)
    else:
        for i in range(p.shape[0]):
            gi = g[i]
            mi = m[i] * beta1 + gi * one_m_beta1
            vi = v[i] * beta2 + (gi * gi) * one_m_beta2
            m[i] = _flush(mi, tiny, zero)
            v[i] = _flush(vi, tiny, zero)
            p[i] = _flush(p[i] - (mi / (np.sqrt(vi) + eps)) * lr_t, tiny, zero)


@_inline
def _sgd_range(p, g, velocity, lo, hi, decay, lr, momentum, nesterov, tiny, zero, decayed):
    """SGD with (Nesterov) momentum on ``lo <= i < hi``, rounded as the NumPy passes; the
    gradient is ``g + p * decay`` where ``decayed``; subnormal results stored as zero."""
    p, g, velocity = p[lo:hi], g[lo:hi], velocity[lo:hi]
    n = p.shape[0]
    if nesterov and decayed:
        for i in range(n):
            step = (g[i] + p[i] * decay) * lr
            vel = velocity[i] * momentum - step
            velocity[i] = _flush(vel, tiny, zero)
            p[i] = _flush((p[i] - step) + vel * momentum, tiny, zero)
    elif nesterov:
        for i in range(n):
            step = g[i] * lr
            vel = velocity[i] * momentum - step
            velocity[i] = _flush(vel, tiny, zero)
            p[i] = _flush((p[i] - step) + vel * momentum, tiny, zero)
    elif decayed:
        for i in range(n):
            vel = velocity[i] * momentum - (g[i] + p[i] * decay) * lr
            velocity[i] = _flush(vel, tiny, zero)
            p[i] = _flush(p[i] + vel, tiny, zero)
    else:
        for i in range(n):
            vel = velocity[i] * momentum - g[i] * lr
            velocity[i] = _flush(vel, tiny, zero)
            p[i] = _flush(p[i] + vel, tiny, zero)


#: Elements of the weights done per block: their sum of squares, then their update, while
#: the block is in the L1 cache (16 kB in float32).
L2_BLOCK = 4096


# Reassociation lets LLVM split the sum over vector lanes (in strict order a reduction stays
# scalar); the flag is on this function's instructions only, never on an update's.
@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _sum_squares(p, lo, hi):
    block = p[lo:hi]
    total = 0.0
    for i in range(block.shape[0]):
        x = np.float64(block[i])
        total += x * x
    return total


@_jit
def adam(p, g, m, v, lo, hi, spans, decay, beta1, one_m_beta1, beta2, one_m_beta2, eps,
         lr_t, tiny):
    """Adam on ``p[lo:hi]`` of the flat buffer, with the L2 term folded in: inside the
    weight ``spans`` (an ``(k, 2)`` table of sorted, disjoint ``(offset, size)``) the gradient
    is ``g + decay * p``.  Returns the sum of squares of those weights (before the update,
    in float64), the loss's L2 term; biases and alignment gaps get the plain update.

    A parameter, ``m`` or ``v`` that would be stored below ``tiny`` (the dtype's smallest
    normal number) is stored as zero: weights whose only gradient is the L2 term (those of
    input pixels that are always zero) and the moments of dead units decay into the
    subnormal range, where every multiply costs a microcode assist on x86 (the epochs of
    the default recipe grew from 1.5 to 2.0 s as about 2,900 weights went subnormal) and
    BLAS pays it again on each product."""
    zero = tiny - tiny
    total = 0.0
    pos = lo
    for k in range(spans.shape[0]):
        first = max(spans[k, 0], lo)
        stop = min(spans[k, 0] + spans[k, 1], hi)
        if stop <= first:
            continue
        _adam_range(p, g, m, v, pos, first, decay, beta1, one_m_beta1, beta2, one_m_beta2,
                    eps, lr_t, tiny, zero, False)
        for block in range(first, stop, L2_BLOCK):
            end = min(block + L2_BLOCK, stop)
            total += _sum_squares(p, block, end)
            _adam_range(p, g, m, v, block, end, decay, beta1, one_m_beta1, beta2,
                        one_m_beta2, eps, lr_t, tiny, zero, True)
        pos = stop
    _adam_range(p, g, m, v, pos, hi, decay, beta1, one_m_beta1, beta2, one_m_beta2, eps,
                lr_t, tiny, zero, False)
    return total


@_jit
def sgd(p, g, velocity, lo, hi, spans, decay, lr, momentum, nesterov, tiny):
    """SGD with (Nesterov) momentum on ``p[lo:hi]``, the L2 term folded in and subnormal
    results stored as zero as in :func:`adam`; returns the weights' sum of squares before
    the update."""
    zero = tiny - tiny
    total = 0.0
    pos = lo
    for k in range(spans.shape[0]):
        first = max(spans[k, 0], lo)
        stop = min(spans[k, 0] + spans[k, 1], hi)
        if stop <= first:
            continue
        _sgd_range(p, g, velocity, pos, first, decay, lr, momentum, nesterov, tiny, zero,
                   False)
        for block in range(first, stop, L2_BLOCK):
            end = min(block + L2_BLOCK, stop)
            total += _sum_squares(p, block, end)
            _sgd_range(p, g, velocity, block, end, decay, lr, momentum, nesterov, tiny,
                       zero, True)
        pos = stop
    _sgd_range(p, g, velocity, pos, hi, decay, lr, momentum, nesterov, tiny, zero, False)
    return total


# --------------------------------------------------------------------------------- data
@_jit
def gather_rows(src, index, out):
    """``out[i] = src[index[i]]`` (indices already checked by the caller)."""
    n, m = out.shape
    for i in range(n):
        row, dst = src[index[i]], out[i]
        for c in range(m):
            dst[c] = row[c]


# ------------------------------------------------------------------------------ warm-up
KERNELS = (bias_act, bias_act_dropout, keep_flags, act_grad, act_grad_dropout,
           act_grad_in_place, act_grad_dropout_in_place, add_scaled, softmax_xent, adam, sgd,
           gather_rows)


def compile_all() -> dict:
    """Run every kernel once per dtype the backend uses (float32, float64), compiling each
    or loading it from Numba's on-disk cache.  Returns the seconds taken and how many
    signatures were compiled (``cache_misses``) or loaded (``cache_hits``)."""
    start = time.perf_counter()
    u64 = np.uint64
    philox = (u64(1), u64(2), u64(3), u64(4), u64(1 << 31))
    for dtype in (np.float32, np.float64):
        dt = np.dtype(dtype).type
        one, zero, half = dt(1), dt(0), dt(0.5)
        out, b = np.zeros((2, 3), dtype), np.zeros(3, dtype)
        keep = np.zeros((2, 3), np.bool_)
        flat = out.reshape(-1)
        bias_act(out, b, RELU, zero, one, half)
        bias_act_dropout(out, b, RELU, keep, 0, *philox, one, zero, one, half)
        act_grad(out, out, out, RELU, zero, one, half, half)
        act_grad_dropout(out, out, out, keep, RELU, one, one, zero, one, half, half)
        act_grad_in_place(out, out, RELU, zero, one, half, half)
        act_grad_dropout_in_place(out, out, keep, RELU, one, one, zero, one, half, half)
        add_scaled(flat, flat, half)
        softmax_xent(out, b, out, np.empty_like(out), half, zero)
        spans = np.array([[0, 2]], np.int64)
        tiny = dt(np.finfo(dtype).tiny)
        adam(flat, flat, flat, flat, 0, flat.shape[0], spans, half, half, half, half, half,
             half, half, tiny)
        sgd(flat, flat, flat, 0, flat.shape[0], spans, half, half, half, True, tiny)
        gather_rows(out, np.zeros(2, np.int64), np.empty_like(out))
    keep_flags(keep.reshape(-1), 0, *philox)
    hits = sum(sum(k.stats.cache_hits.values()) for k in KERNELS)
    misses = sum(sum(k.stats.cache_misses.values()) for k in KERNELS)
    return {"seconds": time.perf_counter() - start, "cache_hits": hits,
            "cache_misses": misses}
