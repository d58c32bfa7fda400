"""gpumlp.backends.cuda.kernels: the instantiation table, its agreement with the sources, NVRTC compilation
of every instantiation (no GPU needed) and the lazy GPU loader's fallback behaviour."""

from __future__ import annotations

import re
import subprocess
import sys
import types
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from gpumlp import activations, config
from gpumlp.backends.cuda import kernels

pytestmark = pytest.mark.kernels

ARCHS = ("sm_80", "sm_90")


@pytest.fixture(scope="module")
def compiled():
    """Both architectures compiled once, side by side (NVRTC releases the GIL)."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:  # ImportError, or libnvrtc missing at load time
        pytest.skip(f"cupy_backends.cuda.libs.nvrtc unavailable (install cupy-cuda12x and "
                    f"nvidia-cuda-nvrtc-cu12): {type(exc).__name__}: {exc}")
    with ThreadPoolExecutor(len(ARCHS)) as pool:
        return dict(zip(ARCHS, pool.map(kernels.nvrtc_compile_all, ARCHS)))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_instantiation_compiles(compiled, arch):
    results = compiled[arch]
    assert list(results) == kernels.sources()
    for source, result in results.items():
        assert result.cubin[:4] == b"\x7fELF", f"{source}: no CUBIN for {arch}"
        assert list(result.lowered_names) == kernels.name_expressions(source)
        for expression, lowered in result.lowered_names.items():
            assert lowered.startswith("_Z"), f"{expression} lowered to {lowered!r}"


def test_compile_error_carries_the_log(monkeypatch, compiled):
    monkeypatch.setattr(kernels, "source_code", lambda source: "this is not C++;")
    with pytest.raises(kernels.NvrtcCompileError, match=r"(?s)gather\.cu.*sm_90.*error"):
        kernels.nvrtc_compile_all("sm_90", ["gather.cu"])


def test_derived_names_cover_every_kernel_dtype_and_activation():
    names = kernels.name_expressions()
    assert len(names) == len(set(names))
    differentiable = [c for n, c in activations.CODES.items()
                      if n not in activations.INFERENCE_ONLY]
    for kernel, acts in [("gemm_bias_act", activations.CODES.values()),
                         ("bias_act", activations.CODES.values()),
                         ("gemm_backprop_act", differentiable), ("act_grad", differentiable)]:
        for ctype in ("float", "double"):
            tiles = kernels.gemm_tiles(kernel, "float32" if ctype == "float" else "float64")
            suffixes = [f", {tile}" for tile in tiles] if kernel.startswith("gemm") else [""]
            for act in acts:
                for flag in ("false", "true"):
                    for suffix in suffixes:
                        assert f"{kernel}<{ctype}, {act}, {flag}{suffix}>" in names
    assert {"gemm_weight_grads<float, 0>", "gemm_weight_grads<float, 1>",
            "gemm_weight_grads<float, 2>", "gemm_weight_grads<double, 0>",
            "gemm_weight_grads<float, 3>", "gemm_bias_act<float, 1, true, 3>",
            "gemm_backprop_act<float, 1, true, 3>"} <= set(names)
    # The TF32 tile (3) is float only.
    assert not [name for name in names if name.startswith("gemm") and "double" in name
                and name.endswith(", 3>")]
    for kernel in ("softmax_xent", "softmax_rows", "sigmoid_bce",
                   "squared_error", "add_weights_l2_loss", "adam_step", "gather_rows"):
        assert {f"{kernel}<float>", f"{kernel}<double>"} <= set(names)
    assert {"sgd_step<float, true>", "sgd_step<double, false>"} <= set(names)
    assert {"apply_act<float, 3>", "apply_act<double, 0>"} <= set(names)
    assert "advance_step" in names  # the one kernel with no template parameters
    expected = sum(len(spec.grid()) for spec in kernels.KERNELS.values())
    assert len(names) == expected == 187


_KERNEL = re.compile(r"(?:template\s*<([^>]*)>\s*)?__global__\s+void\s+"
                     r"(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(([^)]*)\)")


def test_table_matches_the_sources():
    """Every __global__ template is in KERNELS with its template and parameter lists."""
    found = {}
    for source in kernels.sources():
        text = kernels.kernel_dir().joinpath(source).read_text()
        for template, name, params in _KERNEL.findall(text):
            found[name] = (source, template, params)
    assert sorted(found) == sorted(kernels.KERNELS)
    for name, (source, template, params) in found.items():
        spec = kernels.KERNELS[name]
        assert spec.source == source
        kinds = []
        for param in (p.split() for p in template.split(",") if p.strip()):
            kinds.append("dtype" if param[0] == "typename" else param[-1].lower())
        assert tuple(kinds) == spec.template, name
        declared = tuple(" ".join(p.split()) for p in params.split(","))
        assert declared == spec.signature, name


def test_name_expression_accepts_names_codes_and_dtypes():
    assert kernels.name_expression("act_grad", "float64", act="tanh",
                                   dropout=1) == "act_grad<double, 4, true>"
    assert kernels.name_expression("gemm_weight_grads", float,
                                   tile=0) == "gemm_weight_grads<double, 0>"
    assert kernels.name_expression("sgd_step", "f4", nesterov=False) == "sgd_step<float, false>"


@pytest.mark.parametrize("call, error, match", [
    (lambda: kernels.name_expression("nope", "float32"), ValueError, "not a gpumlp kernel"),
    (lambda: kernels.name_expression("adam_step", "int64"), TypeError, "has no kernels"),
    (lambda: kernels.name_expression("act_grad", "float32", act=5, dropout=False), ValueError,
     "no instantiation for act=5"),
    (lambda: kernels.name_expression("act_grad", "float32", act="relu"), TypeError,
     "dropout"),
    (lambda: kernels.name_expression("bias_act", "float32", act="swish", dropout=False),
     ValueError, "not a known activation"),
    (lambda: kernels.launch_config("softmax_rows", 5), ValueError, r"\(n, k\)"),
    (lambda: kernels.source_code("x.cu"), ValueError, "not a kernel source"),
])
def test_bad_requests_say_what_is_allowed(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_launch_config():
    assert kernels.launch_config("gemm_backprop_act", 130, 257) == ((5, 3, 1), (256, 1, 1))
    assert kernels.launch_config("gemm_bias_act", 10**7, 1)[0] == (1, 65535, 1)
    assert kernels.launch_config("act_grad", 1, 1) == ((1, 1, 1), (256, 1, 1))
    assert kernels.launch_config("act_grad", 256, 10) == ((3, 1, 1), (256, 1, 1))  # 640 groups
    assert kernels.launch_config("adam_step", 1000) == ((4, 1, 1), (256, 1, 1))
    assert kernels.launch_config("gather_rows", 0, 5) == ((1, 1, 1), (256, 1, 1))
    assert kernels.launch_config("softmax_xent", 256, 10) == ((16, 1, 1), (16, 16, 1))
    assert kernels.launch_config("softmax_rows", 3, 1) == ((1, 1, 1), (1, 256, 1))
    assert kernels.launch_config("softmax_rows", 3, 1000) == ((1, 1, 1), (32, 8, 1))


def test_source_code_is_self_contained():
    for source in kernels.sources():
        code = kernels.source_code(source)
        assert '#include "' not in code
        assert code.count("#define GPUMLP_COMMON_CUH") == 1
    assert (kernels.kernel_dir() / "gemm.cu").is_file()


def test_importing_never_imports_cupy():
    code = "import sys, gpumlp.backends.cuda.kernels; sys.exit('cupy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ------------------------------------------------------------------------- GPU loader
@pytest.fixture
def fresh_loader(monkeypatch):
    """An empty loader cache, and a fake cupy recording what the loader asks of it."""
    for name, value in [("_modules", {}), ("_failures", {}), ("_functions", {})]:
        monkeypatch.setattr(kernels, name, value)
    monkeypatch.delenv("GPUMLP_KERNELS", raising=False)
    config.reset()
    built = []

    class RawModule:
        fail = False

        def __init__(self, code, options, name_expressions):
            built.append(dict(code=code, options=options, names=name_expressions))

        def compile(self):
            if RawModule.fail:
                raise RuntimeError("no CUDA driver")

        def get_function(self, name):
            return ("function", name)

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(RawModule=RawModule))
    return RawModule, built


def test_loader_builds_each_source_once(fresh_loader):
    _, built = fresh_loader
    fn = kernels.get_kernel("act_grad", "float32", act="relu", dropout=True)
    assert fn == ("function", "act_grad<float, 1, true>")
    kernels.get_kernel("bias_act", "float64", act=0, dropout=False)  # same source
    assert len(built) == 1
    assert built[0]["names"] == kernels.name_expressions("epilogue.cu")
    assert built[0]["options"] == kernels.COMPILE_OPTIONS
    assert built[0]["code"] == kernels.source_code("epilogue.cu")


def test_loader_failure_raises_and_is_not_retried(fresh_loader):
    """The loader only raises; the backend warns, naming the kernel it wanted
    (tests/test_kernel_fallback.py)."""
    RawModule, built = fresh_loader
    RawModule.fail = True
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(kernels.KernelsUnavailable, match="no CUDA driver"):
            kernels.get_kernel("adam_step", "float32")
        with pytest.raises(kernels.KernelsUnavailable, match="no CUDA driver"):
            kernels.get_kernel("adam_step", "float32")  # no retry
    assert len(built) == 1


def test_environment_switch_forces_the_fallback(fresh_loader, monkeypatch):
    _, built = fresh_loader
    monkeypatch.setenv("GPUMLP_KERNELS", "off")
    config.reset()
    with pytest.raises(kernels.KernelsUnavailable, match="GPUMLP_KERNELS=off"):
        kernels.get_kernel("gather_rows", "float32")
    assert built == []


def _cupy_run_time_options(monkeypatch, source: str) -> tuple[str, ...]:
    """The options CuPy's ``RawModule(code, options=COMPILE_OPTIONS, name_expressions=...)``
    hands NVRTC, taken from CuPy's own code path up to the NVRTC call: the device's
    architecture is fixed at sm_90 and the program records its options instead of compiling,
    so no GPU is needed."""
    try:
        from cupy._core import core
        from cupy.cuda import compiler
    except ImportError as exc:
        pytest.skip(f"CuPy is not installed: {exc}")

    seen = []

    class Recorded(Exception):
        pass

    class RecordingProgram:
        def __init__(self, *args, **kwargs):
            pass

        def compile(self, options=(), log_stream=None):
            seen.append(tuple(options))
            raise Recorded

    monkeypatch.setenv("CUPY_CACHE_IN_MEMORY", "1")  # never a cached cubin from disk
    monkeypatch.setattr(compiler, "_get_arch", lambda: "90")
    monkeypatch.setattr(compiler, "_get_arch_for_options_for_nvrtc",
                        lambda arch=None: ("-arch=sm_90", "cubin"))
    monkeypatch.setattr(compiler, "_preprocess", lambda *args, **kwargs: "")
    monkeypatch.setattr(compiler, "_NVRTCProgram", RecordingProgram)
    # What cupy/_core/raw.pyx's _get_raw_module calls for a RawModule built from code.
    with pytest.raises(Recorded):
        core.compile_with_cache(kernels.source_code(source), kernels.COMPILE_OPTIONS,
                                prepend_cupy_headers=False, backend="nvrtc",
                                name_expressions=tuple(kernels.name_expressions(source)))
    return seen[0]


def test_offline_compiles_use_cupys_run_time_options(monkeypatch):
    """NVRTC tests, the CPU harness and the SASS reader compile with kernels.nvrtc_options;
    that must be exactly what CuPy compiles with on a GPU, less include paths (the sources
    are inlined) and --pch (a compile cache)."""
    run_time = _cupy_run_time_options(monkeypatch, "gather.cu")
    code_options = [o for o in run_time if not o.startswith("-I") and o != "--pch"]
    assert sorted(code_options) == sorted(kernels.nvrtc_options("sm_90"))
    assert "-ftz=true" in code_options


def test_harness_and_sass_reader_follow_the_run_time_options():
    from conftest import load_support

    harness, sass = load_support("harness"), load_support("sass")
    assert "-DCOMPAT_FLUSH_DENORMALS=1" in harness.host_flags()
    assert sass.nvcc_options("sm_90") == ["-arch=sm_90", "-std=c++17", "-ftz=true"]


def test_an_option_without_a_host_equivalent_stops_the_harness(monkeypatch):
    from conftest import load_support

    harness = load_support("harness")
    monkeypatch.setattr(kernels, "CUPY_ADDED_OPTIONS", (*kernels.CUPY_ADDED_OPTIONS,
                                                        "-fmad=false"))
    with pytest.raises(RuntimeError, match="'-fmad=false'.*no equivalent"):
        harness.host_flags()
