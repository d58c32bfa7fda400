"""Build the CPU build of the CUDA kernels (harness.cpp) and launch them on NumPy arrays.

Arguments are marshalled exactly as CuPy marshals ``RawKernel`` arguments (a Python float as
double, a Python int as int64, NumPy scalars keep their dtype, arrays as data pointers) and
the C++ side checks each against the kernel's declared parameter type, so a launch that would
read garbage on a GPU fails here.  Argument names and order come from the signatures in
``gpumlp.backends.cuda.kernels.KERNELS``, the same table the CuPy backend launches from.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from gpumlp.backends.cuda import kernels

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD_DIR = HERE / "_build"
LIBRARY = BUILD_DIR / "libgpumlp_kernels_host.so"
CXX_FLAGS = ("-O2", "-std=c++20", "-pthread", "-shared", "-fPIC", "-Wall", "-Wextra",
             "-Wno-unknown-pragmas")
#: What each option of a run-time kernel compile (``kernels.nvrtc_options``) becomes here, so
#: that the CPU build runs the code the GPU runs; an option missing from this table stops the
#: build rather than be silently dropped.
HOST_EQUIVALENTS = {
    # The harness itself needs C++20 (std::barrier, std::atomic_ref; CXX_FLAGS); the kernels
    # are C++17 and the NVRTC tests hold them to it.
    "-std=c++17": (),
    "-ftz=true": ("-DCOMPAT_FLUSH_DENORMALS=1",),  # see cuda_host_compat.h
    # On the host every function is host code already.
    "--device-as-default-execution-space": (),
}


class HarnessUnavailable(RuntimeError):
    """No C++20 compiler here; the message says what is missing."""


def _inputs() -> list[Path]:
    return [*sorted((REPO / "kernels").glob("*.cu*")), HERE / "harness.cpp",
            HERE / "cuda_host_compat.h"]


def host_flags() -> list[str]:
    """The g++ flags standing for the options the kernels are compiled with on a GPU."""
    flags = []
    for option in kernels.nvrtc_options("sm_90"):
        if option.startswith("-arch="):
            continue
        if option not in HOST_EQUIVALENTS:
            raise RuntimeError(f"the kernels are compiled with {option!r} on a GPU and the "
                               "CPU harness has no equivalent: add one to HOST_EQUIVALENTS")
        flags += HOST_EQUIVALENTS[option]
    return flags


def build() -> Path:
    """Compile the harness unless an up-to-date build exists; return the library's path."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise HarnessUnavailable(f"C++ compiler {cxx!r} not found (set $CXX or install g++ "
                                 "with C++20 support) to run the kernels on the CPU")
    command = [cxx, *CXX_FLAGS, *host_flags(), f"-I{REPO / 'kernels'}", f"-I{HERE}",
               str(HERE / "harness.cpp"), "-o"]
    stamp = LIBRARY.with_suffix(".command")  # a build with other flags is rebuilt
    newest = max(p.stat().st_mtime for p in _inputs())
    if (LIBRARY.exists() and LIBRARY.stat().st_mtime >= newest and stamp.exists()
            and stamp.read_text(encoding="utf-8") == " ".join(command)):
        return LIBRARY
    BUILD_DIR.mkdir(exist_ok=True)
    partial = BUILD_DIR / f".{LIBRARY.name}.{os.getpid()}"
    command_text = " ".join(command)
    command = [*command, str(partial)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the kernel harness failed:\n{' '.join(command)}\n"
                           f"{result.stderr}")
    os.replace(partial, LIBRARY)  # atomic: a concurrent run never loads a half-written file
    partial.with_suffix(".command").write_text(command_text, encoding="utf-8")
    os.replace(partial.with_suffix(".command"), stamp)
    return LIBRARY


#: Type codes of harness.cpp's arg_tag: what each argument was marshalled as.
ARG_TAGS = {np.dtype(np.float32): 1, np.dtype(np.float64): 2, np.dtype(np.int32): 3,
            np.dtype(np.int64): 4, np.dtype(np.uint64): 5, np.dtype(np.bool_): 6}
POINTER_TAG, NULL_TAG = 16, 32
_CTYPES = {np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double,
           np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
           np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.bool_): ctypes.c_bool}


def scalar_dtype(value) -> np.dtype:
    """The type CuPy passes a scalar kernel argument as (``cupy/_core/_scalar.pyx``).

    A Python ``bool`` as ``bool``, ``int`` as ``long long`` (int64), ``float`` as ``double``;
    a NumPy scalar keeps its dtype.  Anything else CuPy refuses.
    """
    if isinstance(value, np.generic):
        return value.dtype
    if isinstance(value, bool):
        return np.dtype(np.bool_)
    if isinstance(value, int):
        return np.dtype(np.int64)
    if isinstance(value, float):
        return np.dtype(np.float64)
    raise TypeError(f"unsupported kernel argument type {type(value).__name__} ({value!r})")


