"""The raw CUDA kernels: where their sources live, what is instantiated, how they compile.

The sources in ``kernels/*.cu`` are C++ templates over the dtype ``T`` and compile-time flags.
:data:`KERNELS` describes each template once (source file, template parameters, C++ parameter
list, launch shape); every NVRTC name expression (``"gemm_bias_act<float, 1, true>"``) is
derived from it, so there is no hand-kept list of kernel names to drift.

Two ways to compile:

* :func:`nvrtc_compile_all` drives NVRTC directly (through CuPy's low-level binding). It needs
  neither a GPU nor a driver, which is how CI proves every instantiation compiles.
* :func:`get_kernel` is the GPU path: it builds one :class:`cupy.RawModule` per source file,
  lazily, once per process, and returns the launchable function.  CuPy 14.2.0 and later
  also cache modules built with ``name_expressions`` on disk, so the next process loads the
  CUBIN instead of compiling; 14.1.1 and earlier recompile every process (their compiler
  skips the disk cache for ``name_expressions``), which is why the extras ask for >= 14.2.
  A failure raises :class:`KernelsUnavailable`; the backend then warns once naming the
  kernel and does without that kernel alone; ``GPUMLP_KERNELS=off`` drops them all.

Importing this module never imports CuPy.

Examples
--------
>>> from gpumlp.backends.cuda import kernels
>>> kernels.name_expression("gemm_bias_act", "float32", act="relu", dropout=True, tile=1)
'gemm_bias_act<float, 1, true, 1>'
>>> kernels.launch_config("gemm_bias_act", 256, 300)
((5, 4, 1), (256, 1, 1))
"""

from __future__ import annotations

import itertools
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ... import activations, config
from ...precision import PRECISIONS, check_precision

__all__ = ["KERNELS", "KernelSpec", "KernelsUnavailable", "NvrtcCompileError", "PRECISIONS",
           "check_precision", "gemm_tiles", "get_kernel", "kernel_dir", "kernels_enabled",
           "launch_config", "load_module", "name_expression", "name_expressions",
           "nvrtc_compile_all", "source_code", "sources"]

#: NumPy dtype name -> C++ type of ``T``.
DTYPES: dict[str, str] = {"float32": "float", "float64": "double"}
ALL_ACTS = tuple(sorted(activations.CODES.values()))
#: Activations with a derivative: the backward kernels are not instantiated for the others.
DIFFERENTIABLE_ACTS = tuple(code for name, code in sorted(activations.CODES.items(),
                                                          key=lambda item: item[1])
                            if name not in activations.INFERENCE_ONLY)
#: Options gpumlp passes to ``cupy.RawModule``; the headers are inlined by
#: :func:`source_code`, so no -I.
COMPILE_OPTIONS = ("-std=c++17",)
#: Options CuPy's NVRTC route adds to those at run time that change the generated code
#: (CuPy 14, ``cupy/cuda/compiler.py``): ``-ftz=true`` (float32 denormals flushed to zero) and
#: ``--device-as-default-execution-space``.  Its include paths, ``--pch`` (a compile cache)
#: and the ``-arch`` of the device are left out.  The NVRTC tests, the CPU harness and the
#: SASS reader all compile with :func:`nvrtc_options`, and a test checks this tuple against
#: CuPy's own option assembly.
CUPY_ADDED_OPTIONS = ("-ftz=true", "--device-as-default-execution-space")


def nvrtc_options(arch: str) -> list[str]:
    """Every option of a run-time compile for ``arch`` (``sm_90``): ours, then CuPy's."""
    return [f"-arch={arch}", *COMPILE_OPTIONS, *CUPY_ADDED_OPTIONS]


_DROPOUT_ARGS = ("T keep", "unsigned long long seed", "const long long* counter_base",
                 "long long counter_offset")
#: Split-K scratch of the GEMMs (both may be null with one split); see gpumlp/backends/cuda/plan.py.
_SPLIT_ARGS = ("T* workspace", "int* tile_counters")
#: GEMM tiles (GPUMLP_GEMM_TILE_* in kernels/gemm_tile.cuh): code -> (BM, BN, BK, threads).
#: Tile 3 is the TF32 tensor-core tile (sm_80+, float32 inputs rounded to TF32).
GEMM_TILES: dict[int, tuple[int, int, int, int]] = {0: (64, 64, 16, 256), 1: (128, 128, 16, 256),
                                                    2: (64, 16, 16, 64), 3: (64, 64, 16, 64)}
