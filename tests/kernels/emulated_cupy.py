"""A stand-in for CuPy where there is no GPU, as strict as the hardware and CuPy themselves.

It runs the CuPy backend and the CUDA-graph path on the CPU, and turns the GPU-only failure
classes that a CPU test can model into exceptions:

* **Memory** is NumPy memory in :class:`DeviceArray`.  Every allocation is one block of a
  modelled memory pool (:class:`MemoryPool`, with CuPy's ``used_bytes``/``total_bytes``), freed
  when the last view of it dies.  Mixing a host ``numpy.ndarray`` into a device operation
  raises ``TypeError``, as CuPy does.
* **Kernels** run the same CUDA sources compiled for the CPU (``harness.cpp``); their arguments
  are marshalled exactly as CuPy marshals them (a Python float as double, a Python int as
  int64, NumPy scalars keep their dtype) and the harness rejects a type that differs from the
  kernel's declared parameter.
* **Streams** are ordered as CUDA orders them.  Each stream numbers its operations and keeps a
  vector clock of what it has waited for (events, the legacy default stream's implicit
  synchronisation with blocking streams, host synchronisation); every memory block remembers
  its last writer and its readers since.  A read or write that is not ordered after a
  conflicting access from another stream raises :class:`StreamOrderViolation`.  Kernel
  parameters that a kernel only updates by ``atomicAdd`` (``KernelSpec.atomic``) are atomic
  accesses, as on the hardware: two of them need no order between them, but each needs one
  with any plain read or write of the same memory.
* **Capture** records the kernels launched on the capturing stream into a :class:`Graph`; a
  replay re-runs them with the arguments fixed at capture, on the replaying stream, reading
  memory as it is then (and raising if a captured block has been freed since).  Any pool
  allocation on the capturing thread, any free of a block of the capturing stream's pool, any
  host synchronisation or host write, cuBLAS, and any other array operation during a capture
  raises :class:`CaptureViolation` (CuPy captures in relaxed mode, so on a GPU a temporary
  made during capture is replayed into freed memory).
"""

from __future__ import annotations

import itertools
import threading
import time
import types
import weakref
from typing import Any, Callable

import numpy as np

from gpumlp import activations
from gpumlp.backends.cuda import kernels


class CaptureViolation(RuntimeError):
    """Something a CUDA graph cannot hold happened during stream capture."""


class CUDADriverError(RuntimeError):
    """``cupy.cuda.driver.CUDADriverError``: what a launch the driver refuses raises."""


class StreamOrderViolation(RuntimeError):
    """Two streams touched the same memory with no event or synchronisation between them."""


# Serialises the emulator's bookkeeping and the harness (which runs one launch at a time).
_LOCK = threading.RLock()


class _State:
    """Process-wide state of the emulated device (one per test, reset by :func:`reset`)."""

    def __init__(self) -> None:
        self.pool = MemoryPool()
        self.blocks: dict[int, _Block] = {}
        self.streams: weakref.WeakSet = weakref.WeakSet()
        self.host_clock: dict[int, int] = {}
        self.null = Stream(null=True)
        self.local = threading.local()
        #: Called with the graph before each replay (tests use it to interleave threads).
        self.before_graph_launch: Callable[[Graph], None] | None = None


def reset() -> None:
    """Forget every stream, block and capture (a fresh device)."""
    global STATE
    STATE = _State()


# ------------------------------------------------------------------------------ streams
_stream_ids = itertools.count(1)


def _merge(clock: dict[int, int], other: dict[int, int]) -> None:
    for stream_id, seq in other.items():
        if clock.get(stream_id, 0) < seq:
            clock[stream_id] = seq


