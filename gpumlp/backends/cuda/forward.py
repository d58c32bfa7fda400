"""Inference replayed from a captured forward pass (CuPy backend).

``predict_output`` runs a network over ``x`` in chunks: per chunk one launch per layer and
one for the output activation, so a 3-layer network over 60,000 rows in chunks of 4,096 makes
60 launches, each a few microseconds of host time the device may wait on.  The same call
repeated on the same device array — a validation set scored after every epoch, a test set
scored after each refit, a serving buffer refilled between calls — can instead replay one
CUDA graph of all those launches.

A graph holds raw addresses, so it serves one input array — which it keeps alive, so that
its address names no other array — and writes an output buffer of its own, copied into a
fresh result each call.  Because a capture costs more than the launches it saves once, an
input is captured the second time it is predicted on, and each network keeps at most
:data:`KEPT_GRAPHS` graphs (and so at most that many inputs alive).  Device copies made from
host inputs are new arrays every call and are never captured (``reuse=False``).
Replays run the eager pass's kernels in its order; each GEMM takes the route measured faster
for captured steps (:mod:`gpumlp.backends.cuda.routes`: our fused GEMM, or cuBLAS called
directly), which may differ from the eager choice, so outputs agree to float rounding (and
are identical where both take the fused kernels).

Every launch of the pass is one of our kernels (the layers' GEMMs, the softmax or sigmoid
of the output), none allocates, so any network on the CuPy backend with its kernels can be
captured.  A network's graphs are used by one thread at a time; a concurrent call runs
eagerly rather than wait.
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from typing import Any, Callable

from . import cublas
from .graphs import joined
from .run import DeviceRun

#: Captured forwards kept per network (each holds an output buffer and chunk buffers).
KEPT_GRAPHS = 2
#: Inputs remembered as seen once, per network (the next call on one captures it).
REMEMBERED_INPUTS = 8


class CapturedForward:
    """One network's forward over one device array ``x`` in chunks of ``chunk`` rows,
    captured as a CUDA graph into an output buffer of its own."""

    def __init__(self, network: Any, x: Any, chunk: int,
                 output_activation: Callable[..., None]):
        backend = network.backend
        cupy = backend.xp
        self.cupy = cupy
        self.input = x  # kept alive: the graph reads its address
        self.out = backend.empty((x.shape[0], network.sizes[-1]), network.dtype)
        self.workspace = network.new_workspace(min(x.shape[0], chunk))
        # Its stream, step state, split-K scratch and the direct route's handles, given back
        # by close(); the forward's operations run on the backend bound to it.
        self.device_run = DeviceRun(backend, network.dtype, streams=1)
        (self.stream,) = self.device_run.streams
        self.close = self.device_run.close
        ops = self.device_run.backend

        def forward() -> None:
            for start in range(0, x.shape[0], chunk):
                rows = x[start:start + chunk]
                logits = network.forward(rows, self.workspace.rows(rows.shape[0]),
                                         backend=ops)
                output_activation(logits, self.out[start:start + rows.shape[0]], ops)

        try:
            with joined(cupy, self.stream), self.device_run.recording(None):
                forward()  # warm-up: loads the kernels and chooses each GEMM's route
                self.stream.begin_capture()
                try:
                    forward()
                finally:
                    self.graph = self.stream.end_capture()
                self.graph.upload(self.stream)
        except BaseException:
            self.close()  # nothing will replay: give its handles and memory back now
            raise

    def run(self, result: Any) -> Any:
        """Replay into :attr:`out` and copy it to ``result`` (made by the caller on its
        stream), ordered with the caller's stream both ways."""
        with joined(self.cupy, self.stream):
            self.graph.launch(self.stream)
            result[...] = self.out
        return result


def input_key(x: Any, chunk: int) -> tuple:
    """What a captured forward fixes about its input (a network's arrays are all on one
    device, so the address names the memory)."""
    return (cublas.pointer(x), tuple(x.shape), tuple(x.strides), x.dtype.str, int(chunk))


class ForwardGraphs:
    """A network's captured forwards, by input (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._graphs: OrderedDict[tuple, CapturedForward | None] = OrderedDict()
        self._seen: OrderedDict[tuple, None] = OrderedDict()

    def output(self, network: Any, x: Any, chunk: int,
               output_activation: Callable[..., None]) -> Any | None:
        """``network``'s output for device array ``x`` from a replay, or ``None`` where the
        caller should run the forward eagerly (first sight of ``x``, no graphs, a sigmoid
        output, another thread replaying)."""
        if not capturable(network, x):
            return None
        if not self._lock.acquire(blocking=False):
            return None
        try:
            key = input_key(x, chunk)
            if key not in self._graphs:
                if key not in self._seen:
                    _remember(self._seen, key, REMEMBERED_INPUTS)
                    return None
                _remember(self._graphs, key, KEPT_GRAPHS,
                          _capture(network, x, chunk, output_activation))
            graph = self._graphs[key]
            self._graphs.move_to_end(key)
            if graph is None:  # its capture failed once: eager from now on
                return None
            return graph.run(network.backend.empty(graph.out.shape, graph.out.dtype))
        finally:
            self._lock.release()

    def __len__(self) -> int:
        return sum(graph is not None for graph in self._graphs.values())


def capturable(network: Any, x: Any) -> bool:
    """Whether ``network``'s forward over ``x`` can be captured: a CuPy network with the
    fused kernels and a device array of its dtype."""
    return (network.backend.graphs_unavailable_reason() is None and network.backend.owns(x)
            and x.dtype == network.dtype and x.ndim == 2 and x.shape[0] > 0)


def _capture(network: Any, x: Any, chunk: int,
             output_activation: Callable[..., None]) -> CapturedForward | None:
    try:
        return CapturedForward(network, x, chunk, output_activation)
    except Exception as exc:  # a capture the driver refuses: this input predicts eagerly
        warnings.warn(f"predict: CUDA graph capture failed ({type(exc).__name__}: {exc}); "
                      "running the forward eagerly", RuntimeWarning, stacklevel=4)
        return None


def _remember(table: OrderedDict, key: tuple, limit: int, value: Any = None) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > limit:
        _, dropped = table.popitem(last=False)
        if dropped is not None:
            dropped.close()  # its stream's cuBLAS(Lt) handles and masks