#: The tiles instantiated per dtype: float64 keeps the one simple tile.  Per kernel, the
#: backward GEMM (whose output is never thin) has no narrow tile: see KERNELS.
GEMM_TILES_BY_DTYPE: dict[str, tuple[int, ...]] = {"float32": (0, 1, 2, 3), "float64": (0,)}
#: The precision each tile computes in (see gpumlp.precision).
GEMM_TILE_PRECISION: dict[int, str] = {0: "float32", 1: "float32", 2: "float32", 3: "tf32"}
#: Devices with TF32 tensor cores: compute capability 8.0 (Ampere) and later.
TF32_MIN_CAPABILITY = 80


def gemm_tiles(kernel: str, dtype: Any, precision: str | None = None) -> tuple[int, ...]:
    """The tiles ``kernel`` is instantiated with for ``dtype``; with ``precision``, only
    those that compute in it (the TF32 tile for ``"tf32"``, the FP32 ones for ``"float32"``)."""
    spec = _spec_for(kernel)
    allowed = GEMM_TILES_BY_DTYPE[_dtype_name(dtype)]
    return tuple(t for t in spec.tiles if t in allowed
                 and (precision is None or GEMM_TILE_PRECISION[t] == precision))


@dataclass(frozen=True)
class KernelSpec:
    """One kernel template.

    ``template`` names its template parameters in order (``"dtype"`` is ``T``; ``"act"`` an
    activation code from ``acts``; other names are booleans); ``signature`` is its C++
    parameter list with ``T`` for the dtype; ``launch`` selects the rule in
    :func:`launch_config`.
    """

    name: str
    source: str
    template: tuple[str, ...]
    signature: tuple[str, ...]
    launch: str
    acts: tuple[int, ...] = ()
    #: GEMM tiles instantiated (for float32; float64 has tile 0 only): see :func:`gemm_tiles`.
    tiles: tuple[int, ...] = ()
    #: Pointer parameters the kernel only ever updates by ``atomicAdd`` (never reads or
    #: stores otherwise): launches that may run at the same time can share them.
    atomic: tuple[str, ...] = ()

    def grid(self) -> list[dict[str, Any]]:
        """Every instantiation, as keyword arguments of :func:`name_expression`."""
        axes = {"dtype": tuple(DTYPES), "act": self.acts, "tile": self.tiles}
        values = [axes.get(p, (False, True)) for p in self.template]
        combos = [dict(zip(self.template, combo)) for combo in itertools.product(*values)]
        return [c for c in combos
                if "tile" not in c or c["tile"] in gemm_tiles(self.name, c["dtype"])]


def _spec(name, source, template, signature, launch, acts=(), tiles=(), atomic=()):
    return name, KernelSpec(name, source, template, tuple(signature), launch, acts, tiles,
                            atomic)


