"""Run every CUDA kernel on the CPU (tests/kernels/harness.cpp) against the NumPy reference.

The reference is the generic implementation in ``gpumlp.backends.base.Backend`` with NumPy.
Every buffer sits between NaN guard bands: out-of-bounds reads turn results into NaN and
out-of-bounds writes change the guards.  Outputs start as NaN, so unwritten elements fail.
Tolerances: float64 rtol 1e-12; float32 rtol 1e-5 (sums accumulate in a different order
than NumPy's BLAS and pairwise sums), both with atol = rtol * max(1, max |reference|).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from gpumlp import activations
from gpumlp.backends.cuda import kernels, plan as gemm_plan
from gpumlp.backends.base import Backend
from gpumlp.dropout import Dropout, keep_mask

pytestmark = pytest.mark.kernels

REF = Backend(np)
DTYPES = (np.float64, np.float32)
RTOL = {np.float64: 1e-12, np.float32: 1e-5}
ACT_NAMES = {code: name for name, code in activations.CODES.items()}
FORWARD_ACTS = kernels.KERNELS["gemm_bias_act"].acts
BACKWARD_ACTS = kernels.KERNELS["gemm_backprop_act"].acts
#: (rows, cols) of elementwise and row kernels; 97 rows is a multiple of no tile or group.
SHAPES = [(1, 1), (3, 5), (17, 33), (65, 129), (130, 257), (97, 10)]
#: (n, k, m) of the GEMMs: output (n, m) or (n, k) etc., inner sizes not multiples of 16.
GEMM_SHAPES = [(1, 1, 1), (3, 7, 5), (17, 19, 33), (65, 31, 129), (130, 65, 257),
               (97, 100, 10)]
#: Seed and call counter above 2**32, so both halves of Philox's key and counter matter.
SEED, COUNTER_BASE, COUNTER_OFFSET, KEEP = 0x1234_5678_9ABC_DEF0, 2**33 + 5, 3, 0.75
GUARD = 37


def rng_for(*params) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(params).encode()))


class Guarded:
    """Arrays carved from the middle of NaN-guarded buffers; check() verifies the guards.

    The guard of GUARD elements leaves the arrays off 16-byte boundaries, so kernels take
    their scalar paths; ``aligned=True`` widens it to put every array on a 16-byte boundary
    (the vector paths)."""

    def __init__(self, aligned=False):
        self.buffers = []
        self.aligned = aligned

    def array(self, shape, dtype, values=None) -> np.ndarray:
        size = int(np.prod(shape))
        full = np.full(size + 2 * GUARD + 16, np.nan, dtype=dtype)
        start = GUARD
        while self.aligned and (full.ctypes.data + start * full.itemsize) % 16:
            start += 1
        inner = full[start:start + size].reshape(shape)
        assert not self.aligned or inner.ctypes.data % 16 == 0
        if values is not None:
            inner[...] = values
        self.buffers.append((full, full.copy(), start, size))
        return inner

    def check(self):
        for full, original, start, size in self.buffers:
            for sl in (slice(0, start), slice(start + size, None)):
                assert full[sl].tobytes() == original[sl].tobytes(), "write out of bounds"


def random(rng, shape, dtype, scale=1.0):
    x = rng.normal(0.0, scale, size=shape)
    x[np.abs(x) < 1e-3] = 1e-3  # never zero: a zero would hide a dropped or skipped element
    return x.astype(dtype)


def assert_matches(got, want, dtype, dropout=False):
    rtol = RTOL[dtype]
    assert np.isfinite(got).all() == np.isfinite(want).all(), "element left unwritten"
    if dropout:  # the dropout mask must match exactly, so must the pattern of zeros
        np.testing.assert_array_equal(got == 0, want == 0)
    atol = rtol * max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


def dropout_args(dtype, dropout):
    """Kernel arguments of a dropout call, and the matching reference Dropout (or None)."""
    counter = np.array([COUNTER_BASE], dtype=np.int64)
    args = dict(keep=dtype(KEEP), seed=np.uint64(SEED), counter_base=counter,
                counter_offset=COUNTER_OFFSET)
    return args, (Dropout(KEEP, SEED, COUNTER_BASE + COUNTER_OFFSET) if dropout else None)


# ------------------------------------------------------------------------------ GEMMs
def gemm_launch(host, kernel, dtype, M, N, K, tile, splits, grid, **kwargs):
    """Launch a GEMM with the plan for (tile, splits), its split-K scratch and grid; check
    that the tile counters are left zeroed (the next launch or graph replay relies on it)."""
    plan = gemm_plan.choose(kernel, dtype, M, N, K, tile=tile, splits=splits)
    workspace = counters = None
    if plan.splits > 1:
        # NaN, not zeros: a partial read before it is written poisons the result.
        workspace = np.full(plan.workspace_size, np.nan, dtype=dtype)
        counters = np.zeros(plan.counter_size, dtype=np.int32)
    launch_grid = plan.grid if grid is None else (*grid[:2], plan.splits)
    host.launch(kernel, dtype, launch_grid, plan.block, tile=plan.tile, workspace=workspace,
                tile_counters=counters, **kwargs)
    if counters is not None:
        assert not counters.any(), "split-K tile counters not reset"


def check_gemm_bias_act(host, n, k, m, act, dropout, dtype, grid=None, tile=0, splits=1,
                       aligned=False):
    rng, g = rng_for("fwd", n, k, m, act, dropout, dtype), Guarded(aligned)
    x, w = g.array((n, k), dtype, random(rng, (n, k), dtype)), g.array((k, m), dtype,
                                                                       random(rng, (k, m), dtype, 0.3))
    b, out = g.array((m,), dtype, random(rng, (m,), dtype)), g.array((n, m), dtype)
    args, drop = dropout_args(dtype, dropout)
    gemm_launch(host, "gemm_bias_act", dtype, n, m, k, tile, splits, grid, act=act,
                dropout=dropout, out=out, x=x, w=w, b=b, n=n, k=k, m=m, **args)
    want = REF.affine_act(x, w, b, ACT_NAMES[act], np.empty_like(out), dropout=drop,
                          precision=kernels.GEMM_TILE_PRECISION[tile])
    assert_matches(out, want, dtype, dropout)
    g.check()
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("act", FORWARD_ACTS)
@pytest.mark.parametrize("n,k,m", GEMM_SHAPES)
def test_gemm_bias_act(host, n, k, m, act, dropout, dtype):
    check_gemm_bias_act(host, n, k, m, act, dropout, dtype)


def check_gemm_backprop_act(host, n, k, m, act, dropout, dtype, grid=None, tile=0, splits=1,
                           aligned=False):
    rng, g = rng_for("bwd", n, k, m, act, dropout, dtype), Guarded(aligned)
    h_next = g.array((n, m), dtype, random(rng, (n, m), dtype))
    w_next = g.array((k, m), dtype, random(rng, (k, m), dtype, 0.3))
    a = g.array((n, k), dtype, rng.uniform(-0.95, 0.95, (n, k)))
    out = g.array((n, k), dtype)
    args, drop = dropout_args(dtype, dropout)
    gemm_launch(host, "gemm_backprop_act", dtype, n, k, m, tile, splits, grid, act=act,
                dropout=dropout, out=out, h_next=h_next, w_next=w_next, a=a, n=n, k=k, m=m,
                **args)
    want = REF.backprop_hidden(h_next, w_next, a, ACT_NAMES[act], np.empty_like(out), drop,
                               precision=kernels.GEMM_TILE_PRECISION[tile])
    assert_matches(out, want, dtype, dropout)
    g.check()
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("act", BACKWARD_ACTS)
@pytest.mark.parametrize("n,k,m", GEMM_SHAPES)
def test_gemm_backprop_act(host, n, k, m, act, dropout, dtype):
    check_gemm_backprop_act(host, n, k, m, act, dropout, dtype)


def check_gemm_weight_grads(host, n, k, m, decay, dtype, grid=None, tile=0, splits=1,
                           aligned=False):
    rng, g = rng_for("wgrad", n, k, m, decay, dtype), Guarded(aligned)
    a_prev = g.array((n, k), dtype, random(rng, (n, k), dtype))
    h = g.array((n, m), dtype, random(rng, (n, m), dtype))
    w = g.array((k, m), dtype, random(rng, (k, m), dtype))
    dw, db = g.array((k, m), dtype), g.array((m,), dtype)
    # Without decay w must not be read: pass a null pointer.
    gemm_launch(host, "gemm_weight_grads", dtype, k, m, n, tile, splits, grid, dw=dw, db=db,
                a_prev=a_prev, h=h, w=w if decay else None, n=n, k=k, m=m, decay=dtype(decay))
    want_dw, want_db = np.empty_like(dw), np.empty_like(db)
    REF.weight_grads(a_prev, h, want_dw, want_db, w, decay,
                     precision=kernels.GEMM_TILE_PRECISION[tile])
    assert_matches(dw, want_dw, dtype)
    assert_matches(db, want_db, dtype)
    g.check()
    return dw, db


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decay", [0.0, 0.01])
@pytest.mark.parametrize("n,k,m", GEMM_SHAPES)
def test_gemm_weight_grads(host, n, k, m, decay, dtype):
    check_gemm_weight_grads(host, n, k, m, decay, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("grid", [(1, 1, 1), (2, 2, 1)])
def test_gemms_stride_over_tiles_with_a_small_grid(host, grid, dtype):
    n, k, m = GEMM_SHAPES[4]
    check_gemm_bias_act(host, n, k, m, activations.CODES["tanh"], True, dtype, grid=grid)
    check_gemm_backprop_act(host, n, k, m, activations.CODES["sigmoid"], True, dtype, grid=grid)
    check_gemm_weight_grads(host, n, k, m, 0.01, dtype, grid=grid)


#: Every (dtype, tile) instantiated, each with one split and with split-K.
GEMM_VARIANTS = [(np.dtype(d).type, tile, splits)
                 for d, tiles in kernels.GEMM_TILES_BY_DTYPE.items() for tile in tiles
                 for splits in (1, 3)]
#: (n, k, m): odd sizes (scalar copies, partial tiles and a last split of 1 of 16 k), and
#: multiples of 4 with aligned arrays (16-byte vector copies and stores); inner sizes of
#: 65 / 68 / 33 k give splits of [32, 32, 1] / [32, 32, 4] / [16, 16, 1].
VARIANT_SHAPES = [((130, 65, 37), False), ((68, 68, 132), True), ((33, 33, 10), False),
                  ((36, 20, 12), True)]


@pytest.mark.parametrize("shape,aligned", VARIANT_SHAPES)
@pytest.mark.parametrize("dtype,tile,splits", GEMM_VARIANTS)
def test_gemm_tile_and_split_variants(host, dtype, tile, splits, shape, aligned):
    """Every tile and split-K variant of the three GEMMs, on the vector and scalar paths."""
    n, k, m = shape
    common = dict(tile=tile, splits=splits, aligned=aligned)
    check_gemm_bias_act(host, n, k, m, activations.CODES["tanh"], True, dtype, **common)
    check_gemm_bias_act(host, n, k, m, activations.CODES["relu"], False, dtype, **common)
    if tile in kernels.gemm_tiles("gemm_backprop_act", dtype):  # its output is never thin
        check_gemm_backprop_act(host, n, k, m, activations.CODES["sigmoid"], True, dtype,
                                **common)
    check_gemm_weight_grads(host, n, k, m, 0.01, dtype, **common)
    check_gemm_weight_grads(host, n, k, m, 0.0, dtype, **common)


@pytest.mark.parametrize("tile", kernels.GEMM_TILES_BY_DTYPE["float32"])
def test_split_k_is_deterministic_and_small_grids_stride(host, tile):
    """The same split-K launch gives the same bits every time (partials are added in split
    order whichever block arrives last), also when a small grid strides over the tiles."""
    n, k, m = 70, 90, 40
    act = activations.CODES["relu"]
    first = check_gemm_bias_act(host, n, k, m, act, True, np.float32, tile=tile, splits=4)
    again = check_gemm_bias_act(host, n, k, m, act, True, np.float32, tile=tile, splits=4)
    strided = check_gemm_bias_act(host, n, k, m, act, True, np.float32, tile=tile, splits=4,
                                 grid=(1, 1, 1))
    assert first.tobytes() == again.tobytes() == strided.tobytes()
    dw, db = check_gemm_weight_grads(host, n, k, m, 0.01, np.float32, tile=tile, splits=4)
    dw2, db2 = check_gemm_weight_grads(host, n, k, m, 0.01, np.float32, tile=tile, splits=4,
                                      grid=(1, 1, 1))
    assert dw.tobytes() == dw2.tobytes() and db.tobytes() == db2.tobytes()


# ------------------------------------------------------------------------ elementwise
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("act", FORWARD_ACTS)
@pytest.mark.parametrize("n,m", SHAPES)
def test_bias_act(host, n, m, act, dropout, dtype, grid=None):
    rng, g = rng_for("bias_act", n, m, act, dropout, dtype), Guarded()
    z0 = random(rng, (n, m), dtype, 2.0)
    z, b = g.array((n, m), dtype, z0), g.array((m,), dtype, random(rng, (m,), dtype))
    args, drop = dropout_args(dtype, dropout)
    config_grid, block = kernels.launch_config("bias_act", n, m)
    host.launch("bias_act", dtype, grid or config_grid, block, act=act, dropout=dropout, z=z,
                b=b, n=n, m=m, **args)
    # z @ I is exact, so affine_act is the reference of the epilogue alone.
    want = REF.affine_act(z0, np.eye(m, dtype=dtype), b, ACT_NAMES[act], np.empty_like(z0),
                          dropout=drop)
    assert_matches(z, want, dtype, dropout)
    g.check()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("act", BACKWARD_ACTS)
@pytest.mark.parametrize("n,m", SHAPES)
def test_act_grad(host, n, m, act, dropout, dtype, grid=None, in_place=False):
    rng, g = rng_for("act_grad", n, m, act, dropout, dtype), Guarded()
    delta = g.array((n, m), dtype, random(rng, (n, m), dtype))
    a = g.array((n, m), dtype, rng.uniform(-0.95, 0.95, (n, m)))
    want = REF.act_grad(delta.copy(), a, ACT_NAMES[act], np.empty_like(a),
                        dropout_args(dtype, dropout)[1])
    out = delta if in_place else g.array((n, m), dtype)
    args, _ = dropout_args(dtype, dropout)
    config_grid, block = kernels.launch_config("act_grad", n, m)
    host.launch("act_grad", dtype, grid or config_grid, block, act=act, dropout=dropout,
                out=out, delta=delta, a=a, size=n * m, **args)
    assert_matches(out, want, dtype, dropout)
    g.check()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_place", [False, True])
@pytest.mark.parametrize("act", sorted(activations.CODES.values()))
@pytest.mark.parametrize("n,m", SHAPES[:3])
def test_apply_act(host, n, m, act, in_place, dtype):
    rng, g = rng_for("apply_act", n, m, act, in_place, dtype), Guarded()
    z0 = random(rng, (n, m), dtype, 40.0)  # wide: the sigmoid's split by sign matters
    if z0.size >= 3:
        z0.flat[:3] = [0.0, -0.0, -120.0]  # exp(120) overflows float32 in a naive sigmoid
    z = g.array((n, m), dtype, z0)
    out = z if in_place else g.array((n, m), dtype)
    grid, block = kernels.launch_config("apply_act", n * m)
    host.launch("apply_act", dtype, grid, block, act=act, out=out, z=z, size=n * m)
    want = activations.apply(np, ACT_NAMES[act], z0.copy(), np.empty_like(z0))
    assert_matches(out, want, dtype, False)
    g.check()


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_grid_stride_and_in_place(host, dtype):
    n, m = SHAPES[4]
    test_bias_act(host, n, m, activations.CODES["leaky_relu"], True, dtype, grid=(1, 1, 1))
    test_act_grad(host, n, m, activations.CODES["tanh"], True, dtype, grid=(3, 1, 1),
                  in_place=True)


@pytest.mark.parametrize("n,m", SHAPES)
def test_dropout_mask_is_bit_identical_to_keep_mask(host, n, m):
    """Identity activation of nonzero inputs: zero exactly where keep_mask drops."""
    dtype = np.float32
    z = random(rng_for("mask", n, m), (n, m), dtype) + dtype(10)
    b = np.zeros(m, dtype)
    args, drop = dropout_args(dtype, True)
    grid, block = kernels.launch_config("bias_act", n, m)
    host.launch("bias_act", dtype, grid, block, act=0, dropout=True, z=z, b=b, n=n, m=m, **args)
    np.testing.assert_array_equal(z != 0, keep_mask(np, (n, m), drop))


# ----------------------------------------------------------------------------- losses
def loss_inputs(kind, rng, n, k, dtype):
    z = random(rng, (n, k), dtype, 3.0)
    if kind == "softmax_xent":  # soft targets: rows of a Dirichlet draw
        t = rng.dirichlet(np.ones(k), size=n)
    elif kind == "sigmoid_bce":
        t = rng.uniform(0, 1, (n, k))
    else:
        t = rng.normal(size=(n, k))
    return z, t.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["softmax_xent", "sigmoid_bce", "squared_error"])
@pytest.mark.parametrize("n,k", SHAPES)
def test_loss_accumulates_and_writes_h(host, n, k, kind, dtype, grid=None, in_place=False):
    rng, g = rng_for(kind, n, k, dtype), Guarded()
    z0, t0 = loss_inputs(kind, rng, n, k, dtype)
    want_h = np.empty_like(z0)
    want_loss = getattr(REF, kind)(z0, t0, want_h)
    z, t = g.array((n, k), dtype, z0), g.array((n, k), dtype, t0)
    h = z if in_place else g.array((n, k), dtype)
    start = dtype(rng.normal())
    acc = g.array((1,), dtype, start)
    config_grid, block = kernels.launch_config(kind, n, k)
    first = "a" if kind == "squared_error" else "z"
    for call in range(2):  # the loss is added, so two calls add it twice
        if in_place:
            z[...] = z0
        host.launch(kind, dtype, grid or config_grid, block, h=h, loss_acc=acc,
                    **{first: z}, t=t, n=n, k=k)
    assert_matches(h, want_h, dtype)
    assert_matches(acc[0] - start, 2 * want_loss, dtype)
    g.check()


def check_gemm_softmax_xent(host, n, k, m, dtype, tile, splits=1, grid=None, aligned=False):
    """The fused output layer + softmax + cross-entropy against the reference's affine
    (identity) then softmax_xent: h written exactly where the logits are, the loss added."""
    rng, g = rng_for("fused_xent", n, k, m, tile, splits, dtype), Guarded(aligned)
    x0, w0 = random(rng, (n, k), dtype), random(rng, (k, m), dtype, 0.3)
    b0, t0 = random(rng, (m,), dtype), rng.dirichlet(np.ones(m), size=n).astype(dtype)
    x, w, b, t = (g.array(a.shape, dtype, a) for a in (x0, w0, b0, t0))
    h = g.array((n, m), dtype)
    start = dtype(rng.normal())
    acc = g.array((1,), dtype, start)
    z = REF.affine_act(x0, w0, b0, "identity", np.empty((n, m), dtype),
                       precision=kernels.GEMM_TILE_PRECISION[tile])
    want_h = np.empty_like(z)
    want_loss = REF.softmax_xent(z, t0, want_h)
    gemm_launch(host, "gemm_softmax_xent", dtype, n, m, k, tile, splits, grid, h=h,
                loss_acc=acc, x=x, w=w, b=b, t=t, n=n, k=k, m=m)
    assert_matches(h, want_h, dtype)
    assert_matches(acc[0] - start, want_loss, dtype)
    g.check()


#: (n, k, m): odd sizes, one and several row tiles, m up to the narrow tile's 16 columns.
FUSED_XENT_SHAPES = [(1, 1, 1), (3, 7, 5), (17, 19, 10), (70, 33, 16), (130, 65, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k,m", FUSED_XENT_SHAPES)
def test_gemm_softmax_xent(host, n, k, m, dtype):
    for tile in kernels.gemm_tiles("gemm_softmax_xent", dtype):
        check_gemm_softmax_xent(host, n, k, m, dtype, tile)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_softmax_xent_split_k_full_width_vectors_and_grid_stride(host, dtype):
    """Rows as wide as each tile (BN columns: every thread of a row holds some), split-K,
    16-byte aligned operands (the vector loads and stores of h and t) and one block row
    striding over the row tiles."""
    for tile in kernels.gemm_tiles("gemm_softmax_xent", dtype):
        width = kernels.GEMM_TILES[tile][1]
        check_gemm_softmax_xent(host, 70, 40, width, dtype, tile, splits=3, aligned=True)
        check_gemm_softmax_xent(host, 130, 21, width - 1, dtype, tile, grid=(1, 1))


def test_gemm_softmax_xent_writes_nothing_where_a_block_cannot_hold_a_row(host):
    g = Guarded()
    n, k, m = 8, 4, 17  # the narrow tile is 16 columns wide
    x, w, b = g.array((n, k), np.float32, 1), g.array((k, m), np.float32, 1), g.array(
        (m,), np.float32, 0)
    t, h, acc = g.array((n, m), np.float32, 0), g.array((n, m), np.float32), g.array(
        (1,), np.float32, 0.5)
    grid, block = kernels.launch_config("gemm_softmax_xent", n, m, tile=2)
    host.launch("gemm_softmax_xent", np.float32, grid, block, tile=2, h=h, loss_acc=acc,
                x=x, w=w, b=b, t=t, n=n, k=k, m=m, workspace=None, tile_counters=None)
    assert np.isnan(h).all() and acc[0] == np.float32(0.5)
    with pytest.raises(ValueError, match="needs N=17 <= the BN"):
        gemm_plan.choose("gemm_softmax_xent", np.float32, n, m, k, tile=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_losses_grid_stride_and_in_place(host, dtype):
    n, k = SHAPES[4]
    for kind in ("softmax_xent", "sigmoid_bce", "squared_error"):
        test_loss_accumulates_and_writes_h(host, n, k, kind, dtype, grid=(2, 1, 1),
                                           in_place=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k,m", SHAPES)
@pytest.mark.parametrize("small_grid", [False, True])
def test_add_weights_l2_loss_sums_every_layer_once(host, k, m, small_grid, dtype):
    """``*loss_acc += scale sum_l ||W_l||^2`` over three weight spans of odd sizes in one flat
    buffer, twice (it adds), with the configured grid and with one block striding over
    everything.  The gaps between the spans (the biases) hold NaN: reading one would show."""
    rng, g = rng_for("l2", k, m, dtype, small_grid), Guarded()
    sizes = [k * m, m * 3 + 1, k + 2]
    spans, offset = [], 1
    for size in sizes:
        spans.append((offset, size))
        offset += size + 3
    params0 = np.full(offset, np.nan, dtype)
    for start, size in spans:
        params0[start:start + size] = random(rng, (size,), dtype)
    scale = dtype(0.5 * 1e-2 / 13)
    start = dtype(rng.normal())
    want = REF.add_weights_l2_loss(params0, spans, float(scale), np.zeros((), dtype))
    assert np.isfinite(want)
    params, acc = g.array((offset,), dtype, params0), g.array((1,), dtype, start)
    table = np.asarray(spans, np.int64).reshape(-1)
    grid, block = kernels.launch_config("add_weights_l2_loss", sum(sizes))
    for call in range(2):
        host.launch("add_weights_l2_loss", dtype, (1, 1, 1) if small_grid else grid, block,
                    loss_acc=acc, params=params, spans=table, n_layers=np.int64(len(spans)),
                    scale=scale)
    np.testing.assert_array_equal(params, params0)  # read only
    assert_matches(acc[0] - start, 2 * want, dtype)
    g.check()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("in_place", [False, True])
def test_softmax_rows(host, n, k, in_place, dtype):
    rng, g = rng_for("softmax", n, k, dtype, in_place), Guarded()
    z0 = random(rng, (n, k), dtype, 3.0)
    z = g.array((n, k), dtype, z0)
    out = z if in_place else g.array((n, k), dtype)
    grid, block = kernels.launch_config("softmax_rows", n, k)
    grid = (1, 1, 1) if in_place else grid  # in-place runs also cover the row stride
    host.launch("softmax_rows", dtype, grid, block, out=out, z=z, n=n, k=k)
    assert_matches(out, REF.softmax(z0, np.empty_like(z0)), dtype)
    g.check()


# -------------------------------------------------------------------------- optimizers
OPTIM_SIZES = [1, 7, 1003, 4099]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", OPTIM_SIZES)
def test_adam_step(host, size, dtype):
    rng, g = rng_for("adam", size, dtype), Guarded()
    p0, grads = random(rng, size, dtype), random(rng, size, dtype)
    m0, v0 = random(rng, size, dtype, 0.1), rng.uniform(0.01, 1, size).astype(dtype)
    p, m, v = (g.array(size, dtype, x) for x in (p0, m0, v0))
    grad = g.array(size, dtype, grads)
    hyper = dict(beta1=0.9, beta2=0.999, eps=1e-8)
    lr = np.array([0.05], dtype)  # large enough that an update error shows in params
    want = [x.copy() for x in (p0, m0, v0)]
    for step in (1, 2, 3):
        grid, block = kernels.launch_config("adam_step", size)
        host.launch("adam_step", dtype, grid if step < 3 else (1, 1, 1), block, params=p, m=m,
                    v=v, grads=grad, size=size, lr=lr, step=np.array([step], np.int32),
                    **hyper)
        REF.adam_step(*want[:1], grads, *want[1:], 0.05, hyper["beta1"], hyper["beta2"],
                      hyper["eps"], step)
    for got, expected in zip((p, m, v), want):
        assert_matches(got, expected, dtype)
    g.check()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("size", OPTIM_SIZES)
def test_sgd_step(host, size, nesterov, dtype):
    rng, g = rng_for("sgd", size, nesterov, dtype), Guarded()
    p0, grads, vel0 = (random(rng, size, dtype) for _ in range(3))
    p, vel, grad = (g.array(size, dtype, x) for x in (p0, vel0, grads))
    want_p, want_vel = p0.copy(), vel0.copy()
    for step in range(2):
        grid, block = kernels.launch_config("sgd_step", size)
        host.launch("sgd_step", dtype, grid if step else (1, 1, 1), block, nesterov=nesterov,
                    params=p, velocity=vel, grads=grad, size=size,
                    lr=np.array([0.05], dtype), momentum=0.9)
        REF.sgd_step(want_p, grads, want_vel, 0.05, 0.9, nesterov)
    assert_matches(p, want_p, dtype)
    assert_matches(vel, want_vel, dtype)
    g.check()


# ------------------------------------------------------------------------------ gather
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cols", [1, 5, 33])
@pytest.mark.parametrize("start", [None, 0, 7])
def test_gather_rows(host, cols, start, dtype):
    rng, g = rng_for("gather", cols, start, dtype), Guarded()
    total, rows = 50, 13
    src = g.array((total, cols), dtype, random(rng, (total, cols), dtype))
    perm = rng.permutation(total).astype(np.int64)
    out = g.array((rows, cols), dtype)
    grid, block = kernels.launch_config("gather_rows", rows, cols)
    host.launch("gather_rows", dtype, grid, block, out=out, src=src, perm=perm,
                start=None if start is None else np.array([start], np.int64), rows=rows,
                cols=cols)
    first = start or 0
    np.testing.assert_array_equal(out, src[perm[first:first + rows]])
    want = np.empty_like(out)
    np.testing.assert_array_equal(out, REF.gather_rows(src, perm[first:first + rows], want))
    g.check()


# ------------------------------------------------------------------------- step state
def test_advance_step_moves_the_graph_state(host):
    start = np.array([5], np.int64)
    counter = np.array([2**40], np.int64)  # the counter crosses 32 bits: kept as 64-bit
    step = np.array([7], np.int32)
    grid, block = kernels.launch_config("advance_step", 1)
    for _ in range(3):
        host.launch("advance_step", np.float32, grid, block, start=start, rows=128,
                    counter_base=counter, counters_per_step=3, step=step)
    assert (start[0], counter[0], step[0]) == (5 + 3 * 128, 2**40 + 9, 10)


# --------------------------------------------------------------------- kernel benchmark
def test_kernel_benchmark_reports_tflops_plans_and_the_square_sgemm(emulated_gpu):
    """`gpumlp bench --kernels` on the emulated GPU: every operation with TFLOP/s of
    2 M N K, the fused kernel's tile / split, and the square SGEMM against cuBLAS alone.
    (The times are the CPU harness's: only the bookkeeping is checked here.)"""
    from gpumlp.backends.cuda.kernel_bench import gemm_flops, markdown, run_kernel_bench, speedups

    cp, _ = emulated_gpu
    sm_count = gemm_plan.device_sm_count(cp)
    results = run_kernel_bench(shapes=((20, 12),), batches=(8,), repeats=1, min_ms=0.0,
                               sgemm_size=24)
    sgemm = [r for r in results if r["operation"] == "sgemm"]
    assert {r["variant"] for r in sgemm} == {"fused", "cublas"}
    for r in results:
        assert r["flops"] == gemm_flops(r["operation"], r["batch"], r["d_in"], r["d_out"])
        assert r["tflops"] == pytest.approx(r["flops"] / r["us_per_call"] / 1e6)
        if r["variant"] == "fused":
            kernel, M, N, K = {"forward": ("gemm_bias_act", 8, 12, 20),
                               "backward": ("gemm_backprop_act", 8, 20, 12),
                               "weight_grads": ("gemm_weight_grads", 20, 12, 8),
                               "sgemm": ("gemm_bias_act", 24, 24, 24)}[r["operation"]]
            plan = gemm_plan.choose(kernel, np.float32, M, N, K, sm_count)
            assert (r["tile"], r["splits"]) == (plan.tile, plan.splits)
    assert gemm_flops("weight_grads", 8, 20, 12) == 2 * 20 * 12 * 8
    rows = speedups(results)
    assert len(rows) == 4 and "fused_vs_cupy" not in rows[-1]
    table = markdown(rows, results)
    assert "| sgemm | 24→24 | 24 |" in table and "TFLOP/s" in table


# ------------------------------------------------------------------------ GEMM plans
def test_gemm_plan_fills_the_sms_at_mnist_sizes():
    """At batch 256 the 784->256 forward has 4 output tiles of 128 x 128: the plan splits K
    or takes smaller tiles so that the grid covers a good part of 132 SMs; a 4096^3 SGEMM
    needs neither (the large tile, one split)."""
    plan = gemm_plan.choose("gemm_bias_act", np.float32, 256, 256, 784)
    assert plan.grid[0] * plan.grid[1] * plan.grid[2] >= 64
    big = gemm_plan.choose("gemm_bias_act", np.float32, 4096, 4096, 4096)
    assert (big.tile, big.splits, big.grid) == (1, 1, (32, 32, 1))
    thin = gemm_plan.choose("gemm_bias_act", np.float32, 256, 10, 256)
    assert thin.tile == 2  # 16 wide: 6 wasted columns of 16, not 54 of 64
    for kernel in gemm_plan.GEMM_SHAPES:  # float64 has the one tile
        columns = 60 if kernel == "gemm_softmax_xent" else 300  # whole rows in one block
        assert gemm_plan.choose(kernel, np.float64, 1000, columns, 500).tile == 0


def test_gemm_plan_uses_the_sm_count_and_sizes_the_scratch():
    few = gemm_plan.choose("gemm_weight_grads", np.float32, 784, 256, 256, sm_count=2)
    many = gemm_plan.choose("gemm_weight_grads", np.float32, 784, 256, 256, sm_count=132)
    assert few.splits <= many.splits
    plan = gemm_plan.choose("gemm_bias_act", np.float32, 100, 70, 300, tile=0, splits=3)
    tiles_m, tiles_n = 2, 2  # 64 x 64 tiles over 100 x 70
    assert plan.grid == (tiles_n, tiles_m, 3) and plan.block == (256, 1, 1)
    assert plan.workspace_size == 3 * (tiles_m * tiles_n * 64 * 64 + tiles_n * 64)
    assert plan.counter_size == tiles_m * tiles_n
    one = gemm_plan.choose("gemm_bias_act", np.float32, 100, 70, 300, tile=0, splits=1)
    assert (one.workspace_size, one.counter_size) == (0, 0)

    owner: dict = {}  # a run's scratch table
    assert gemm_plan.scratch(owner, np, one, np.float32) == (None, None)
    ws, counters = gemm_plan.scratch(owner, np, plan, np.float32)
    assert ws.size == plan.workspace_size and counters.dtype == np.int32 and not counters.any()
    again = gemm_plan.scratch(owner, np, plan, np.float32)
    assert again[0] is ws and again[1] is counters  # never reallocated: graphs keep addresses


def test_sm_residency_counts_registers_per_scheduler():
    """CUDA's occupancy calculator gives each of an SM's 4 schedulers a quarter of the
    registers: a 2-warp block of 173 registers (the TF32 tile) fits 4 times, not the 5 a
    whole-SM count gives; the thread, block and shared-memory limits bind too."""
    assert gemm_plan.resident_blocks(173, 34820, 64) == 4
    assert gemm_plan.tile_residency("gemm_bias_act", "float32", 3) == 4
    assert gemm_plan.resident_blocks(108, 11268, 64) == 8  # the 64x16 tile
    assert gemm_plan.resident_blocks(182, 33796, 256) == 1  # the 128x128 tile
    assert gemm_plan.resident_blocks(16, 0, 32) == 32  # the block limit
    assert gemm_plan.resident_blocks(16, 0, 1024) == 2  # 2048 threads
    assert gemm_plan.resident_blocks(16, 100 * 1024, 32) == 2  # 228 KB of shared memory


def test_fma_rate_scales_with_the_warps_an_sm_runs():
    """A lone 2-warp block keeps 2 of the 4 schedulers half busy: a quarter of the SM."""
    assert gemm_plan.issue_share(2) == 0.25
    assert gemm_plan.issue_share(8) == 1.0
    assert gemm_plan.issue_share(5) == pytest.approx((1 + 0.5 * 3) / 4)
    efficiency = gemm_plan.TILE_EFFICIENCY[2]
    K = 16 * 64  # one block of the 64x16 tile on each of 132 SMs, 64 k-tiles each
    alone = gemm_plan.estimate_us(64, 16 * 132, K, tile=2, splits=1)
    fma_us = 64 * 16 * K / (gemm_plan.FMA_PER_SM_US * efficiency * 0.25)
    assert alone == pytest.approx(fma_us + gemm_plan.WAVE_LATENCY_US)


def test_the_narrow_tile_serves_only_narrow_outputs_of_the_benchmark_steps():
    """Before the rate followed the resident warps, the 64x16 tile (2 warps a block, about
    one block an SM at these sizes) was chosen for 6 of the 8 GEMMs of mlp-256 at batch
    256; it is worth it only where the output is at most 16 wide (the 10 classes)."""
    from conftest import load_support

    plan_table = load_support("plan_table")
    for sizes in plan_table.CONFIGS.values():
        for batch in plan_table.BATCHES:
            for gemm in plan_table.step_gemms(sizes, batch):
                narrow = kernels.GEMM_TILES[gemm.plan.tile][1] == 16
                assert narrow == (min(gemm.plan.M, gemm.plan.N) <= 16), (sizes, batch, gemm)


@pytest.mark.parametrize("call, match", [
    (lambda: gemm_plan.choose("bias_act", np.float32, 1, 1, 1), "not a GEMM"),
    (lambda: gemm_plan.choose("gemm_bias_act", np.float32, -1, 1, 1), "M=-1"),
    (lambda: gemm_plan.choose("gemm_bias_act", np.float32, 1, 1, 1, sm_count=0), "sm_count"),
    (lambda: gemm_plan.choose("gemm_bias_act", np.float64, 1, 1, 1, tile=1), "tile=1"),
    (lambda: gemm_plan.choose("gemm_backprop_act", np.float32, 1, 1, 1, tile=2), "tile=2"),
    (lambda: gemm_plan.choose("gemm_bias_act", np.float32, 1, 1, 1, splits=0), "splits=0"),
    (lambda: kernels.launch_config("gemm_bias_act", 4, 4, tile=7), "tile=7"),
])
def test_gemm_plan_bad_requests_say_what_is_allowed(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------------ TF32 tile
def test_round_to_tf32_is_cvt_rna():
    """Round to nearest, ties away from zero, 10 mantissa bits; inf and NaN unchanged."""
    from gpumlp.precision import round_to_tf32

    ulp = 2.0 ** -10  # TF32's spacing at 1
    values = np.array([1 + ulp / 2, -(1 + ulp / 2), 1 + ulp / 2 - 2**-23, 1 + 1.5 * ulp,
                       1 + ulp / 2 + 2**-23, np.finfo(np.float32).max, 2.0**-149, np.inf,
                       -np.inf], dtype=np.float32)
    want = np.array([1 + ulp, -(1 + ulp), 1, 1 + 2 * ulp, 1 + ulp, np.inf, 0, np.inf,
                     -np.inf], dtype=np.float32)
    np.testing.assert_array_equal(round_to_tf32(np, values), want)
    assert np.isnan(round_to_tf32(np, np.float32(np.nan)))
    assert (round_to_tf32(np, values).view(np.uint32)[:-3] & 0x1FFF == 0).all()


def test_tf32_gemms_round_their_inputs(host):
    """The TF32 tile equals the reference on TF32-rounded inputs, and differs from the
    float32 product by far more than float32's tolerance (the rounding is really done)."""
    n, k, m = 70, 90, 41
    rng = rng_for("tf32", n, k, m)
    x, w = random(rng, (n, k), np.float32), random(rng, (k, m), np.float32, 0.3)
    b, out = random(rng, (m,), np.float32), np.full((n, m), np.nan, np.float32)
    args, _ = dropout_args(np.float32, False)
    gemm_launch(host, "gemm_bias_act", np.float32, n, m, k, 3, 2, None,
                act=activations.CODES["identity"], dropout=False, out=out, x=x, w=w, b=b,
                n=n, k=k, m=m, **args)
    fp32 = REF.affine_act(x, w, b, "identity", np.empty_like(out))
    tf32 = REF.affine_act(x, w, b, "identity", np.empty_like(out), precision="tf32")
    assert_matches(out, tf32, np.float32)
    assert np.max(np.abs(out - fp32)) > 20 * RTOL[np.float32] * np.max(np.abs(fp32))


def test_float32_denormals_flush_to_zero_as_with_ftz(host):
    """CuPy compiles every kernel with -ftz=true: a float32 result below 1.18e-38 is zero on
    the GPU, so it is zero in the harness too (the caller's thread keeps its own mode)."""
    g = Guarded()
    z0 = np.array([[-95.0, -100.0, -80.0, 1.0]], np.float32)
    z, out = g.array(z0.shape, np.float32, z0), g.array(z0.shape, np.float32)
    host.launch("apply_act", np.float32, (1, 1, 1), (32, 1, 1),
                act=activations.CODES["sigmoid"], out=out, z=z, size=z0.size)
    want = 1.0 / (1.0 + np.exp(-z0.astype(np.float64)))
    tiny = np.finfo(np.float32).tiny
    assert 0 < want[0, 0] < tiny and 0 < want[0, 1] < tiny  # denormal in float32
    assert out[0, 0] == 0.0 and out[0, 1] == 0.0, out
    np.testing.assert_allclose(out[0, 2:], want[0, 2:], rtol=1e-5)  # 1.8e-35 is normal
    assert np.float32(1e-40) * np.float32(1.0) > 0  # this thread still keeps denormals
    g.check()
