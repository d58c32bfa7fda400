"""A stand-in for CuPy where there is no GPU, to run the CuPy backend and the CUDA-graph path.

* Device memory is NumPy memory, held in :class:`DeviceArray` (an ``ndarray`` subclass that
  refuses host writes — ``fill`` and item assignment — while a stream is capturing: in real
  CUDA such a write inside a capture would be recorded once and replayed with a stale value).
* Kernel launches run the same CUDA sources compiled for the CPU (``harness.cpp``).
* Stream capture records launches into a graph; replaying it re-runs them with the arguments
  fixed at capture while reading memory as it is then — what a CUDA graph does.  Allocations
  and ``matmul`` (cuBLAS) raise during a capture, as CuPy refuses them there.
"""

from __future__ import annotations

import time
import types
from typing import Any

import numpy as np

from gpumlp import activations, kernels


class CaptureViolation(RuntimeError):
    """Something a CUDA graph cannot hold happened during stream capture."""


class _State:
    capture: list | None = None


STATE = _State()


def _check_not_capturing(what: str) -> None:
    if STATE.capture is not None:
        raise CaptureViolation(f"{what} during stream capture")


class DeviceArray(np.ndarray):
    """NumPy memory standing for device memory."""

    def fill(self, value: Any) -> None:
        _check_not_capturing("a host write (fill)")
        super().fill(value)

    def __setitem__(self, key: Any, value: Any) -> None:
        _check_not_capturing("a host write (item assignment)")
        super().__setitem__(key, value)


def _device(array: Any) -> DeviceArray:
    return np.asarray(array, order="C").view(DeviceArray)  # keeps 0-d arrays 0-d


class EmulatedKernel:
    """A launchable kernel: runs on the CPU harness, or is recorded during a capture."""

    def __init__(self, harness: Any, name: str, dtype: Any, params: dict):
        self.harness, self.name, self.dtype = harness, name, dtype
        self.params = {key: activations.CODES[activations.canonical(value)]
                       if key == "act" and isinstance(value, str) else value
                       for key, value in params.items()}
        self.launches = 0

    def __call__(self, grid: tuple, block: tuple, args: tuple) -> None:
        if STATE.capture is not None:
            STATE.capture.append((self, grid, block, args))
        else:
            self.execute(grid, block, args)

    def execute(self, grid: tuple, block: tuple, args: tuple) -> None:
        spec = kernels.KERNELS[self.name]
        names = [decl.split()[-1].lstrip("*") for decl in spec.signature]
        if len(names) != len(args):
            raise TypeError(f"{self.name} takes {len(names)} arguments, got {len(args)}")
        values = {}
        for decl, name, value in zip(spec.signature, names, args):
            if "*" in decl:
                # A null pointer is passed as the integer 0, as with CuPy.
                value = None if isinstance(value, (int, np.integer)) and int(value) == 0 \
                    else np.asarray(value)
            values[name] = value
        self.launches += 1
        self.harness.launch(self.name, self.dtype if self.dtype is not None else np.float32,
                            grid, block, **self.params, **values)


class Graph:
    def __init__(self, launches: list):
        self.launches = launches

    def upload(self, stream: Any = None) -> None:
        pass

    def launch(self, stream: Any = None) -> None:
        for kernel, grid, block, args in self.launches:
            kernel.execute(grid, block, args)


class Stream:
    def __init__(self, non_blocking: bool = False):
        self.non_blocking = non_blocking

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def begin_capture(self, mode: Any = None) -> None:
        STATE.capture = []

    def end_capture(self) -> Graph:
        graph, STATE.capture = Graph(STATE.capture or []), None
        return graph

    def synchronize(self) -> None:
        pass


class Event:
    def record(self, stream: Any = None) -> None:
        self.time = time.perf_counter()

    def synchronize(self) -> None:
        pass


def make_cupy(harness: Any) -> tuple[types.ModuleType, Any]:
    """A module that passes for ``cupy``, and the ``get_kernel`` to patch into gpumlp."""
    module = types.ModuleType("cupy")
    module.__version__ = "emulated"

    def numpy_attribute(name: str) -> Any:
        return getattr(np, name)

    module.__getattr__ = numpy_attribute  # everything not defined below is NumPy's
    module.ndarray = DeviceArray

    def creator(function):
        def create(*args, **kwargs):
            _check_not_capturing(f"an allocation ({function.__name__})")
            return _device(function(*args, **kwargs))
        return create

    for name in ("zeros", "empty", "full", "ones", "arange", "asarray", "ascontiguousarray",
                 "concatenate", "zeros_like", "empty_like", "ones_like"):
        setattr(module, name, creator(getattr(np, name)))

    def matmul(*args, **kwargs):
        _check_not_capturing("a cuBLAS call (matmul)")
        return np.matmul(*args, **kwargs)

    module.matmul = matmul
    module.asnumpy = lambda array: np.array(array, copy=True).view(np.ndarray)
    stream = Stream()
    properties = {"name": b"Emulated GPU (CPU harness)", "multiProcessorCount": 2,
                  "totalGlobalMem": 2**30, "clockRate": 1_000_000}
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1, getDeviceProperties=lambda device: properties,
        runtimeGetVersion=lambda: 0, driverGetVersion=lambda: 0)
    module.cuda = types.SimpleNamespace(
        Stream=Stream, Event=Event, runtime=runtime, get_current_stream=lambda: stream,
        get_elapsed_time=lambda start, stop: 1e3 * (stop.time - start.time),
        Device=lambda device=0: types.SimpleNamespace(id=0, compute_capability="90"))

    cache: dict[tuple, EmulatedKernel] = {}

    def get_kernel(kernel: str, dtype: Any = None, **params: Any) -> EmulatedKernel:
        kernels.name_expression(kernel, dtype, **params)  # same validation as the real one
        key = (kernel, None if dtype is None else np.dtype(dtype).str,
               tuple(sorted(params.items())))
        if key not in cache:
            cache[key] = EmulatedKernel(harness, kernel, dtype, params)
        return cache[key]

    get_kernel.cache = cache
    return module, get_kernel