KERNELS: dict[str, KernelSpec] = dict([
    _spec("gemm_bias_act", "gemm.cu", ("dtype", "act", "dropout", "tile"),
          ("T* out", "const T* x", "const T* w", "const T* b", "long long n", "long long k",
           "long long m", *_DROPOUT_ARGS, *_SPLIT_ARGS), "gemm", ALL_ACTS, (0, 1, 2, 3)),
    _spec("gemm_backprop_act", "gemm.cu", ("dtype", "act", "dropout", "tile"),
          ("T* out", "const T* h_next", "const T* w_next", "const T* a", "long long n",
           "long long k", "long long m", *_DROPOUT_ARGS, *_SPLIT_ARGS), "gemm",
          DIFFERENTIABLE_ACTS, (0, 1, 3)),
    _spec("gemm_weight_grads", "gemm.cu", ("dtype", "tile"),
          ("T* dw", "T* db", "const T* a_prev", "const T* h", "const T* w", "long long n",
           "long long k", "long long m", "T decay", *_SPLIT_ARGS), "gemm", (), (0, 1, 2, 3)),
    _spec("gemm_softmax_xent", "gemm.cu", ("dtype", "tile"),
          ("T* h", "T* loss_acc", "const T* x", "const T* w", "const T* b", "const T* t",
           "long long n", "long long k", "long long m", *_SPLIT_ARGS), "gemm", (),
          (0, 1, 2, 3), atomic=("loss_acc",)),
    _spec("bias_act", "epilogue.cu", ("dtype", "act", "dropout"),
          ("T* z", "const T* b", "long long n", "long long m", *_DROPOUT_ARGS), "flat4",
          ALL_ACTS),
    _spec("act_grad", "epilogue.cu", ("dtype", "act", "dropout"),
          ("T* out", "const T* delta", "const T* a", "long long size", *_DROPOUT_ARGS),
          "flat4", DIFFERENTIABLE_ACTS),
    _spec("apply_act", "epilogue.cu", ("dtype", "act"),
          ("T* out", "const T* z", "long long size"), "flat", ALL_ACTS),
    _spec("softmax_xent", "loss.cu", ("dtype",),
          ("T* h", "T* loss_acc", "const T* z", "const T* t", "long long n", "long long k"),
          "rows", atomic=("loss_acc",)),
    _spec("softmax_rows", "loss.cu", ("dtype",),
          ("T* out", "const T* z", "long long n", "long long k"), "rows"),
    _spec("sigmoid_bce", "loss.cu", ("dtype",),
          ("T* h", "T* loss_acc", "const T* z", "const T* t", "long long n", "long long k"),
          "flat4", atomic=("loss_acc",)),
    _spec("squared_error", "loss.cu", ("dtype",),
          ("T* h", "T* loss_acc", "const T* a", "const T* t", "long long n", "long long k"),
          "flat4", atomic=("loss_acc",)),
    _spec("add_weights_l2_loss", "loss.cu", ("dtype",),
          ("T* loss_acc", "const T* params", "const long long* spans", "long long n_layers",
           "T scale"), "flat4", atomic=("loss_acc",)),
    _spec("adam_step", "optim.cu", ("dtype",),
          ("T* params", "T* m", "T* v", "const T* grads", "long long size", "const T* lr",
           "const int* step", "double beta1", "double beta2", "double eps"), "flat"),
    _spec("sgd_step", "optim.cu", ("dtype", "nesterov"),
          ("T* params", "T* velocity", "const T* grads", "long long size", "const T* lr",
           "double momentum"), "flat"),
    _spec("gather_rows", "gather.cu", ("dtype",),
          ("T* out", "const T* src", "const long long* perm", "const long long* start",
           "long long rows", "long long cols"), "flat"),
    _spec("gather_batch", "gather.cu", ("dtype",),
          ("T* xb", "T* tb", "const T* x", "const T* t", "const long long* perm",
           "long long* start", "long long rows", "long long x_cols", "long long t_cols",
           "long long* counter_base", "long long counters_per_step", "int* step",
           "int* blocks_done"), "flat"),
    _spec("advance_step", "step.cu", (),
          ("long long* start", "long long rows", "long long* counter_base",
           "long long counters_per_step", "int* step"), "single"),
])

# Launch geometry; must agree with the constants in kernels/common.cuh and gemm_tile.cuh.
BLOCK = 256
MAX_GRID_Y = 65535
MAX_GRID_Z = 65535
#: Cap on 1-D grids: the kernels stride over the rest, and more blocks only add scheduling.
MAX_BLOCKS = 65535


# ------------------------------------------------------------------------------ naming
def _spec_for(kernel: str) -> KernelSpec:
    try:
        return KERNELS[kernel]
    except KeyError:
        raise ValueError(f"kernel={kernel!r} is not a gpumlp kernel; choose one of "
                         f"{sorted(KERNELS)}") from None


def _dtype_name(dtype: Any) -> str:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = repr(dtype)
    if name not in DTYPES:
        raise TypeError(f"dtype={dtype!r} has no kernels; allowed: {sorted(DTYPES)}")
    return name


def name_expression(kernel: str, dtype: Any = None, **params: Any) -> str:
    """The C++ name expression of one instantiation, e.g. ``'act_grad<double, 4, false>'``.

    ``act`` may be a code or a name (``"relu"``); boolean flags take any truthy value.
    """
    spec = _spec_for(kernel)
    expected = set(spec.template) - {"dtype"}
    if set(params) != expected:
        raise TypeError(f"{kernel} takes template parameters {sorted(expected)}, "
                        f"got {sorted(params)}")
    args = []
    for p in spec.template:
        if p == "dtype":
            args.append(DTYPES[_dtype_name(dtype)])
        elif p == "tile":
            tile = params["tile"]
            allowed = gemm_tiles(kernel, dtype)
            if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) \
                    or int(tile) not in allowed:
                raise ValueError(f"{kernel} has no instantiation for tile={tile!r} with "
                                 f"dtype={_dtype_name(dtype)}; allowed tiles: {allowed}")
            args.append(str(int(tile)))
        elif p == "act":
            act = params["act"]
            code = activations.CODES[activations.canonical(act)] if isinstance(act, str) else act
            if code not in spec.acts:
                raise ValueError(f"{kernel} has no instantiation for act={act!r}; "
                                 f"allowed codes: {spec.acts}")
            args.append(str(int(code)))
        else:
            args.append("true" if params[p] else "false")
    return f"{kernel}<{', '.join(args)}>" if spec.template else kernel


