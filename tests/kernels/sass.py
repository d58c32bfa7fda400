"""Read a kernel's sm_90 SASS (nvcc + cuobjdump) as a speed proxy where there is no GPU.

For each kernel: registers, spills and local memory (ptxas), static shared memory, the
theoretical occupancy on an H100 SM, and the hottest loop: among the loops of the SASS (a
backward branch to an earlier label), the one with the most FFMA (DFMA for float64, HMMA
for the TF32 tensor-core tile), innermost on ties.  Its FFMA share is FFMA / all instructions of the loop body (NOPs excluded): the FMA
pipe can be busy at most that share of the issue slots, so it bounds the fraction of FP32
peak the loop can reach.  These are instruction counts, not measurements.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from gpumlp.backends.cuda import kernels
from gpumlp.backends.cuda import plan as gemm_plan

ARCH = "sm_90"


class ToolsUnavailable(RuntimeError):
    """nvcc, cuobjdump or nvdisasm is missing; the message says how to get it."""


def _venv_cuda_bins() -> list[str]:
    """The bin folders of PyPI's nvidia-cuda-* wheels in this environment."""
    base = Path(sysconfig.get_paths()["purelib"]) / "nvidia"
    return [str(p) for p in sorted(base.glob("*/bin")) if p.is_dir()]