class Stream:
    """A CUDA stream: ``Stream()`` is blocking (orders with the legacy default stream),
    ``Stream(non_blocking=True)`` is not; ``Stream.null`` is the legacy default stream."""

    def __init__(self, non_blocking: bool = False, null: bool = False):
        self.id = 0 if null else next(_stream_ids)
        self.is_null, self.non_blocking = null, non_blocking
        self.seq = 0
        self.clock: dict[int, int] = {}
        self.capture: list | None = None
        self.capture_problems: list[str] = []
        #: The captured nodes this stream's next node depends on (multi-stream capture).
        self.capture_tail: frozenset = frozenset()
        if not null:
            STATE.streams.add(self)

    def __repr__(self) -> str:
        kind = "legacy default" if self.is_null else ("non-blocking" if self.non_blocking
                                                    else "blocking")
        return f"<emulated {kind} stream {self.id}>"

    @property
    def ptr(self) -> int:
        return self.id

    def __enter__(self) -> "Stream":
        _stack().append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _stack().pop()

    def snapshot(self) -> dict[int, int]:
        """What an event recorded now would let a waiter rely on."""
        return {**self.clock, self.id: self.seq}

    def enqueue(self) -> tuple[int, int]:
        """Number a new operation on this stream; returns ``(stream id, sequence)``."""
        self.seq += 1
        _merge(self.clock, STATE.host_clock)  # finished before the host enqueued this
        if self.is_null:  # legacy semantics: waits for all prior work of every blocking stream
            for other in list(STATE.streams):
                if not other.non_blocking:
                    _merge(self.clock, other.snapshot())
        elif not self.non_blocking:  # ... and blocking streams wait for it
            _merge(self.clock, STATE.null.snapshot())
        return self.id, self.seq

    def ordered_after(self, access: tuple[int, int]) -> bool:
        stream_id, seq = access
        return stream_id == self.id or self.clock.get(stream_id, 0) >= seq

    # capture
    def begin_capture(self, mode: Any = None) -> None:
        if self.is_null:
            raise CaptureViolation("the legacy default stream cannot be captured")
        if self.capture is not None:
            raise CaptureViolation(f"{self!r} is already capturing")
        self.capture, self.capture_problems = CaptureList(), []
        self.capture.origin, self.capture.problems_of_origin = self, self.capture_problems
        self.capture_tail = frozenset()

    def capture_node(self, node: tuple) -> None:
        """Record ``node`` into this stream's capture, depending on the stream's frontier."""
        capture = self.capture
        capture.deps.append(self.capture_tail)
        capture.append(node)
        self.capture_tail = frozenset({len(capture) - 1})

    def end_capture(self) -> "Graph":
        if self.capture is None:
            raise CaptureViolation(f"{self!r} is not capturing")
        launches, problems = self.capture, self.capture_problems
        if getattr(launches, "origin", self) is not self:
            raise CaptureViolation(f"{self!r} joined a capture begun on another stream: "
                                   "only the origin stream ends it")
        joined = [s for s in list(STATE.streams) if s is not self and s.capture is launches]
        self.capture, self.capture_problems = None, []
        reached = launches.ancestors(self.capture_tail)
        for stream in joined:  # CUDA: cudaErrorStreamCaptureUnjoined
            stream.capture, stream.capture_problems = None, []
            if not stream.capture_tail <= reached:
                problems.append(f"work forked to {stream!r} was not joined back into the "
                                "capturing stream")
        if problems:
            raise CaptureViolation("during stream capture: " + "; ".join(problems))
        launches.check_branches()
        return Graph(launches)

    def is_capturing(self) -> bool:
        return self.capture is not None

    # synchronisation
    def synchronize(self) -> None:
        _host_wait(self, "stream.synchronize()")

    def record(self, event: "Event | None" = None) -> "Event":
        event = event if event is not None else Event()
        event.record(self)
        return event

    def wait_event(self, event: "Event") -> None:
        with _LOCK:
            _merge(self.clock, event.snapshot)
            joining = getattr(event, "capture_join", None)
            if joining is not None:  # an event of a capture: this stream joins that capture
                capture, nodes = joining
                if self.capture is None:
                    self.capture, self.capture_problems = capture, capture.problems_of_origin
                    self.capture_tail = nodes
                elif self.capture is capture:
                    self.capture_tail = self.capture_tail | nodes
                else:
                    raise CaptureViolation(f"{self!r} waits on an event of another capture")

    def done(self) -> bool:
        return True


def _stack() -> list[Stream]:
    stack = getattr(STATE.local, "streams", None)
    if stack is None:
        stack = STATE.local.streams = []
    return stack


def current_stream() -> Stream:
    stack = _stack()
    return stack[-1] if stack else STATE.null


def _capturing_stream() -> Stream | None:
    """The current stream if it is capturing (CuPy's relaxed mode: per thread and stream)."""
    stream = current_stream()
    return stream if stream.capture is not None else None


def _refuse_during_capture(what: str) -> None:
    stream = _capturing_stream()
    if stream is not None:
        stream.capture_problems.append(what)
        raise CaptureViolation(f"{what} during stream capture")


