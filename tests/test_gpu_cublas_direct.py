"""The direct cuBLAS / cuBLASLt route on a real GPU: ctypes into the libraries CuPy loads,
plain and epilogue GEMMs against CuPy's own products, and the same calls captured in a CUDA
graph and replayed on new data (the emulated version is tests/test_cublas_direct.py)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture
def cupy():
    return pytest.importorskip("cupy")


@pytest.fixture
def blas_and_stream(cupy):
    from gpumlp.backends.cuda.cublas import DirectBlas

    stream = cupy.cuda.Stream(non_blocking=True)
    blas = DirectBlas(cupy)
    blas.prepare(stream)
    return blas, stream


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matmul_transposes_match_cupy(cupy, blas_and_stream, dtype):
    blas, stream = blas_and_stream
    rng = cupy.random.default_rng(0)
    with stream:
        left = rng.standard_normal((300, 200), dtype=dtype)
        right = rng.standard_normal((300, 100), dtype=dtype)
        out = cupy.empty((200, 100), dtype=dtype)
        blas.matmul(left, right, out, stream, left_t=True)
        want = left.T @ right
        stream.synchronize()
    tol = 1e-4 if dtype == np.float32 else 1e-10
    cupy.testing.assert_allclose(out, want, rtol=tol, atol=tol)


def test_relu_layer_epilogues_and_capture(cupy, blas_and_stream):
    """RELU_AUX_BIAS, DRELU_BGRAD and BGRADA against CuPy, then captured and replayed."""
    from gpumlp.backends.cuda.cublas import BlasUnsupported, aux_bytes

    blas, stream = blas_and_stream
    n, k, m, m_next = 256, 784, 256, 10
    rng = cupy.random.default_rng(1)
    f32 = cupy.float32
    with stream:
        x = rng.standard_normal((n, k), dtype=f32)
        w = rng.standard_normal((k, m), dtype=f32) * 0.05
        b = rng.standard_normal(m, dtype=f32)
        h_next = rng.standard_normal((n, m_next), dtype=f32)
        w_next = rng.standard_normal((m, m_next), dtype=f32)
        a, delta, dw = (cupy.empty(s, f32) for s in ((n, m), (n, m), (k, m)))
        db, db_w = cupy.empty(m, f32), cupy.empty(m, f32)
        mask = cupy.zeros(aux_bytes(m, n), cupy.uint8)
        try:
            for op, left, right, out, c in (("forward_relu", x, w, a, None),
                                            ("backward_drelu_bgrad", h_next, w_next, delta,
                                             None),
                                            ("weight_grads", x, delta, dw, w)):
                blas.fused_gemms(op, left, right, out, stream, c=c)
        except BlasUnsupported as exc:
            pytest.fail(f"cuBLASLt refused an epilogue gpumlp relies on: {exc}")

        def layer():
            blas.affine_relu(x, w, b, a, mask, stream)
            blas.backprop_relu(h_next, w_next, mask, delta, stream, db=db)
            blas.weight_grads(x, delta, dw, db_w, stream, w=w, decay=1e-3)

        def check():
            z = x @ w + b
            d = (h_next @ w_next.T) * (z > 0)
            for got, want in ((a, cupy.maximum(z, 0)), (delta, d), (db, d.sum(axis=0)),
                              (db_w, d.sum(axis=0)), (dw, x.T @ d + 1e-3 * w)):
                cupy.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3)

        layer()
        check()
        pool = cupy.get_default_memory_pool()
        used = pool.used_bytes()
        stream.begin_capture()
        layer()
        graph = stream.end_capture()
        assert pool.used_bytes() == used, "the capture allocated"
        for _ in range(3):
            x[...] = rng.standard_normal((n, k), dtype=f32)
            graph.launch(stream)
            check()
        assert pool.used_bytes() == used, "a replay allocated"
        stream.synchronize()
