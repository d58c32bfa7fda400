"""The fused-GEMM plans of one training step, with the sm_90 SASS of each chosen kernel.

A model's choice and SASS counts, not timings: ``python tests/kernels/plan_table.py``
prints the tables of benchmarks/README.md (``--model PATH`` uses another copy of
gpumlp/backends/cuda/plan.py, e.g. an older one, for a before/after comparison).
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from gpumlp.backends.cuda import kernels, plan as gemm_plan

#: The benchmark configurations: layer sizes (ReLU hidden layers, softmax + cross-entropy).
CONFIGS = {"mlp-256": (784, 256, 256, 10), "mlp-512": (784, 512, 512, 10)}
BATCHES = (256, 1024)


@dataclass(frozen=True)
class StepGemm:
    """One fused GEMM of a training step and the plan chosen for it."""

    name: str  # "forward 1", "backward 2", "weight grads 3"
    plan: Any
    expression: str  # the instantiation it launches (ReLU, no dropout)


def step_gemms(sizes: tuple[int, ...], batch: int, model: ModuleType = gemm_plan,
               dtype: str = "float32") -> list[StepGemm]:
    """The fused GEMMs of one step of an MLP of ``sizes`` (ReLU, softmax output) at
    ``batch`` rows, as the CuPy backend plans them: (M, N, K) per gpumlp/backends/cuda/plan.py's
    GEMM_SHAPES."""
    ctype = kernels.DTYPES[dtype]
    layers = len(sizes) - 1
    gemms = []
    for layer in range(1, layers + 1):
        k, m = sizes[layer - 1], sizes[layer]
        plan = model.softmax_xent_plan(dtype, batch, k, m) if layer == layers else None
        if plan is not None:
            expression = f"gemm_softmax_xent<{ctype}, {plan.tile}>"
        else:
            act = 0 if layer == layers else 1
            plan = model.choose("gemm_bias_act", dtype, batch, m, k)
            expression = f"gemm_bias_act<{ctype}, {act}, false, {plan.tile}>"
        gemms.append(StepGemm(f"forward {layer}", plan, expression))
    for layer in range(layers, 1, -1):  # the delta of layer - 1
        k, m = sizes[layer - 1], sizes[layer]
        plan = model.choose("gemm_backprop_act", dtype, batch, k, m)
        gemms.append(StepGemm(f"backward {layer}", plan,
                              f"gemm_backprop_act<{ctype}, 1, false, {plan.tile}>"))
    for layer in range(1, layers + 1):
        k, m = sizes[layer - 1], sizes[layer]
        plan = model.choose("gemm_weight_grads", dtype, k, m, batch)
        gemms.append(StepGemm(f"weight grads {layer}", plan,
                              f"gemm_weight_grads<{ctype}, {plan.tile}>"))
    return gemms


def table(gemms: list[StepGemm], reports: dict[str, Any],
          sm_count: int = gemm_plan.DEFAULT_SM_COUNT) -> str:
    """Markdown: per GEMM its plan, the blocks and warps an SM runs at once (from the
    kernel's registers and shared memory), the model's estimate and the SASS share."""
    lines = ["| GEMM | M x N x K | tile | splits | blocks | blocks/SM (fit) | warps/SM "
             "| model µs | main-loop FFMA share |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for gemm in gemms:
        plan, report = gemm.plan, reports[gemm.expression]
        bm, bn, _, threads = kernels.GEMM_TILES[plan.tile]
        blocks = plan.grid[0] * plan.grid[1] * plan.grid[2]
        fit = gemm_plan.resident_blocks(report.registers, report.shared_bytes, threads)
        together = min(-(-blocks // sm_count), fit)
        lines.append(
            f"| {gemm.name} | {plan.M} x {plan.N} x {plan.K} | {bm}x{bn} | {plan.splits} "
            f"| {blocks} | {together} ({fit}) | {together * threads // 32} "
            f"| {plan.estimate_us:.2f} | {100 * report.ffma_share:.1f} % |")
    return "\n".join(lines) + "\n"


def tables(model: ModuleType = gemm_plan) -> str:
    """The tables of every configuration and batch, one nvcc build for all kernels."""
    sass = _load_sibling("sass")
    runs = {(name, batch): step_gemms(sizes, batch, model)
            for name, sizes in CONFIGS.items() for batch in BATCHES}
    expressions = sorted({g.expression for gemms in runs.values() for g in gemms})
    with tempfile.TemporaryDirectory() as tmp:
        reports = {r.expression: r for r in sass.analyse(expressions, Path(tmp))}
    parts = []
    for (name, batch), gemms in runs.items():
        narrow = sum(kernels.GEMM_TILES[g.plan.tile][1] == 16 for g in gemms)
        parts.append(f"**{name}, batch {batch}** ({narrow} of {len(gemms)} GEMMs on the "
                     f"64x16 tile)\n\n{table(gemms, reports)}")
    return "\n".join(parts)


def _load_sibling(name: str) -> ModuleType:
    key = f"gpumlp_test_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).parent / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def load_model(path: str) -> ModuleType:
    """Another copy of gpumlp/backends/cuda/plan.py, imported inside gpumlp.backends.cuda."""
    spec = importlib.util.spec_from_file_location("gpumlp.backends.cuda._plan_under_comparison", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    args = sys.argv[1:]
    model = load_model(args[args.index("--model") + 1]) if "--model" in args else gemm_plan
    print(tables(model), end="")