def _host_wait(stream: Stream, what: str) -> None:
    with _LOCK:
        if stream.capture is not None:  # synchronising a capturing stream is an error
            stream.capture_problems.append(f"a host synchronisation ({what})")
            raise CaptureViolation(f"a host synchronisation ({what}) during stream capture")
        _refuse_during_capture(f"a host synchronisation ({what})")
        _merge(STATE.host_clock, stream.snapshot())


class Event:
    """A CUDA event: ``record`` on a stream, then ``stream.wait_event`` or ``synchronize``."""

    def __init__(self, block: bool = False, disable_timing: bool = False,
                 interprocess: bool = False):
        self.snapshot: dict[int, int] = {}
        self.stream: Stream | None = None
        self.time = time.perf_counter()

    def record(self, stream: Stream | None = None) -> None:
        with _LOCK:
            stream = stream if stream is not None else current_stream()
            if stream.capture is None:
                stream.enqueue()
            self.stream, self.snapshot = stream, stream.snapshot()
            self.time = time.perf_counter()
            # Recorded in a capture: a stream waiting on it forks from these nodes.
            self.capture_join = ((stream.capture, stream.capture_tail)
                                 if stream.capture is not None else None)

    def synchronize(self) -> None:
        with _LOCK:
            _refuse_during_capture("a host synchronisation (event.synchronize())")
            _merge(STATE.host_clock, self.snapshot)

    def done(self) -> bool:
        return True


# ------------------------------------------------------------------------------- memory
class MemoryPool:
    """CuPy's default pool, by byte counts: ``used_bytes`` is what live arrays hold,
    ``total_bytes`` adds the freed blocks the pool keeps for reuse."""

    def __init__(self) -> None:
        self._used = 0
        self._cached = 0
        self.n_allocations = 0
        self.n_frees = 0

    def used_bytes(self) -> int:
        return self._used

    def total_bytes(self) -> int:
        return self._used + self._cached

    def free_bytes(self) -> int:
        return self._cached

    def free_all_blocks(self, stream: Any = None) -> None:
        self._cached = 0

    def _allocate(self, nbytes: int) -> None:
        self.n_allocations += 1
        self._used += nbytes
        self._cached -= min(self._cached, nbytes)

    def _free(self, nbytes: int) -> None:
        self.n_frees += 1
        self._used -= nbytes
        self._cached += nbytes


class _Block:
    """One allocation: its size and who touched it last."""

    __slots__ = ("nbytes", "stream_id", "write", "reads", "atomics")

    def __init__(self, nbytes: int, stream_id: int):
        self.nbytes, self.stream_id = nbytes, stream_id
        self.write: tuple[int, int] | None = None
        self.reads: dict[int, int] = {}
        #: The last atomic update of each stream since the last plain write.
        self.atomics: dict[int, int] = {}


def _root(array: np.ndarray) -> np.ndarray:
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


def _free_block(key: int, nbytes: int) -> None:
    with _LOCK:
        block = STATE.blocks.pop(key, None)
        if block is None:
            return
        STATE.pool._free(nbytes)
        # CuPy's pool is stream-ordered: a block returns to its stream's free list, which the
        # capture of that stream may hand out again while the graph still refers to it.
        for stream in list(STATE.streams):
            if stream.capture is not None and stream.id == block.stream_id:
                stream.capture_problems.append(f"a pool free of {nbytes} bytes")


def _block(array: np.ndarray) -> _Block:
    """The pool block behind ``array``, registering (allocating) it on first sight."""
    root = _root(array)
    key = id(root)
    with _LOCK:
        block = STATE.blocks.get(key)
        if block is None:
            nbytes = _PADDED.pop(key, root.nbytes)  # the array's bytes, not the padding
            block = STATE.blocks[key] = _Block(nbytes, current_stream().id)
            STATE.pool._allocate(nbytes)
            weakref.finalize(root, _free_block, key, nbytes)
            stream = _capturing_stream()
            if stream is not None:
                stream.capture_problems.append(f"a pool allocation of {nbytes} bytes")
        return block


def _describe(stream_id: int) -> str:
    return "the legacy default stream" if stream_id == 0 else f"stream {stream_id}"