def find_tools() -> dict[str, str]:
    """Paths of nvcc, cuobjdump and nvdisasm (PATH, /usr/local/cuda*, the venv's wheels)."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/bin",
                              *sorted(map(str, Path("/usr/local").glob("cuda*/bin"))),
                              *_venv_cuda_bins()])
    tools = {name: shutil.which(name, path=search) for name in ("nvcc", "cuobjdump", "nvdisasm")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        raise ToolsUnavailable(
            f"{', '.join(missing)} not found: install the CUDA toolkit's nvcc and "
            "`pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm` (the `kernels` extra)")
    return tools


def instantiation_source(expressions: list[str]) -> str:
    """gemm.cu with explicit instantiations of ``expressions`` (nvcc has no name expressions)."""
    lines = [kernels.source_code("gemm.cu")]
    for expression in expressions:
        name, params = expression.split("<", 1)
        ctype = params.split(",")[0].rstrip(">").strip()
        signature = ", ".join(kernels.KERNELS[name].signature)
        signature = re.sub(r"\bT\b", ctype, signature)
        lines.append(f"template __global__ void {name}<{params}({signature});")
    return "\n".join(lines) + "\n"


@dataclass
class KernelReport:
    expression: str
    registers: int
    spill_bytes: int
    stack_bytes: int
    shared_bytes: int
    threads: int
    occupancy: float  # resident warps / 64
    loop_instructions: int
    loop_ffma: int
    loop_hmma: int
    loop_lds128: int
    loop_local: int
    kernel_local: int

    @property
    def ffma_share(self) -> float:
        return self.loop_ffma / self.loop_instructions if self.loop_instructions else 0.0


def occupancy(registers: int, shared: int, threads: int) -> float:
    """Theoretical occupancy (resident warps / 64) on an H100 SM, counted as the GEMM plan
    counts resident blocks (registers per scheduler: a 2-warp block of 173 registers fits 4
    times, not the 5 a whole-SM count gives)."""
    warps = -(-threads // 32)
    return gemm_plan.resident_blocks(registers, shared, threads) * warps / (
        gemm_plan.SM_THREADS // 32)


_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_LABEL = re.compile(r"^\s*\.(L_x_\d+):")
_BRANCH_TARGET = re.compile(r"`\(\.(L_x_\d+)\)|^\s*(0x[0-9a-f]+)\s*$")


def parse_functions(sass: str) -> dict[str, list[tuple[str, str, str | None]]]:
    """``{mangled name: [(opcode, operands, label or None), ...]}``: the label is the one
    defined just before the instruction, else its address (``0x1a0``), as branches name
    their targets one way or the other depending on the cuobjdump version."""
    functions: dict[str, list] = {}
    current: list | None = None
    pending_label = None
    for line in sass.splitlines():
        if "Function :" in line:
            current = functions.setdefault(line.split("Function :")[1].strip(), [])
            pending_label = None
            continue
        if current is None:
            continue
        label = _LABEL.match(line)
        if label:
            pending_label = label.group(1)
            continue
        found = _INSTRUCTION.search(line)
        if found:
            address = hex(int(found.group(1), 16))
            current.append((found.group(2), found.group(3), pending_label or address))
            if pending_label:  # a branch may name either
                current[-1] = (found.group(2), found.group(3), f"{pending_label}|{address}")
            pending_label = None
    return functions


def is_op(opcode: str, name: str) -> bool:
    """Whether ``opcode`` is ``name`` with any modifiers: ``FFMA.FTZ`` (the -ftz=true build)
    is an FFMA, ``HMMA.1684.F32.TF32`` one TF32 m16n8k8 tensor-core step."""
    return opcode == name or opcode.startswith(name + ".")


def hottest_loop(instructions: list[tuple[str, str, str | None]], fma: str = "FFMA"
                 ) -> tuple[int, int] | None:
    """``(first, last)`` indices of the hottest loop: the loop with the most ``fma``
    instructions of its own (not counting those of the loops nested in it).  So the main
    loop, not the tile loop around it (whose own FMAs are the epilogue's), nor the staging
    loops inside an old main loop (which hold none)."""
    where = {name: i for i, (_, _, label) in enumerate(instructions) if label
             for name in label.split("|")}
    best, best_key, loops = None, None, []  # loops: (first, last) of each backward branch
    for j, (opcode, operands, _) in enumerate(instructions):
        if not opcode.startswith("BRA"):
            continue
        target = _BRANCH_TARGET.search(operands)
        name = target and (target.group(1) or hex(int(target.group(2), 16)))
        if not name or where.get(name, j + 1) > j:
            continue
        loops.append((where[name], j))
    loops = sorted(set(loops))
    counts = {(i, j): sum(1 for op, _, _ in instructions[i:j + 1] if is_op(op, fma))
              for i, j in loops}

    def inside(inner, outer):
        return inner != outer and outer[0] <= inner[0] and inner[1] <= outer[1]

    for loop in loops:
        nested = [other for other in loops if inside(other, loop)]
        children = [c for c in nested if not any(inside(c, other) for other in nested)]
        own = counts[loop] - sum(counts[c] for c in children)
        key = (own, -(loop[1] - loop[0]))  # most FMAs of its own, then the tightest
        if best_key is None or key > best_key:
            best, best_key = loop, key
    return best


def _ptxas_usage(log: str) -> dict[str, dict[str, int]]:
    usage: dict[str, dict[str, int]] = {}
    name = None
    for line in log.splitlines():
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            name = m.group(1)
            usage.setdefault(name, {})
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads",
                      line)
        if m and name:
            usage[name].update(stack=int(m.group(1)), spill=int(m.group(2)) + int(m.group(3)))
        m = re.search(r"Compiling entry function '(\S+)'", line)
        if m:
            name = m.group(1)
            usage.setdefault(name, {})
        m = re.search(r"Used (\d+) registers", line)
        if m and name:
            usage[name]["registers"] = int(m.group(1))
        m = re.search(r"(\d+) bytes smem", line)
        if m and name:
            usage[name]["shared"] = int(m.group(1))
    return usage


#: Run-time NVRTC options nvcc does not take, with why leaving them out changes nothing here.
NVRTC_ONLY = {
    # gemm.cu marks every function __device__ or __global__ itself.
    "--device-as-default-execution-space",
}


def nvcc_options(arch: str) -> list[str]:
    """The run-time compile's options (``kernels.nvrtc_options``) as nvcc takes them, so
    the SASS read here is the SASS CuPy loads (NVRTC optimises as nvcc -O3 does)."""
    return [option for option in kernels.nvrtc_options(arch) if option not in NVRTC_ONLY]


def analyse(expressions: list[str], workdir: Path, arch: str = ARCH) -> list[KernelReport]:
    """Compile ``expressions`` of gemm.cu with nvcc for ``arch`` and read their SASS."""
    tools = find_tools()
    workdir.mkdir(parents=True, exist_ok=True)
    source, cubin = workdir / "gemm_sass.cu", workdir / "gemm_sass.cubin"
    source.write_text(instantiation_source(expressions), encoding="utf-8")
    compiled = subprocess.run(
        [tools["nvcc"], *nvcc_options(arch), "-cubin", "-O3", "-Xptxas", "-v",
         str(source), "-o", str(cubin)], capture_output=True, text=True)
    if compiled.returncode != 0:
        raise RuntimeError(f"nvcc failed:\n{compiled.stderr}")
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(tools["nvdisasm"]).parent),
                                                 os.environ.get("PATH", "")]))
    sass = subprocess.run([tools["cuobjdump"], "-sass", str(cubin)], capture_output=True,
                          text=True, env=env, check=True).stdout
    functions = parse_functions(sass)
    usage = _ptxas_usage(compiled.stderr)
    reports = []
    for expression in expressions:
        name, params = expression.split("<", 1)
        dtype = params.split(",")[0].strip().rstrip(">")
        tile = int(params.rstrip(">").split(",")[-1])
        mangled = _mangled(name, dtype, functions, usage, expression)
        body = functions[mangled]
        info = usage.get(mangled, {})
        main_op = "DFMA" if dtype == "double" else (
            "HMMA" if kernels.GEMM_TILE_PRECISION[tile] == "tf32" else "FFMA")
        loop = hottest_loop(body, main_op)
        i, j = loop if loop else (0, -1)
        loop_body = [op for op, _, _ in body[i:j + 1] if op != "NOP"]
        threads = kernels.GEMM_TILES[tile][3]
        shared = info.get("shared", 0)
        reports.append(KernelReport(
            expression=expression, registers=info.get("registers", 0),
            spill_bytes=info.get("spill", 0), stack_bytes=info.get("stack", 0),
            shared_bytes=shared, threads=threads,
            occupancy=occupancy(info.get("registers", 0), shared, threads),
            loop_instructions=len(loop_body),
            loop_ffma=sum(is_op(op, "DFMA" if dtype == "double" else "FFMA")
                          for op in loop_body),
            loop_hmma=sum(is_op(op, "HMMA") for op in loop_body),
            loop_lds128=sum(op.startswith("LDS.128") for op in loop_body),
            loop_local=sum(op.startswith(("LDL", "STL")) for op in loop_body),
            kernel_local=sum(op.startswith(("LDL", "STL")) for op, _, _ in body)))
    return reports


def _mangled(name, dtype, functions, usage, expression) -> str:
    """The mangled symbol of ``expression`` (Itanium ABI: template args after ``I``)."""
    params = [p.strip() for p in expression.split("<", 1)[1].rstrip(">").split(",")]
    code = {"float": "f", "double": "d"}[dtype]
    parts = [code]
    for p in params[1:]:
        parts.append(f"Lb{int(p == 'true')}E" if p in ("true", "false") else f"Li{p}E")
    prefix = f"_Z{len(name)}{name}I{''.join(parts)}E"
    matches = [f for f in functions if f.startswith(prefix)]
    if len(matches) != 1:
        raise RuntimeError(f"{expression}: expected one SASS function {prefix}*, "
                           f"found {matches}")
    return matches[0]


def table(reports: list[KernelReport]) -> str:
    """A Markdown table of the reports (SASS counts, not measurements)."""
    lines = ["| kernel | threads | registers | spill bytes | shared KB | occupancy | "
             "hottest loop: instructions | FFMA | HMMA | LDS.128 | local | FFMA share |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        lines.append(f"| `{r.expression}` | {r.threads} | {r.registers} | {r.spill_bytes} | "
                     f"{r.shared_bytes / 1024:.1f} | {100 * r.occupancy:.0f} % | "
                     f"{r.loop_instructions} | {r.loop_ffma} | {r.loop_hmma} | {r.loop_lds128} | "
                     f"{r.loop_local} | {100 * r.ffma_share:.1f} % |")
    return "\n".join(lines) + "\n"


#: The instantiations reported: every float32 tile of the three GEMMs (ReLU, with and
#: without dropout for the forward), the float64 tile and the TF32 tensor-core forward.
REPORTED = [
    "gemm_bias_act<float, 1, false, 1>", "gemm_bias_act<float, 1, true, 1>",
    "gemm_bias_act<float, 1, false, 0>", "gemm_bias_act<float, 1, false, 2>",
    "gemm_backprop_act<float, 1, false, 1>", "gemm_backprop_act<float, 1, true, 0>",
    "gemm_backprop_act<float, 1, true, 1>",
    "gemm_weight_grads<float, 1>", "gemm_weight_grads<float, 0>", "gemm_weight_grads<float, 2>",
    "gemm_bias_act<double, 1, false, 0>", "gemm_bias_act<float, 1, false, 3>",
    "gemm_softmax_xent<float, 2>", "gemm_softmax_xent<float, 3>",
]

if __name__ == "__main__":
    # python tests/kernels/sass.py [--keep DIR] [expression ...]: print the table.
    import tempfile

    args = sys.argv[1:]
    keep = Path(args.pop(args.index("--keep") + 1)) if "--keep" in args else None
    if keep:
        args.remove("--keep")
    with tempfile.TemporaryDirectory() as tmp:
        print(table(analyse(args or REPORTED, keep or Path(tmp))), end="")
