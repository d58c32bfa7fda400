"""A fused kernel that cannot be compiled, loaded or launched is dropped for that kernel
only, with one warning naming it; every other operation keeps its kernels and captured
steps stay available (emulated CuPy)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from gpumlp.backends import get_backend
from gpumlp.backends.cuda import kernels
from gpumlp.backends.cuda.backend import CupyBackend

from conftest import load_support

emulated = load_support("emulated_cupy")


def requested_kernels(monkeypatch, fail_to_load=(), fail_to_launch=()):
    """Make the named kernels fail; returns the names the backend launched afterwards."""
    launched = []
    real = kernels.get_kernel

    def get_kernel(kernel, dtype=None, **params):
        if kernel in fail_to_load:
            raise kernels.KernelsUnavailable(f"{kernel} did not compile (planted)")
        fn = real(kernel, dtype, **params)

        def launch(grid, block, args):
            if kernel in fail_to_launch:
                raise emulated.CUDADriverError("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES (planted)")
            launched.append(kernel)
            return fn(grid, block, args)
        return launch

    monkeypatch.setattr(kernels, "get_kernel", get_kernel)
    return launched


def layer(cp, rng, n=8, k=6, m=5):
    x, w, b = rng.normal(size=(n, k)), rng.normal(size=(k, m)), rng.normal(size=m)
    return x, w, b, (cp.asarray(x), cp.asarray(w), cp.asarray(b))


@pytest.mark.kernels
@pytest.mark.parametrize("failure", ["load", "launch"])
def test_a_failing_kernel_is_dropped_alone_with_one_warning_naming_it(cp, monkeypatch,
                                                                      failure):
    planted = {"fail_to_" + failure: ("softmax_rows",)}
    launched = requested_kernels(monkeypatch, **planted)
    gpu, cpu = CupyBackend(gemm_path="fused"), get_backend("numpy")
    rng = np.random.default_rng(0)
    z = rng.normal(size=(7, 4))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):  # the second call neither retries nor warns again
            got = gpu.softmax(cp.asarray(z), cp.empty((7, 4)))
            np.testing.assert_allclose(got.get(), cpu.softmax(z, np.empty((7, 4))),
                                       rtol=1e-12)
        x, w, b, (x_d, w_d, b_d) = layer(cp, rng)
        out = gpu.affine_act(x_d, w_d, b_d, "relu", cp.empty((8, 5)))
    np.testing.assert_allclose(out.get(), cpu.affine_act(x, w, b, "relu", np.empty((8, 5))),
                               rtol=1e-12)
    assert "gemm_bias_act" in launched, "one kernel's failure turned off every other kernel"
    assert "softmax_rows" not in launched
    assert gpu.graphs_unavailable_reason() is None
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "softmax_rows" in messages[0], messages


@pytest.mark.kernels
def test_a_dropped_fused_gemm_leaves_its_operation_on_cublas_and_the_epilogue_kernel(
        cp, monkeypatch):
    launched = requested_kernels(monkeypatch, fail_to_launch=("gemm_bias_act",))
    gpu, cpu = CupyBackend(gemm_path="fused"), get_backend("numpy")
    x, w, b, (x_d, w_d, b_d) = layer(cp, np.random.default_rng(1))
    with pytest.warns(RuntimeWarning, match="gemm_bias_act"):
        out = gpu.affine_act(x_d, w_d, b_d, "tanh", cp.empty((8, 5)))
    np.testing.assert_allclose(out.get(), cpu.affine_act(x, w, b, "tanh", np.empty((8, 5))),
                               rtol=1e-12)
    assert launched == ["bias_act"]  # cuBLAS (cupy.matmul) then the epilogue kernel
