"""The fused GEMMs' sm_90 SASS as a speed proxy (no GPU needed; nvcc and cuobjdump are).

Compiles gemm.cu with nvcc for sm_90, disassembles it with cuobjdump (PyPI's
``nvidia-cuda-cuobjdump`` and ``nvidia-cuda-nvdisasm``, the ``kernels`` extra) and reads the
hottest loop of each GEMM (tests/kernels/sass.py).  The float32 forward GEMM with the large
tile, the one that carries the big layers, must keep its main loop at least 70 % FFMA, use
128-bit shared loads and touch no local memory anywhere; every float32 GEMM must be free of
local memory and spills.  The table is printed (``pytest -s``) and kept in
benchmarks/README.md: SASS counts, not measurements.
"""

from __future__ import annotations

import pytest

from conftest import load_support

from gpumlp.backends.cuda import kernels, plan as gemm_plan

pytestmark = pytest.mark.kernels

sass = load_support("sass")

#: The forward GEMM that must be cuBLAS-class by construction (ReLU, no dropout / dropout).
GATED = ["gemm_bias_act<float, 1, false, 1>", "gemm_bias_act<float, 1, true, 1>"]
MIN_FFMA_SHARE = 0.70


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    try:
        sass.find_tools()
    except sass.ToolsUnavailable as exc:
        pytest.skip(str(exc))
    found = sass.analyse(sass.REPORTED, tmp_path_factory.mktemp("sass"))
    print("\nsm_90 SASS of the fused GEMMs (instruction counts, not measurements):\n"
          + sass.table(found))
    return {report.expression: report for report in found}


@pytest.mark.parametrize("expression", GATED)
def test_forward_gemm_main_loop_is_ffma_bound(reports, expression):
    report = reports[expression]
    assert report.loop_instructions > 0, f"{expression}: no loop found in the SASS"
    assert report.ffma_share >= MIN_FFMA_SHARE, (
        f"{expression}: hottest loop is {100 * report.ffma_share:.1f} % FFMA "
        f"({report.loop_ffma} of {report.loop_instructions}); needs >= 70 %")
    assert report.loop_lds128 > 0, f"{expression}: no 128-bit shared loads (LDS.128)"
    assert report.loop_local == 0 and report.kernel_local == 0, \
        f"{expression}: local memory ({report.kernel_local} LDL/STL)"


def test_no_float32_gemm_spills_or_uses_local_memory(reports):
    offenders = {e: (r.spill_bytes, r.stack_bytes, r.kernel_local) for e, r in reports.items()
                 if "float" in e and (r.spill_bytes or r.stack_bytes or r.kernel_local)}
    assert not offenders, f"(spill bytes, stack bytes, LDL/STL) per kernel: {offenders}"


def test_every_gemm_main_loop_uses_vector_shared_loads(reports):
    for expression, report in reports.items():
        if report.loop_hmma:  # wmma fragment loads are the tensor-core tile's shared loads
            continue
        assert report.loop_lds128 > 0, f"{expression}: no LDS.128 in the hottest loop"


def test_tf32_gemm_main_loop_runs_on_tensor_cores(reports):
    """The TF32 tile's main loop is HMMA (TF32 m16n8k4 steps), not FFMA, reads its
    fragments from shared memory with LDS (not generic loads) and uses no local memory."""
    tf32 = [r for e, r in reports.items() if e.endswith(", 3>")]
    assert tf32, "no TF32 kernel in sass.REPORTED"
    for report in tf32:
        assert report.loop_hmma > 0 and report.loop_ffma == 0, report
        assert report.kernel_local == 0 and report.spill_bytes == 0, report


def test_loop_finder_picks_the_main_loop():
    """A tile loop holding the main loop and an FFMA epilogue is not the hottest loop, nor is
    an FMA-free loop (the branch-to-self after EXIT)."""
    main = [("FFMA", "", "L_x_1|0x20"), ("FFMA", "", "0x30"), ("FFMA", "", "0x40"),
            ("LDS.128", "", "0x50"), ("BRA", " `(.L_x_1)", "0x60")]
    epilogue = [("FFMA", "", "0x70"), ("FFMA", "", "0x80"), ("STG.E", "", "0x90")]
    body = [("S2R", "", "0x0"), ("IMAD", "", "L_x_0|0x10"), *main, *epilogue,
            ("BRA", " 0x10", "0xa0"), ("EXIT", "", "0xb0"), ("BRA", " 0xc0", "0xc0")]
    assert sass.hottest_loop(body) == (2, 6)  # 3 FMAs of its own; the tile loop has 2
    assert sass.occupancy(128, 33 * 1024, 256) == 0.25
    assert sass.occupancy(64, 17 * 1024, 256) == 0.5


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    """ptxas's registers and shared memory of every GEMM instantiation the plan models."""
    try:
        sass.find_tools()
    except sass.ToolsUnavailable as exc:
        pytest.skip(str(exc))
    expressions = {}
    for kernel, dtype, tile in gemm_plan.KERNEL_RESOURCES:
        ctype = kernels.DTYPES[dtype]
        args = f"{ctype}, {tile}" if kernel in ("gemm_weight_grads", "gemm_softmax_xent") \
            else f"{ctype}, 1, false, {tile}"
        expressions[f"{kernel}<{args}>"] = (kernel, dtype, tile)
    found = sass.analyse(list(expressions), tmp_path_factory.mktemp("resources"))
    return {expressions[r.expression]: (r.registers, r.shared_bytes) for r in found}


def test_plan_knows_every_gemm_instantiation():
    expected = {(kernel, dtype, tile) for kernel in gemm_plan.GEMM_SHAPES
                for dtype in kernels.DTYPES for tile in kernels.gemm_tiles(kernel, dtype)}
    assert set(gemm_plan.KERNEL_RESOURCES) == expected


def test_plan_resources_are_the_compilers(resources):
    """The plan counts resident blocks from these figures: they must be nvcc's (with the
    run-time options) for the kernels as they are now."""
    assert resources == gemm_plan.KERNEL_RESOURCES
