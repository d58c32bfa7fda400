"""Build the CPU build of the CUDA kernels (harness.cpp) and launch them on NumPy arrays.

Arguments are packed from the C++ signatures in ``gpumlp.kernels.KERNELS``, the same table the
CuPy backend launches from, so a wrong signature there fails these tests too.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from gpumlp import kernels

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BUILD_DIR = HERE / "_build"
LIBRARY = BUILD_DIR / "libgpumlp_kernels_host.so"
CXX_FLAGS = ("-O2", "-std=c++20", "-pthread", "-shared", "-fPIC", "-Wall", "-Wextra",
             "-Wno-unknown-pragmas")


class HarnessUnavailable(RuntimeError):
    """No C++20 compiler here; the message says what is missing."""


def _inputs() -> list[Path]:
    return [*sorted((REPO / "kernels").glob("*.cu*")), HERE / "harness.cpp",
            HERE / "cuda_host_compat.h"]


def build() -> Path:
    """Compile the harness unless an up-to-date build exists; return the library's path."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise HarnessUnavailable(f"C++ compiler {cxx!r} not found (set $CXX or install g++ "
                                 "with C++20 support) to run the kernels on the CPU")
    newest = max(p.stat().st_mtime for p in _inputs())
    if LIBRARY.exists() and LIBRARY.stat().st_mtime >= newest:
        return LIBRARY
    BUILD_DIR.mkdir(exist_ok=True)
    partial = BUILD_DIR / f".{LIBRARY.name}.{os.getpid()}"
    command = [cxx, *CXX_FLAGS, f"-I{REPO / 'kernels'}", f"-I{HERE}",
               str(HERE / "harness.cpp"), "-o", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the kernel harness failed:\n{' '.join(command)}\n"
                           f"{result.stderr}")
    os.replace(partial, LIBRARY)  # atomic: a concurrent run never loads a half-written file
    return LIBRARY


_SCALARS = {"long long": ctypes.c_longlong, "unsigned long long": ctypes.c_ulonglong,
            "double": ctypes.c_double, "int": ctypes.c_int}
_POINTEES = {"long long": np.int64, "int": np.int32}


class Harness:
    """``launch(kernel, dtype, grid, block, act=..., dropout=..., **arguments)``."""

    def __init__(self, path: Path):
        self.lib = ctypes.CDLL(str(path))

    def launch(self, kernel: str, dtype, grid, block, **kwargs) -> None:
        spec = kernels.KERNELS[kernel]
        dtype = np.dtype(dtype)
        flags = [int(kwargs.pop(p)) for p in spec.template if p != "dtype"]
        flags += [0] * (2 - len(flags))
        values = [self._pack(decl, kwargs.pop(decl.split()[-1].lstrip("*")), dtype)
                  for decl in spec.signature]
        if kwargs:
            raise TypeError(f"{kernel} has no arguments {sorted(kwargs)}")
        argv = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        entry = getattr(self.lib, f"run_{kernel}")
        entry.restype = ctypes.c_int
        status = entry(ctypes.c_int(dtype.itemsize * 8), *map(ctypes.c_int, flags),
                       *map(ctypes.c_uint, grid[:2]), *map(ctypes.c_uint, block[:2]), argv)
        if status != 0:
            raise ValueError(f"no host instantiation of {kernel} for {dtype} {flags}")

    @staticmethod
    def _pack(decl: str, value, dtype: np.dtype):
        ctype = decl.rsplit(" ", 1)[0].replace("const ", "").strip()
        if ctype.endswith("*"):
            if value is None:
                return ctypes.c_void_p(None)
            pointee = ctype[:-1].strip()
            want = dtype if pointee == "T" else np.dtype(_POINTEES[pointee])
            if not isinstance(value, np.ndarray) or value.dtype != want \
                    or not value.flags.c_contiguous:
                raise TypeError(f"{decl}: need a C-contiguous {want} array, got {value!r}")
            return ctypes.c_void_p(value.ctypes.data)
        if ctype == "T":
            return (ctypes.c_float if dtype == np.float32 else ctypes.c_double)(value)
        return _SCALARS[ctype](value)