def _access(stream: Stream, reads: list, writes: list, what: str,
            atomics: list = ()) -> tuple[int, int]:
    """Check that an operation on ``stream`` is ordered after every conflicting access of
    the blocks it reads, writes and updates atomically (``atomics``: atomic updates of
    different streams do not conflict), then record it.  Returns the operation's number."""
    with _LOCK:
        read_blocks = [_block(a) for a in reads]
        write_blocks = [_block(a) for a in writes]
        atomic_blocks = [_block(a) for a in atomics]
        op = stream.enqueue()
        for block in read_blocks + write_blocks + atomic_blocks:
            if block.write is not None and not stream.ordered_after(block.write):
                raise StreamOrderViolation(
                    f"{what} on {_describe(stream.id)} touches memory written by operation "
                    f"{block.write[1]} of {_describe(block.write[0])} with no event or "
                    "synchronisation between them")
        for block in read_blocks + write_blocks:
            for stream_id, seq in block.atomics.items():
                if not stream.ordered_after((stream_id, seq)):
                    raise StreamOrderViolation(
                        f"{what} on {_describe(stream.id)} touches memory that operation "
                        f"{seq} of {_describe(stream_id)} updates atomically, with no event "
                        "or synchronisation between them")
        for block in write_blocks + atomic_blocks:
            for stream_id, seq in block.reads.items():
                if not stream.ordered_after((stream_id, seq)):
                    raise StreamOrderViolation(
                        f"{what} on {_describe(stream.id)} overwrites memory that operation "
                        f"{seq} of {_describe(stream_id)} reads, with no event or "
                        "synchronisation between them")
        for block in read_blocks:
            if block.reads.get(op[0], 0) < op[1]:
                block.reads[op[0]] = op[1]
        for block in atomic_blocks:
            if block.atomics.get(op[0], 0) < op[1]:
                block.atomics[op[0]] = op[1]
        for block in write_blocks:
            block.write, block.reads, block.atomics = op, {}, {}
        return op


class Device:
    def __init__(self, device: int | None = None):
        self.id = STATE.local.__dict__.get("device", 0) if device is None else int(device)
        self.compute_capability = "90"

    def use(self) -> None:
        STATE.local.device = self.id

    def __enter__(self) -> "Device":
        self._previous = STATE.local.__dict__.get("device", 0)
        self.use()
        return self

    def __exit__(self, *exc: Any) -> None:
        STATE.local.device = self._previous

    def synchronize(self) -> None:
        for stream in [STATE.null, *STATE.streams]:
            _host_wait(stream, "device.synchronize()")


def _plain(value: Any) -> Any:
    """``value`` with device arrays as plain NumPy views (recursively in lists and tuples);
    a host ``numpy.ndarray`` is refused, as CuPy refuses it."""
    if isinstance(value, DeviceArray):
        return value.view(np.ndarray)
    if isinstance(value, np.ndarray):
        raise TypeError(f"Unsupported type {type(value)}: a host numpy.ndarray {value.shape} "
                        "was mixed into a device operation (CuPy needs cupy.asarray first)")
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


def _device_arrays(value: Any) -> list:
    if isinstance(value, DeviceArray):
        return [value]
    if isinstance(value, (list, tuple)):
        return [a for v in value for a in _device_arrays(v)]
    if isinstance(value, dict):
        return [a for v in value.values() for a in _device_arrays(v)]
    return []


#: CuPy's memory pool hands out blocks aligned to 512 bytes (cudaMalloc: 256); NumPy's own
#: allocations are only 16- or 64-byte aligned, so new device memory is moved to such an
#: address (libraries like cuBLASLt choose algorithms by the operands' alignment).
ALLOCATION_ALIGNMENT = 512
#: The requested size of each padded buffer made by :func:`_pool_aligned`, by ``id``, until
#: :func:`_block` registers it (at once: the pool counts requested bytes, not the padding).
_PADDED: dict[int, int] = {}


def _pool_aligned(array: np.ndarray) -> np.ndarray:
    """``array`` at an address aligned as a CuPy allocation is (a copy if need be)."""
    if (array.base is not None or not array.flags.c_contiguous
            or array.ctypes.data % ALLOCATION_ALIGNMENT == 0):
        return array
    raw = np.empty(array.nbytes + ALLOCATION_ALIGNMENT, dtype=np.uint8)
    _PADDED[id(raw)] = array.nbytes
    start = -raw.ctypes.data % ALLOCATION_ALIGNMENT
    aligned = raw[start:start + array.nbytes].view(array.dtype).reshape(array.shape)
    aligned[...] = array
    return aligned


def _wrap(result: Any, op: tuple[int, int] | None, device_id: int = 0) -> Any:
    """A computed result as new device memory, written by operation ``op``."""
    if isinstance(result, tuple):
        return tuple(_wrap(r, op, device_id) for r in result)
    if isinstance(result, DeviceArray):
        return result
    if isinstance(result, (np.ndarray, np.generic)):
        array = _pool_aligned(np.asarray(result)).view(DeviceArray)
        array._device_id = device_id
        block = _block(array)
        if op is not None:
            with _LOCK:
                block.write, block.reads = op, {}
        return array
    return result