def name_expressions(source: str | None = None) -> list[str]:
    """Every instantiation (of one source file, or of all), derived from :data:`KERNELS`."""
    return [name_expression(spec.name, **combo) for spec in KERNELS.values()
            if source is None or spec.source == source for combo in spec.grid()]


def sources() -> list[str]:
    """The ``.cu`` files that hold kernels, in :data:`KERNELS` order."""
    return list(dict.fromkeys(spec.source for spec in KERNELS.values()))


def launch_config(kernel: str, *shape: int, tile: int = 0, splits: int = 1
                  ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(grid, block)`` for a launch; ``shape`` is the output's shape.

    GEMMs: the ``(M, N)`` output, with the ``tile`` (a key of :data:`GEMM_TILES`) and the
    number of k ``splits`` (grid z; see :mod:`gpumlp.backends.cuda.plan`); row kernels (softmax):
    ``(n, k)``; elementwise kernels: any shape (only its size matters).  Every kernel
    strides, so a smaller grid in x and y stays correct.
    """
    spec = _spec_for(kernel)
    if not shape or any(int(s) < 0 for s in shape):
        raise ValueError(f"shape={shape!r} must be one or more non-negative sizes")
    size = int(np.prod([int(s) for s in shape]))

    def blocks(items: int, per_block: int, cap: int = MAX_BLOCKS) -> int:
        return max(1, min(-(-items // per_block), cap))

    if spec.launch == "gemm":
        if len(shape) != 2:
            raise ValueError(f"{kernel} needs the (M, N) output shape, got {shape!r}")
        rows, cols = (int(s) for s in shape)
        if tile not in GEMM_TILES:
            raise ValueError(f"tile={tile!r} is not a GEMM tile; choose one of "
                             f"{sorted(GEMM_TILES)}")
        if isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) \
                or not 1 <= splits <= MAX_GRID_Z:
            raise ValueError(f"splits={splits!r} must be an integer in [1, {MAX_GRID_Z}]")
        bm, bn, _, threads = GEMM_TILES[tile]
        return ((blocks(cols, bn, 2**31 - 1), blocks(rows, bm, MAX_GRID_Y), int(splits)),
                (threads, 1, 1))
    if spec.launch == "rows":
        if len(shape) != 2:
            raise ValueError(f"{kernel} needs the (n, k) shape, got {shape!r}")
        n, k = (int(s) for s in shape)
        lanes = min(32, 1 << max(0, k - 1).bit_length())  # smallest power of two >= k
        rows_per_block = BLOCK // lanes
        return (blocks(n, rows_per_block), 1, 1), (lanes, rows_per_block, 1)
    if spec.launch == "single":
        return (1, 1, 1), (1, 1, 1)
    items = -(-size // 4) if spec.launch == "flat4" else size
    return (blocks(items, BLOCK), 1, 1), (BLOCK, 1, 1)


# ------------------------------------------------------------------------------ sources
def kernel_dir() -> Any:
    """The directory of the CUDA sources: the wheel's ``gpumlp.kernel_sources`` package if
    installed, else the repository's ``kernels/`` beside the package (a Path or Traversable).
    """
    candidates = []
    try:
        from importlib.resources import files

        candidates.append(files("gpumlp.kernel_sources"))
    except Exception:  # not installed from a wheel: ModuleNotFoundError and friends
        pass
    candidates.append(Path(__file__).resolve().parents[3] / "kernels")
    for candidate in candidates:
        if candidate.joinpath(sources()[0]).is_file():
            return candidate
    raise FileNotFoundError(
        "gpumlp's CUDA sources were not found: looked in the gpumlp.kernel_sources package and "
        f"in {candidates[-1]}; reinstall gpumlp or run from a full checkout")


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.MULTILINE)


def source_code(source: str) -> str:
    """The text of ``source`` with its local ``#include "x.cuh"`` headers inlined.

    Inlining makes the text self-contained, so CuPy's cache key (which hashes the code, not
    the headers) changes whenever a header does, and no include path is needed.
    """
    if source not in sources():
        raise ValueError(f"source={source!r} is not a kernel source; choose one of {sources()}")
    root = kernel_dir()
    seen: set[str] = set()

    def expand(name: str) -> str:
        if name in seen:  # the headers have include guards; inlining each once is enough
            return ""
        seen.add(name)
        path = root.joinpath(name)
        if not path.is_file():
            raise FileNotFoundError(f"kernel header {name!r} (included by {source}) not found")
        body = _INCLUDE.sub(lambda m: expand(m.group(1)), path.read_text(encoding="utf-8"))
        return f"// ---- {name}\n{body}\n"

    return expand(source)


# ------------------------------------------------------------------------------ NVRTC
class NvrtcCompileError(RuntimeError):
    """NVRTC rejected a kernel source; the message holds the compiler log."""


@dataclass(frozen=True)
class CompiledSource:
    """The result of compiling one source file with all of its instantiations."""

    source: str
    arch: str
    cubin: bytes
    lowered_names: dict[str, str]
    log: str


def nvrtc_compile_all(arch: str = "sm_90", sources_: list[str] | None = None
                      ) -> dict[str, CompiledSource]:
    """Compile every instantiation of every source with NVRTC; no GPU or driver needed.

    Returns ``{source file: CompiledSource}``.  Raises :class:`NvrtcCompileError` with the
    compiler log on failure, ``ImportError`` when CuPy's NVRTC binding is missing.
    """
    from cupy_backends.cuda.libs import nvrtc

    if not re.fullmatch(r"(sm|compute)_\d+[a-z]?", arch):
        raise ValueError(f"arch={arch!r} is not a GPU architecture like 'sm_90'")
    options = nvrtc_options(arch)
    results = {}
    for source in sources_ or sources():
        expressions = name_expressions(source)
        prog = nvrtc.createProgram(source_code(source), source, [], [])
        try:
            for expression in expressions:
                nvrtc.addNameExpression(prog, expression)
            try:
                nvrtc.compileProgram(prog, options)
            except nvrtc.NVRTCError as exc:
                raise NvrtcCompileError(f"NVRTC failed on {source} for {arch} ({exc}):\n"
                                        f"{nvrtc.getProgramLog(prog)}") from None
            results[source] = CompiledSource(
                source, arch, nvrtc.getCUBIN(prog),
                {e: nvrtc.getLoweredName(prog, e) for e in expressions},
                nvrtc.getProgramLog(prog))
        finally:
            nvrtc.destroyProgram(prog)
    return results


# ------------------------------------------------------------------------------ GPU path
class KernelsUnavailable(RuntimeError):
    """The fused kernels cannot be used here; the backend should use its generic path."""


_lock = threading.Lock()
_modules: dict[str, Any] = {}
_failures: dict[str, str] = {}
_functions: dict[tuple, Any] = {}


def kernels_enabled() -> bool:
    """False when ``GPUMLP_KERNELS`` is ``off`` (or ``0``/``false``/``no``)."""
    return config.get("GPUMLP_KERNELS")


def load_module(source: str) -> Any:
    """The compiled ``cupy.RawModule`` of one source file (all dtypes and flags), built once
    per process on first use; raises :class:`KernelsUnavailable` on failure (the backend
    warns, naming the kernel it wanted, and does without that kernel).
    """
    if not kernels_enabled():
        raise KernelsUnavailable("disabled by GPUMLP_KERNELS=off")
    with _lock:
        if source in _modules:
            return _modules[source]
        if source in _failures:  # do not retry a failed compile on every call
            raise KernelsUnavailable(_failures[source])
        try:
            import cupy

            module = cupy.RawModule(code=source_code(source), options=COMPILE_OPTIONS,
                                    name_expressions=name_expressions(source))
            module.compile()  # fail here, not at the first launch
        except Exception as exc:
            _failures[source] = (f"{source} did not compile or load "
                                 f"({type(exc).__name__}: {exc})")
            raise KernelsUnavailable(_failures[source]) from exc
        _modules[source] = module
        return module


def get_kernel(kernel: str, dtype: Any = None, **params: Any) -> Any:
    """The launchable ``cupy.RawKernel`` of one instantiation, e.g.
    ``get_kernel("act_grad", cupy.float32, act="relu", dropout=False)``.

    Launch it as ``fn(grid, block, args)`` with :func:`launch_config` and the argument types
    of ``KERNELS[kernel].signature`` (NumPy scalars of the exact type: ``numpy.int64`` for
    ``long long``, the array dtype for ``T``, ``numpy.uint64`` for the seed).
    """
    if not kernels_enabled():
        raise KernelsUnavailable("disabled by GPUMLP_KERNELS=off")
    key = (kernel, None if dtype is None else _dtype_name(dtype), tuple(sorted(params.items())))
    fn = _functions.get(key)
    if fn is None:
        expression = name_expression(kernel, dtype, **params)
        module = load_module(KERNELS[kernel].source)
        try:
            fn = module.get_function(expression)
        except Exception as exc:  # this instantiation only: the module's others may load
            raise KernelsUnavailable(f"{expression} could not be loaded "
                                     f"({type(exc).__name__}: {exc})") from exc
        _functions[key] = fn
    return fn
