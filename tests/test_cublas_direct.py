"""cuBLAS / cuBLASLt called directly (gpumlp/backends/cuda/cublas.py), run without a GPU.

The library calls go to ``tests/kernels/emulated_cublas.py`` on the emulated CuPy: operands
are read at their addresses with the leading dimensions and transposes gpumlp passes, so the
row-major to column-major mapping, the epilogues' orientation (bias over output features,
bias gradient over the batch) and the capture rules (handles bound before capture, calls on
the capturing stream recorded and replayed) are checked against NumPy here.  The real library
through ctypes is checked on a GPU by ``tests/test_gpu_cublas_direct.py``.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpumlp.backends.cuda import cublas as cublas_direct
from gpumlp.backends.cuda.cublas import (BlasError, BlasUnsupported, DirectBlas, aux_bytes,
                                           rowmajor_gemm)

from conftest import load_support

em = load_support("emulated_cupy")
emulated_cublas = load_support("emulated_cublas")
WORKSPACE = 1 << 16


@pytest.fixture
def cp():
    module, _ = em.make_cupy(None)  # no kernels are launched here: no harness needed
    yield module
    em.reset()


@pytest.fixture
def blas(cp):
    api = emulated_cublas.EmulatedBlas(em)
    return DirectBlas(cp, api, workspace_bytes=WORKSPACE)


@pytest.fixture
def stream(cp, blas):
    """A blocking stream: ordered after the inputs the tests make on the default stream."""
    s = cp.cuda.Stream()
    blas.prepare(s)
    return s


def rand(cp, rng, *shape, dtype=np.float32):
    return cp.asarray(rng.normal(size=shape).astype(dtype))


def host(array):
    return np.asarray(array.get())


def test_rowmajor_gemm_swaps_operands_and_rejects_mismatched_sizes():
    g = rowmajor_gemm((5, 3), False, (3, 7), False)  # (5x3)(3x7): column-major 7x5 = B^T A^T
    assert (g.m, g.n, g.k, g.lda, g.ldb, g.ldc) == (7, 5, 3, 7, 3, 7)
    g = rowmajor_gemm((3, 5), True, (7, 3), True)  # (3x5)^T (7x3)^T
    assert (g.transa, g.transb, g.m, g.n, g.k, g.lda, g.ldb) == (1, 1, 7, 5, 3, 3, 5)
    with pytest.raises(ValueError, match="inner sizes 3 and 4 differ"):
        rowmajor_gemm((5, 3), False, (4, 7), False)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("left_t, right_t", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_matmul_every_transpose_matches_numpy(cp, blas, stream, dtype, left_t, right_t):
    rng = np.random.default_rng(0)
    left = rand(cp, rng, *((9, 5) if left_t else (5, 9)), dtype=dtype)
    right = rand(cp, rng, *((6, 9) if right_t else (9, 6)), dtype=dtype)
    out = cp.full((5, 6), np.nan, dtype=dtype)
    with stream:
        blas.matmul(left, right, out, stream, left_t=left_t, right_t=right_t)
    L, R = host(left), host(right)
    want = (L.T if left_t else L) @ (R.T if right_t else R)
    np.testing.assert_allclose(host(out), want, rtol=1e-5 if dtype == np.float32 else 1e-12)


def relu_layer_reference(x, w, b, h_next, w_next, decay):
    z = x @ w + b
    a = np.maximum(z, 0)
    delta = (h_next @ w_next.T) * (z > 0)
    return a, delta, delta.sum(axis=0), x.T @ delta + decay * w


@pytest.mark.parametrize("features", [23, 128, 130])  # the mask's ld rounds up to 128 bits
def test_fused_relu_layer_forward_backward_and_weight_gradient(cp, blas, stream, features):
    """RELU_AUX_BIAS -> DRELU_BGRAD -> BGRADA: a ReLU layer with no epilogue kernel."""
    rng = np.random.default_rng(1)
    n, k, m, m_next = 37, 19, features, 11
    x, w, b = rand(cp, rng, n, k), rand(cp, rng, k, m), rand(cp, rng, m)
    h_next, w_next = rand(cp, rng, n, m_next), rand(cp, rng, m, m_next)
    a, delta = cp.empty((n, m), np.float32), cp.empty((n, m), np.float32)
    db, db_w = cp.full((m,), np.nan, np.float32), cp.full((m,), np.nan, np.float32)
    dw = cp.full((k, m), np.nan, np.float32)
    mask = cp.zeros(aux_bytes(m, n), np.uint8)
    for op, left, right, out, c in (("forward_relu", x, w, a, None),
                                    ("backward_drelu_bgrad", h_next, w_next, delta, None),
                                    ("weight_grads", x, delta, dw, w)):
        blas.fused_gemms(op, left, right, out, stream, c=c)
    with stream:
        blas.affine_relu(x, w, b, a, mask, stream)
        blas.backprop_relu(h_next, w_next, mask, delta, stream, db=db)
        blas.weight_grads(x, delta, dw, db_w, stream, w=w, decay=0.01)
    want_a, want_delta, want_db, want_dw = relu_layer_reference(
        host(x), host(w), host(b), host(h_next), host(w_next), 0.01)
    close = dict(rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(host(a), want_a, **close)
    np.testing.assert_allclose(host(delta), want_delta, **close)
    np.testing.assert_allclose(host(db), want_db, **close)
    np.testing.assert_allclose(host(db_w), want_db, **close)  # BGRADA: the same column sums
    np.testing.assert_allclose(host(dw), want_dw, **close)


def test_output_layer_bias_epilogue(cp, blas, stream):
    rng = np.random.default_rng(2)
    x, w, b = rand(cp, rng, 8, 5), rand(cp, rng, 5, 3), rand(cp, rng, 3)
    out = cp.empty((8, 3), np.float32)
    blas.fused_gemms("forward_bias", x, w, out, stream)
    with stream:
        blas.affine(x, w, b, out, stream)
    np.testing.assert_allclose(host(out), host(x) @ host(w) + host(b), rtol=1e-5)


def test_captured_calls_replay_on_current_data(cp, blas, stream):
    """A graph holds the calls with their pointers; a replay reads the memory as it is then."""
    rng = np.random.default_rng(3)
    n, k, m = 16, 8, 128
    x, w, b = rand(cp, rng, n, k), rand(cp, rng, k, m), rand(cp, rng, m)
    a, mask = cp.empty((n, m), np.float32), cp.zeros(aux_bytes(m, n), np.uint8)
    prod = cp.empty((n, n), np.float32)
    blas.fused_gemms("forward_relu", x, w, a, stream)
    with stream:
        stream.begin_capture()
        blas.affine_relu(x, w, b, a, mask, stream)
        blas.matmul(a, a, prod, stream, right_t=True)
        graph = stream.end_capture()
    assert [call.name for call, *_ in graph.launches] == [
        "cublasLtMatmul[relu_aux_bias]", "cublasSgemm_v2"]
    assert blas.api.calls == {}  # recorded, not run
    for trial in range(2):
        with stream:
            x.set(rng.normal(size=(n, k)).astype(np.float32))
            graph.launch(stream)
        want = np.maximum(host(x) @ host(w) + host(b), 0)
        np.testing.assert_allclose(host(a), want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(host(prod), want @ want.T, rtol=1e-4, atol=1e-4)
    assert blas.api.calls["cublasSgemm_v2"] == 2


def test_handles_and_plans_must_be_made_before_capture(cp, blas):
    s = cp.cuda.Stream(non_blocking=True)
    rng = np.random.default_rng(4)
    x, w = rand(cp, rng, 4, 4), rand(cp, rng, 4, 4)
    out = cp.empty((4, 4), np.float32)
    with s:
        s.begin_capture()
        with pytest.raises(em.CaptureViolation):
            blas.prepare(s)  # allocates the workspace, creates and binds handles
    s.capture = None
    blas.prepare(s)
    with pytest.raises(RuntimeError, match="no cuBLASLt plan"):
        blas.affine(x, w, cp.zeros(4, np.float32), out, s)
    with s:
        s.begin_capture()
        with pytest.raises(em.CaptureViolation, match="Heuristic"):
            blas.fused_gemms("forward_bias", x, w, out, s)
    s.capture = None


def test_gemm_on_a_handle_bound_to_another_stream_during_capture_is_refused(cp, blas, stream):
    """It would run on its own stream, outside the graph being captured."""
    rng = np.random.default_rng(5)
    x, out = rand(cp, rng, 4, 4), cp.empty((4, 4), np.float32)
    other = cp.cuda.Stream(non_blocking=True)
    with other:
        other.begin_capture()
        with pytest.raises(em.CaptureViolation, match="outside the graph"):
            blas.matmul(x, x, out, stream)
    other.capture = None
    with pytest.raises(RuntimeError, match="prepare"):
        blas.matmul(x, x, out, other)  # never bound


def test_unordered_cross_stream_read_through_cublas_raises(cp, blas, stream):
    rng = np.random.default_rng(6)
    x, mid, out = rand(cp, rng, 4, 4), cp.empty((4, 4), np.float32), cp.empty((4, 4),
                                                                              np.float32)
    second = cp.cuda.Stream(non_blocking=True)
    blas.prepare(second)
    cp.cuda.Device().synchronize()  # the inputs are ready for every stream
    blas.matmul(x, x, mid, stream)
    with pytest.raises(em.StreamOrderViolation):
        blas.matmul(mid, x, out, second)
    event = stream.record()
    second.wait_event(event)
    blas.matmul(mid, x, out, second)  # ordered by the event: fine
    second.synchronize()
    np.testing.assert_allclose(host(out), host(x) @ host(x) @ host(x), rtol=1e-4)


def test_unsupported_epilogue_is_reported_while_planning(cp):
    api = emulated_cublas.EmulatedBlas(em, unsupported={"drelu_bgrad"})
    blas = DirectBlas(cp, api, workspace_bytes=WORKSPACE)
    s = cp.cuda.Stream(non_blocking=True)
    blas.prepare(s)
    with pytest.raises(BlasUnsupported, match="drelu_bgrad"):
        blas.fused_gemms("backward_drelu_bgrad", cp.empty((8, 4), np.float32),
                         cp.empty((6, 4), np.float32), cp.empty((8, 6), np.float32), s)
    blas.fused_gemms("forward_relu", cp.empty((8, 4), np.float32),  # others still plan
                     cp.empty((4, 6), np.float32), cp.empty((8, 6), np.float32), s)


@pytest.mark.parametrize("make, error, message", [
    (lambda cp, x: (x[:, ::2], cp.empty((6, 6), np.float32)), ValueError, "C-contiguous"),
    (lambda cp, x: (x.astype(np.float64), cp.empty((6, 6), np.float32)), TypeError,
     "dtype float64"),
    (lambda cp, x: (x, cp.empty((6, 5), np.float32)), ValueError, "out has shape"),
])
def test_bad_operands_are_refused_before_the_call(cp, blas, stream, make, error, message):
    x = rand(cp, np.random.default_rng(7), 6, 12)
    left, out = make(cp, x)
    right = cp.ones((left.shape[1], 6), np.float32)
    with pytest.raises(error, match=message):
        blas.matmul(left, right, out, stream)
    assert blas.api.calls == {}


def test_real_library_missing_is_one_clear_error(monkeypatch):
    pathfinder = pytest.importorskip("cuda.pathfinder")

    def missing(name):
        raise pathfinder.DynamicLibNotFoundError(f"no lib{name}")

    monkeypatch.setattr(pathfinder, "load_nvidia_dynamic_lib", missing)
    with pytest.raises(BlasError, match="cannot load cuBLAS / cuBLASLt: no libcublas"):
        cublas_direct.CtypesBlas()


def offset_view(cp, shape, byte_offset, dtype=np.float32):
    """A C-contiguous device array starting ``byte_offset`` bytes into an allocation."""
    item = np.dtype(dtype).itemsize
    size = int(np.prod(shape))
    base = cp.zeros(size + byte_offset // item, dtype)
    view = base[byte_offset // item:].reshape(shape)
    assert cublas_direct.pointer(view) % 256 == byte_offset % 256
    return view


def test_emulated_cublaslt_refuses_an_operand_less_aligned_than_its_plan(cp, blas, stream):
    """cuBLASLt assumes 256-byte operands unless the preference says less, and its chosen
    algorithm then refuses a pointer that is not; so does the emulation."""
    rng = np.random.default_rng(7)
    n, k, m = 16, 12, 20
    x, h = rand(cp, rng, n, k), rand(cp, rng, n, m)
    dw, db = offset_view(cp, (k, m), 314000), cp.empty(m, np.float32)  # 144 mod 256
    g = rowmajor_gemm(x.shape, True, h.shape, False)
    _, lt_handle, workspace, _ = blas._streams[cublas_direct.stream_pointer(stream)]
    default = blas.api.lt_plan(lt_handle, np.dtype(np.float32), g, "bgrada", 0, WORKSPACE,
                               (256, 256, 256, 256))
    with pytest.raises(BlasError, match=r"C at address .* \(144 mod 256\).*256 bytes"):
        blas.api.lt_matmul(lt_handle, default, 1.0, h, x, 0.0, dw, dw, db, None, workspace,
                           stream)


def test_plans_follow_the_operands_alignment(cp, blas, stream):
    """A hidden width of 100 puts W2 at byte 314000 of the flat parameters (16-byte
    aligned, 144 mod 256): the plan asks cuBLASLt for algorithms that read it."""
    rng = np.random.default_rng(8)
    n, k, m = 16, 100, 10
    x, h = rand(cp, rng, n, k), rand(cp, rng, n, m)
    w = offset_view(cp, (k, m), 314000)
    w[...] = cp.asarray(rng.normal(size=(k, m)).astype(np.float32))
    dw, db = offset_view(cp, (k, m), 314000), cp.empty(m, np.float32)
    plan = blas.fused_gemms("weight_grads", x, h, dw, stream, c=w)
    assert plan.alignments == (256, 256, 16, 16)  # A = h, B = x, C = w, D = dw
    with stream:
        blas.weight_grads(x, h, dw, db, stream, w=w, decay=0.5)
    np.testing.assert_allclose(host(dw), host(x).T @ host(h) + 0.5 * host(w), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(host(db), host(h).sum(axis=0), rtol=1e-5)
    # An allocation is 256-byte aligned (capped there); a slice of X's rows is what it is.
    assert cublas_direct.alignment(x) == 256 and cublas_direct.alignment(x[1:]) == 16