def marshal(value):
    """``(tag, ctypes storage, description)`` of one argument, marshalled as CuPy does."""
    if value is None:
        return NULL_TAG, ctypes.c_void_p(None), "None (null pointer)"
    if isinstance(value, np.ndarray):
        if value.dtype not in ARG_TAGS:
            raise TypeError(f"an array of dtype {value.dtype} cannot be a kernel argument")
        if not value.flags.c_contiguous:
            # A raw kernel receives only the data pointer: a strided view would be read as if
            # it were contiguous.
            raise TypeError(f"a non-C-contiguous {value.dtype} array {value.shape} was passed "
                            "to a raw kernel, which sees only its data pointer")
        return (POINTER_TAG + ARG_TAGS[value.dtype], ctypes.c_void_p(value.ctypes.data),
                f"{value.dtype} array")
    dtype = scalar_dtype(value)
    if dtype not in ARG_TAGS:
        raise TypeError(f"a scalar of dtype {dtype} cannot be a kernel argument")
    kind = type(value).__name__ if not isinstance(value, np.generic) else f"numpy.{dtype}"
    return ARG_TAGS[dtype], _CTYPES[dtype](value), f"{kind} {value!r} (passed as {dtype})"


def declared_type(decl: str, dtype: np.dtype) -> str:
    """The C++ type of parameter ``decl`` (e.g. ``"const T* x"``) with ``T`` resolved."""
    ctype = decl.rsplit(" ", 1)[0].replace("const ", "").strip()
    return ctype.replace("T", kernels.DTYPES[dtype.name]) if ctype.startswith("T") else ctype


class KernelArgumentError(TypeError):
    """A kernel argument whose marshalled type differs from the declared parameter type."""


class Harness:
    """Launch the CPU build of a kernel with arguments marshalled exactly as CuPy does.

    ``launch(kernel, dtype, grid, block, act=..., dropout=..., **arguments)`` takes the
    arguments by parameter name; :meth:`launch_args` takes them in order, as
    ``RawKernel.__call__`` does.  The C++ side rejects an argument whose type differs from the
    kernel's declared parameter type (see ``harness.cpp``).
    """

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))

    def launch(self, kernel: str, dtype, grid, block, **kwargs) -> None:
        spec = kernels.KERNELS[kernel]
        flags = {p: kwargs.pop(p) for p in spec.template if p != "dtype"}
        names = [decl.split()[-1].lstrip("*") for decl in spec.signature]
        missing = [name for name in names if name not in kwargs]
        if missing:
            raise TypeError(f"{kernel} is missing arguments {missing}")
        args = tuple(kwargs.pop(name) for name in names)
        if kwargs:
            raise TypeError(f"{kernel} has no arguments {sorted(kwargs)}")
        self.launch_args(kernel, dtype, grid, block, args, **flags)

    def launch_args(self, kernel: str, dtype, grid, block, args: tuple, **flags) -> None:
        spec = kernels.KERNELS[kernel]
        dtype = np.dtype(dtype)
        codes = [int(flags.pop(p)) for p in spec.template if p != "dtype"]
        if flags:
            raise TypeError(f"{kernel} has no template parameters {sorted(flags)}")
        codes += [0] * (3 - len(codes))
        packed = [marshal(value) for value in args]
        tags = (ctypes.c_int * max(1, len(packed)))(*[tag for tag, _, _ in packed])
        argv = (ctypes.c_void_p * max(1, len(packed)))(
            *[ctypes.addressof(storage) for _, storage, _ in packed])
        entry = getattr(self.lib, f"run_{kernel}")
        entry.restype = ctypes.c_int
        status = entry(ctypes.c_int(dtype.itemsize * 8), *map(ctypes.c_int, codes),
                       *map(ctypes.c_uint, (*grid[:3], 1)[:3]),  # grid z defaults to 1
                       *map(ctypes.c_uint, block[:2]), argv,
                       tags, ctypes.c_int(len(packed)))
        if status == -1:
            raise ValueError(f"no host instantiation of {kernel} for {dtype} {codes}")
        if status == -2:
            raise TypeError(f"{kernel} takes {len(spec.signature)} arguments, got {len(args)}")
        if status >= 100:
            index = status - 100
            decl = spec.signature[index]
            raise KernelArgumentError(
                f"{kernel} ({dtype}) argument {index} '{decl}' is declared "
                f"{declared_type(decl, dtype)} but got {packed[index][2]}; a GPU would read "
                "its bytes as the declared type")