class DeviceArray(np.ndarray):
    """NumPy memory standing for device memory (see the module docstring)."""

    _device_id = 0

    def __array_finalize__(self, obj: Any) -> None:
        self._device_id = getattr(obj, "_device_id", 0)
        if STATE.blocks.get(id(_root(self))) is None:
            _block(self)  # an allocation no other path saw (e.g. a copying reshape)

    @property
    def device(self) -> Device:
        return Device(self._device_id)

    def _operate(self, what: str, compute: Callable[[], Any], reads: list, writes: list) -> Any:
        stream = current_stream()
        _refuse_during_capture(f"an eager array operation ({what})")
        op = _access(stream, reads, writes, what)
        return _wrap(compute(), op, self._device_id)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.pop("out", None)
        outs = list(out) if isinstance(out, tuple) else ([out] if out is not None else [])
        plain_inputs = _plain(inputs)
        plain_kwargs = {key: _plain(value) for key, value in kwargs.items()}
        if outs:
            plain_kwargs["out"] = tuple(_plain(o) for o in outs)
        writes = _device_arrays(outs) + (_device_arrays(inputs[:1]) if method == "at" else [])
        name = f"{ufunc.__name__}.{method}" if method != "__call__" else ufunc.__name__
        result = self._operate(name, lambda: getattr(ufunc, method)(*plain_inputs,
                                                                    **plain_kwargs),
                               _device_arrays(inputs), writes)
        if outs:
            return outs[0] if len(outs) == 1 else tuple(outs)
        return result

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        writes = _device_arrays(kwargs.get("out"))
        if func is np.copyto:
            writes += _device_arrays(args[:1])
        return self._operate(func.__name__, lambda: func(*_plain(args),
                                                          **{k: _plain(v) for k, v in
                                                             kwargs.items()}),
                             _device_arrays(args) + _device_arrays(kwargs), writes)

    # element access: basic indexing gives views; anything else copies
    def __getitem__(self, key: Any) -> Any:
        result = super().__getitem__(key)
        if isinstance(result, np.ndarray) and _root(result) is _root(self):
            return result
        if not isinstance(result, np.ndarray):  # a scalar: CuPy gives a 0-d view
            index = key if isinstance(key, tuple) else (key,)
            if Ellipsis not in index:
                return super().__getitem__(index + (Ellipsis,))
        return self._operate("advanced indexing", lambda: np.asarray(result).copy(),
                             [self] + _device_arrays(key), [])

    def __setitem__(self, key: Any, value: Any) -> None:
        _refuse_during_capture("a host write (item assignment)")
        host = value if not isinstance(value, DeviceArray) else value.view(np.ndarray)
        _access(current_stream(), _device_arrays(value), [self], "item assignment")
        self.view(np.ndarray)[key] = host

    def fill(self, value: Any) -> None:
        _refuse_during_capture("a host write (fill)")
        _access(current_stream(), [], [self], "fill")
        self.view(np.ndarray).fill(value)

    def set(self, array: np.ndarray, stream: Stream | None = None) -> None:
        """Host-to-device copy into this array (``cupy.ndarray.set``)."""
        _refuse_during_capture("a host-to-device copy (set)")
        array = np.asarray(array)
        if array.shape != self.shape or array.dtype != self.dtype:
            raise ValueError(f"set: shape/dtype mismatch {array.shape}/{array.dtype} vs "
                             f"{self.shape}/{self.dtype}")
        _access(stream or current_stream(), [], [self], "set")
        self.view(np.ndarray)[...] = array

    def copy(self, order: str = "C") -> "DeviceArray":
        return self._operate("copy", lambda: self.view(np.ndarray).copy(order), [self], [])

    def astype(self, dtype: Any, order: str = "K", casting: str = "unsafe",
               subok: bool = True, copy: bool = True) -> "DeviceArray":
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        return self._operate("astype", lambda: self.view(np.ndarray).astype(dtype, order),
                             [self], [])

    # reads by the host: a copy to host memory and a synchronisation of the current stream
    def _host_read(self, what: str) -> np.ndarray:
        stream = current_stream()
        _refuse_during_capture(f"a host synchronisation ({what})")
        _access(stream, [self], [], what)
        _host_wait(stream, what)
        return self.view(np.ndarray)

    def get(self, stream: Stream | None = None) -> np.ndarray:
        return np.array(self._host_read("get()"), copy=True)

    def __float__(self) -> float:
        return float(self._host_read("float()"))

    def __int__(self) -> int:
        return int(self._host_read("int()"))

    def __bool__(self) -> bool:
        return bool(self._host_read("bool()"))

    def __index__(self) -> int:
        return int(self._host_read("index"))

    def item(self, *args: Any) -> Any:
        return self._host_read("item()").item(*args)

    def tolist(self) -> Any:
        return self._host_read("tolist()").tolist()

    def __repr__(self) -> str:
        return f"emulated device {np.ndarray.__repr__(self.view(np.ndarray))}"

    __str__ = __repr__


def on_device(array: DeviceArray, device_id: int) -> DeviceArray:
    """A view of ``array`` that claims to live on device ``device_id`` (for contract tests)."""
    view = array.view(DeviceArray)
    view._device_id = device_id
    return view


# ------------------------------------------------------------------------------ kernels
class _Pointer:
    """A device pointer fixed at capture: block, byte offset and layout of a view.

    A CUDA graph holds raw addresses, not the arrays: if the block is freed before a replay,
    the replay writes into memory the pool may have handed to someone else.
    """

    def __init__(self, array: DeviceArray):
        root = _root(array)
        self.root = weakref.ref(root)
        self.offset = array.__array_interface__["data"][0] - root.__array_interface__["data"][0]
        self.shape, self.strides, self.dtype = array.shape, array.strides, array.dtype
        self.device_id = array._device_id
        self.nbytes = root.nbytes

    def resolve(self, kernel: str) -> DeviceArray:
        root = self.root()
        if root is None:
            raise CaptureViolation(f"a replay of {kernel} uses a {self.nbytes}-byte block "
                                   "freed after capture (the graph would write into memory "
                                   "the pool has reused)")
        view = np.ndarray(self.shape, self.dtype, buffer=root, offset=self.offset,
                          strides=self.strides).view(DeviceArray)
        view._device_id = self.device_id
        return view


class EmulatedKernel:
    """A launchable kernel: runs on the CPU harness, or is recorded during a capture."""

    def __init__(self, harness: Any, name: str, dtype: Any, params: dict):
        self.harness, self.name, self.dtype = harness, name, dtype
        self.params = {key: activations.CODES[activations.canonical(value)]
                       if key == "act" and isinstance(value, str) else value
                       for key, value in params.items()}
        spec = kernels.KERNELS[name]
        # A pointer to non-const memory is written (and may be read); const pointers are read;
        # the parameters in spec.atomic are only updated by atomicAdd.
        self.atomic = [decl.split()[-1].lstrip("*") in spec.atomic for decl in spec.signature]
        self.writes = ["*" in decl and not decl.startswith("const") and not atomic
                       for decl, atomic in zip(spec.signature, self.atomic)]
        self.launches = 0

    def __call__(self, grid: tuple, block: tuple, args: tuple, shared_mem: int = 0,
                 stream: Stream | None = None) -> None:
        stream = stream if stream is not None else current_stream()
        if not isinstance(args, tuple):
            raise TypeError(f"kernel arguments must be a tuple, got {type(args).__name__}")
        for value in args:
            if isinstance(value, np.ndarray) and not isinstance(value, DeviceArray):
                raise TypeError(f"{self.name}: a host numpy.ndarray {value.shape} was passed "
                                "to a kernel (CuPy refuses it: Unsupported type)")
        if stream.capture is not None:
            fixed = tuple(_Pointer(v) if isinstance(v, DeviceArray) else v for v in args)
            stream.capture_node((self, grid, block, fixed))
        else:
            self.execute(grid, block, args, stream)

    def accesses(self, args: tuple) -> tuple[list, list, list]:
        """The captured pointers this launch reads, those it writes and those it only
        updates atomically."""
        pointers = [(v, w, a) for v, w, a in zip(args, self.writes, self.atomic)
                    if isinstance(v, _Pointer)]
        return ([v for v, _, a in pointers if not a], [v for v, w, _ in pointers if w],
                [v for v, _, a in pointers if a])

    def execute(self, grid: tuple, block: tuple, args: tuple,
                stream: Stream | None = None) -> None:
        stream = stream if stream is not None else current_stream()
        args = tuple(v.resolve(self.name) if isinstance(v, _Pointer) else v for v in args)
        reads = [v for v, atomic in zip(args, self.atomic)
                 if isinstance(v, DeviceArray) and not atomic]
        writes = [v for v, written in zip(args, self.writes)
                  if written and isinstance(v, DeviceArray)]
        atomics = [v for v, atomic in zip(args, self.atomic)
                   if atomic and isinstance(v, DeviceArray)]
        with _LOCK:
            _access(stream, reads, writes, f"kernel {self.name}", atomics)
            self.launches += 1
            self.harness.launch_args(
                self.name, self.dtype if self.dtype is not None else np.float32, grid, block,
                tuple(v.view(np.ndarray) if isinstance(v, DeviceArray) else v for v in args),
                **self.params)


class CaptureList(list):
    """The nodes of one capture in recording order (a topological order), with each node's
    dependencies: the previous node of its stream, plus the nodes of events it waited on
    (streams forked from the capturing stream by an event join the capture, as in CUDA)."""

    def __init__(self) -> None:
        super().__init__()
        self.deps: list[frozenset] = []
        self.origin: Any = None
        self.problems_of_origin: list[str] = []

    def ancestors(self, nodes: frozenset) -> set:
        """``nodes`` and every node they depend on, transitively."""
        seen, todo = set(), list(nodes)
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(self.deps[node])
        return seen

    def check_branches(self) -> None:
        """Two nodes that no dependency orders may run at the same time on a GPU: neither
        may write memory the other reads or writes, nor update atomically memory the other
        reads or writes other than atomically (raises :class:`CaptureViolation`)."""
        closure = [self.ancestors(frozenset({i})) for i in range(len(self))]
        ranges = [_node_ranges(node) for node in self]
        for j in range(len(self)):
            for i in range(j):
                if i in closure[j]:
                    continue
                clash = _overlap(ranges[i], ranges[j])
                if clash:
                    raise CaptureViolation(
                        f"captured {self[i][0].name} (node {i}) and {self[j][0].name} (node "
                        f"{j}) are on parallel branches and both touch {clash}: a data race "
                        "on a GPU")


def _interval(pointer: "_Pointer") -> tuple[int, int, int]:
    """``(block, first byte, end byte)`` a captured pointer's view spans."""
    start, end = pointer.offset, pointer.offset + pointer.dtype.itemsize
    for size, stride in zip(pointer.shape, pointer.strides):
        if size == 0:
            return id(pointer.root()), start, start
        if stride > 0:
            end += (size - 1) * stride
        else:
            start += (size - 1) * stride
    return id(pointer.root()), start, end


def _node_ranges(node: tuple) -> tuple[list, list, list]:
    """The byte ranges a node reads, writes and updates atomically (a library call's
    ``accesses`` names no atomic ones)."""
    kernel, _grid, _block, args = node
    reads, writes, *atomics = kernel.accesses(args)
    return tuple([_interval(p) for p in group]
                 for group in (reads, writes, atomics[0] if atomics else []))


def _overlap(first: tuple[list, list, list], second: tuple[list, list, list]) -> str:
    """A description of memory one node writes (or updates atomically) and the other
    touches (other than atomically, for an atomic update), or ''."""
    def clashes(written: list, touched: list) -> str:
        for block, start, end in written:
            for other, o_start, o_end in touched:
                if block == other and start < o_end and o_start < end:
                    return f"bytes {max(start, o_start)}..{min(end, o_end)} of one block"
        return ""
    return (clashes(first[1], second[0] + second[1] + second[2])
            or clashes(second[1], first[0] + first[1] + first[2])
            or clashes(first[2], second[0] + second[1])
            or clashes(second[2], first[0] + first[1]))


class Graph:
    """A captured graph: the launches recorded on the capturing stream."""

    def __init__(self, launches: list):
        self.launches = launches

    def upload(self, stream: Stream | None = None) -> None:
        pass

    def critical_path(self) -> int:
        """Nodes on the longest chain of dependencies (what a replay's latency follows)."""
        deps = getattr(self.launches, "deps", None)
        if deps is None:
            return len(self.launches)
        depth: list[int] = []
        for node_deps in deps:
            depth.append(1 + max((depth[d] for d in node_deps), default=0))
        return max(depth, default=0)

    def launch(self, stream: Stream | None = None) -> None:
        hook = STATE.before_graph_launch
        if hook is not None:
            hook(self)
        stream = stream if stream is not None else current_stream()
        if stream.capture is not None:
            raise CaptureViolation("a graph launched into a capture (child graphs are not "
                                   "modelled)")
        for kernel, grid, block, args in self.launches:
            kernel.execute(grid, block, args, stream)


# ------------------------------------------------------------------------------- module
def make_cupy(harness: Any) -> tuple[types.ModuleType, Any]:
    """A module that passes for ``cupy``, and the ``get_kernel`` to patch into gpumlp."""
    reset()
    module = types.ModuleType("cupy")
    module.__version__ = "emulated"

    def numpy_attribute(name: str) -> Any:
        return getattr(np, name)

    module.__getattr__ = numpy_attribute  # everything not defined below is NumPy's
    module.ndarray = DeviceArray

    def allocate(function: Callable, writes: bool) -> Callable:
        """A creation routine: a new block, written on the current stream unless ``empty``."""
        def create(*args: Any, **kwargs: Any) -> DeviceArray:
            _refuse_during_capture(f"an allocation ({function.__name__})")
            stream = current_stream()
            result = function(*_plain(args), **kwargs)
            op = _access(stream, [], [], function.__name__) if writes else None
            return _wrap(np.array(result, copy=True), op, Device().id)
        create.__name__ = function.__name__
        return create

    for name in ("zeros", "full", "ones", "arange", "eye"):
        setattr(module, name, allocate(getattr(np, name), writes=True))
    module.empty = allocate(np.empty, writes=False)

    def like(function: Callable, writes: bool) -> Callable:
        def create(prototype: Any, *args: Any, **kwargs: Any) -> DeviceArray:
            _refuse_during_capture(f"an allocation ({function.__name__})")
            result = function(_plain(prototype), *args, **kwargs)
            op = _access(current_stream(), [], [], function.__name__) if writes else None
            return _wrap(np.array(result, copy=True), op, Device().id)
        return create

    module.zeros_like = like(np.zeros_like, True)
    module.ones_like = like(np.ones_like, True)
    module.full_like = like(np.full_like, True)
    module.empty_like = like(np.empty_like, False)

    def asarray(a: Any, dtype: Any = None, order: Any = None) -> DeviceArray:
        if isinstance(a, DeviceArray):
            if dtype is None or np.dtype(dtype) == a.dtype:
                return a
            return a.astype(dtype)
        _refuse_during_capture("an allocation (asarray: a host-to-device copy)")
        op = _access(current_stream(), [], [], "asarray")
        return _wrap(np.array(a, dtype=dtype, copy=True, order="C"), op, Device().id)

    def ascontiguousarray(a: Any, dtype: Any = None) -> DeviceArray:
        a = asarray(a, dtype)
        return a if a.flags.c_contiguous else a.copy()

    module.asarray = asarray
    module.array = lambda a, dtype=None, copy=True, **kw: (
        asarray(a, dtype).copy() if isinstance(a, DeviceArray) and copy else asarray(a, dtype))
    module.ascontiguousarray = ascontiguousarray

    def concatenate(arrays: Any, axis: int = 0, **kwargs: Any) -> DeviceArray:
        return arrays[0]._operate("concatenate",
                                  lambda: np.concatenate(_plain(arrays), axis, **kwargs),
                                  _device_arrays(arrays), [])

    module.concatenate = concatenate

    def matmul(a: Any, b: Any, out: Any = None, **kwargs: Any) -> Any:
        _refuse_during_capture("a cuBLAS call (matmul)")
        return np.matmul(a, b, out=out, **kwargs) if out is not None else np.matmul(a, b)

    module.matmul = matmul

    def asnumpy(array: Any, stream: Stream | None = None) -> np.ndarray:
        if isinstance(array, DeviceArray):
            return array.get()
        return np.asarray(array)

    module.asnumpy = asnumpy
    module.get_default_memory_pool = lambda: STATE.pool
    properties = {"name": b"Emulated GPU (CPU harness)", "multiProcessorCount": 2,
                  "totalGlobalMem": 2**30, "clockRate": 1_000_000}
    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: 1, getDeviceProperties=lambda device: properties,
        runtimeGetVersion=lambda: 12080, driverGetVersion=lambda: 12080,
        getDevice=lambda: Device().id)
    Stream.null = STATE.null  # cupy.cuda.Stream.null: the legacy default stream
    module.cuda = types.SimpleNamespace(
        Stream=Stream, Event=Event, runtime=runtime, get_current_stream=current_stream,
        get_elapsed_time=lambda start, stop: 1e3 * (stop.time - start.time), Device=Device,
        MemoryPool=MemoryPool, driver=types.SimpleNamespace(CUDADriverError=CUDADriverError))

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


STATE = _State()
