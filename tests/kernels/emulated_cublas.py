"""cuBLAS and cuBLASLt as :mod:`gpumlp.backends.cuda.cublas` calls them, on the emulated
CuPy (``emulated_cupy.py``), strict about what a GPU would do differently:

* **Memory is read as the library reads it**: each operand is the column-major matrix at the
  array's address with the GEMM's rows, columns and leading dimension (bounds-checked against
  the array), so a wrong transpose, leading dimension or operand order gives wrong numbers,
  not a silently right NumPy product.  An operand of another dtype than the GEMM is refused
  (the GPU would read its bytes as the wrong type).
* **Alignment**: a plan holds the minimum alignment of ``A, B, C, D`` its preference gave
  (256 bytes, the library's default, when none was given) and ``cublasLtMatmul`` refuses an
  operand whose address is less aligned, with a :class:`BlasError`, as the library does when
  the algorithm it chose cannot read it.
* **Epilogues** compute what cuBLASLt's do: bias over the rows of ``D``, ReLU keeping a
  bit-mask (bit ``r + c * ld``), ``DRELU_BGRAD`` reading it and writing the bias gradient,
  ``BGRADA`` / ``BGRADB`` reducing ``A`` / ``B`` over ``k``.  ``beta == 0`` never reads ``C``.
* **Capture**: a call on a capturing stream is recorded into its graph (pointers fixed, host
  ``alpha``/``beta`` by value) and replayed with the kernels; creating a handle, binding its
  stream or workspace, or planning (the heuristic) during a capture raises
  :class:`CaptureViolation`, as does a GEMM whose handle is bound to another stream than the
  one capturing (it would run outside the graph) or to the legacy default stream.
* **Streams**: every call is an ordered access of its operands on its stream (the emulated
  CuPy's checks), so a cross-stream race through cuBLAS raises too.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from gpumlp.backends.cuda.cublas import (AUX_LD_MULTIPLE, OP_N, BlasApi, BlasError,
                                         BlasUnsupported, ColumnMajorGemm, pointer)

#: What cuBLASLt assumes of every operand when the preference sets no minimum alignment
#: (stated here, not taken from gpumlp: it is the library's rule).
DEFAULT_ALIGNMENT = 256
NEEDS_BIAS = {"bias", "relu_bias", "relu_aux_bias", "drelu_bgrad", "bgrada", "bgradb"}
NEEDS_AUX = {"relu_aux_bias", "drelu", "drelu_bgrad"}
_READS = ("a", "b", "c", "bias_in", "aux_in")
_WRITES = ("d", "bias_out", "aux_out", "workspace")


class EmulatedPlan:
    """What a cuBLASLt plan fixes: dtype, GEMM geometry, epilogue, mask leading dim and the
    operands' minimum alignments (bytes of A, B, C, D)."""

    def __init__(self, dtype: np.dtype, g: ColumnMajorGemm, epilogue: str, aux_ld: int,
                 alignments: tuple[int, int, int, int]):
        self.dtype, self.g, self.epilogue, self.aux_ld = dtype, g, epilogue, aux_ld
        self.alignments = alignments


class _Call:
    """One library call, as the emulated CuPy's graphs hold launches: ``execute`` replays it."""

    def __init__(self, blas: "EmulatedBlas", name: str, run: Any):
        self.blas, self.name, self.run = blas, name, run
        self.launches = 0

    def accesses(self, args: tuple) -> tuple[list, list]:
        """The captured pointers this call reads and those it writes."""
        em = self.blas.em
        reads = [v for k, v in args if k in _READS and isinstance(v, em._Pointer)]
        writes = [v for k, v in args if k in _WRITES and isinstance(v, em._Pointer)]
        return reads + writes, writes

    def execute(self, grid: Any, block: Any, args: tuple, stream: Any = None) -> None:
        em = self.blas.em
        stream = stream if stream is not None else em.current_stream()
        arrays = {key: value.resolve(self.name) if isinstance(value, em._Pointer) else value
                  for key, value in args}
        reads = [arrays[k] for k in _READS if arrays.get(k) is not None]
        writes = [arrays[k] for k in _WRITES if arrays.get(k) is not None]
        with em._LOCK:
            em._access(stream, reads, writes, self.name)
            self.launches += 1
            self.blas.calls[self.name] += 1
            self.run({k: (v.view(np.ndarray) if isinstance(v, em.DeviceArray) else v)
                      for k, v in arrays.items()})


def column_major(array: np.ndarray, rows: int, cols: int, ld: int, what: str) -> np.ndarray:
    """The column-major ``rows x cols`` matrix with leading dimension ``ld`` at ``array``'s
    address, as a strided view (bounds-checked: the library would read past the array)."""
    if ld < rows:
        raise ValueError(f"{what}: leading dimension {ld} < rows {rows} (cuBLAS refuses it)")
    needed = ld * (cols - 1) + rows
    if not array.flags.c_contiguous or needed > array.size:
        raise ValueError(f"{what}: a {rows}x{cols} column-major matrix with ld={ld} needs "
                         f"{needed} contiguous elements; the array has {array.size} "
                         f"({'contiguous' if array.flags.c_contiguous else 'strided'})")
    flat = array.reshape(-1)
    item = array.itemsize
    return np.lib.stride_tricks.as_strided(flat, shape=(rows, cols), strides=(item, ld * item),
                                           writeable=True)


class EmulatedBlas(BlasApi):
    """The :class:`~gpumlp.backends.cuda.cublas.BlasApi` on the emulated CuPy module ``em``
    (the module object of ``emulated_cupy.py`` whose device the test runs on)."""

    def __init__(self, em: Any, unsupported: set[str] = frozenset()):
        self.em = em
        self.unsupported = set(unsupported)  # epilogues whose heuristic finds no algorithm
        self.handles: dict[int, dict[str, Any]] = {}
        self.lt_handles: set[int] = set()
        self.calls: collections.Counter = collections.Counter()
        self.plans: list[EmulatedPlan] = []  # every plan made, in order
        self._next = 1

    def _outside_capture(self, what: str) -> None:
        self.em._refuse_during_capture(what)

    def create_handle(self) -> int:
        self._outside_capture("cublasCreate (it allocates the handle's resources)")
        handle, self._next = self._next, self._next + 1
        self.handles[handle] = {"stream": None, "workspace": None}
        return handle

    def bind(self, handle, stream, workspace):
        # CuPy's wrapper raises here during capture (cupy#6290), and cuBLAS resets the
        # workspace to its own pool on setStream: both must happen before capture.
        self._outside_capture("cublasSetStream / cublasSetWorkspace")
        if stream.capture is not None:
            raise self.em.CaptureViolation("cublasSetStream on a capturing stream")
        if workspace.dtype != np.uint8 or workspace.ndim != 1:
            raise TypeError("the cuBLAS workspace must be a 1-D uint8 device buffer")
        self.handles[handle] = {"stream": stream, "workspace": workspace}

    def lt_create(self) -> int:
        self._outside_capture("cublasLtCreate")
        handle, self._next = self._next, self._next + 1
        self.lt_handles.add(handle)
        return handle

    def destroy_handle(self, handle: int) -> None:
        self._outside_capture("cublasDestroy (it synchronises)")
        del self.handles[handle]  # KeyError: destroyed twice, or never made here

    def lt_destroy(self, lt_handle: int) -> None:
        self._outside_capture("cublasLtDestroy")
        self.lt_handles.remove(lt_handle)

    def live_handles(self) -> int:
        """cuBLAS and cuBLASLt handles made and not destroyed."""
        return len(self.handles) + len(self.lt_handles)

    def lt_plan(self, lt_handle, dtype, g, epilogue, aux_ld, workspace_bytes,
                alignments=(DEFAULT_ALIGNMENT,) * 4):
        self._outside_capture("cublasLtMatmulAlgoGetHeuristic (it synchronises)")
        if lt_handle not in self.lt_handles:
            raise ValueError(f"unknown cuBLASLt handle {lt_handle}")
        if epilogue in self.unsupported:
            raise BlasUnsupported(f"cuBLASLt has no algorithm for epilogue {epilogue!r}")
        if epilogue in NEEDS_AUX and (aux_ld % AUX_LD_MULTIPLE or aux_ld < g.m):
            raise BlasUnsupported(f"aux leading dimension {aux_ld} must be a multiple of "
                                  f"{AUX_LD_MULTIPLE} and at least {g.m}")
        for required in alignments:
            if required < 1 or required & (required - 1) or required > DEFAULT_ALIGNMENT:
                raise ValueError(f"minimum alignment {required} must be a power of two up to "
                                 f"{DEFAULT_ALIGNMENT} bytes")
        plan = EmulatedPlan(np.dtype(dtype), g, epilogue, aux_ld, tuple(alignments))
        self.plans.append(plan)
        return plan

    # ------------------------------------------------------------------------------ calls
    def _enqueue(self, name: str, stream: Any, arrays: dict[str, Any], run: Any) -> None:
        em = self.em
        for key, value in arrays.items():
            if isinstance(value, np.ndarray) and not isinstance(value, em.DeviceArray):
                raise TypeError(f"{name}: {key} is a host numpy.ndarray; the library reads "
                                "device memory")
        capturing = em.current_stream()
        if capturing.capture is not None and stream is not capturing:
            raise em.CaptureViolation(
                f"{name} on {stream!r} while {capturing!r} captures: the call would run "
                "outside the graph (bind the handle to the capturing stream before capture)")
        call = _Call(self, name, run)
        args = tuple(arrays.items())
        if stream.capture is not None:
            fixed = tuple((k, em._Pointer(v) if isinstance(v, em.DeviceArray) else v)
                          for k, v in args)
            stream.capture_node((call, None, None, fixed))
        else:
            call.execute(None, None, args, stream)

    @staticmethod
    def _operands(g: ColumnMajorGemm, dtype: np.dtype, a: np.ndarray, b: np.ndarray):
        a_rows, a_cols = (g.m, g.k) if g.transa == OP_N else (g.k, g.m)
        b_rows, b_cols = (g.k, g.n) if g.transb == OP_N else (g.n, g.k)
        A = column_major(a, a_rows, a_cols, g.lda, "A")
        B = column_major(b, b_rows, b_cols, g.ldb, "B")
        return (A if g.transa == OP_N else A.T), (B if g.transb == OP_N else B.T)

    @staticmethod
    def _check_dtypes(name: str, dtype: np.dtype, **arrays: Any) -> None:
        for key, array in arrays.items():
            if array is not None and array.dtype != dtype:
                raise TypeError(f"{name}: {key} is {array.dtype}, the GEMM is {dtype} (the "
                                "library would read its bytes as the wrong type)")

    def gemm(self, handle, g, alpha, a, b, beta, c):
        bound = self.handles.get(handle)
        if bound is None or bound["stream"] is None:
            raise RuntimeError("cuBLAS handle used before its stream and workspace were bound "
                               "(it would run on the legacy default stream)")
        stream = bound["stream"]
        if stream.is_null:
            raise self.em.CaptureViolation("cuBLAS handle bound to the legacy default stream")
        dtype = c.dtype
        name = "cublasSgemm_v2" if dtype == np.float32 else "cublasDgemm_v2"
        self._check_dtypes(name, dtype, a=a, b=b)
        alpha, beta = dtype.type(alpha), dtype.type(beta)  # host mode: read at the call

        def run(m):
            A, B = self._operands(g, dtype, m["a"], m["b"])
            C = column_major(m["d"], g.m, g.n, g.ldc, "C")
            product = (alpha * (A @ B)).astype(dtype)
            C[...] = product if beta == 0 else product + beta * C  # beta 0: C is not read

        # C is read and written in place (only read when beta != 0).
        self._enqueue(name, stream, {"a": a, "b": b, "d": c,
                                     "c": c if beta != 0 else None,
                                     "workspace": bound["workspace"]}, run)

    def lt_matmul(self, lt_handle, plan, alpha, a, b, beta, c, d, bias, aux, workspace,
                  stream):
        if lt_handle not in self.lt_handles:
            raise ValueError(f"unknown cuBLASLt handle {lt_handle}")
        if stream.is_null:
            raise self.em.CaptureViolation("cublasLtMatmul on the legacy default stream")
        g, dtype, epilogue = plan.g, plan.dtype, plan.epilogue
        name = f"cublasLtMatmul[{epilogue}]"
        for operand, array, required in zip("ABCD", (a, b, c, d), plan.alignments):
            address = pointer(array)
            if address % required:
                raise BlasError(f"{name}: {operand} at address {address:#x} ({address % 256} "
                                f"mod 256) is less aligned than the {required} bytes its plan's "
                                "algorithm was chosen for")
        self._check_dtypes(name, dtype, a=a, b=b, c=c if beta != 0 else None, d=d, bias=bias)
        if (bias is not None) != (epilogue in NEEDS_BIAS):
            raise ValueError(f"{name}: a bias vector is {'required' if epilogue in NEEDS_BIAS else 'not used'}")
        if (aux is not None) != (epilogue in NEEDS_AUX):
            raise ValueError(f"{name}: an aux buffer is {'required' if epilogue in NEEDS_AUX else 'not used'}")
        bias_len = g.n if epilogue == "bgradb" else g.m
        if bias is not None and bias.size != bias_len:
            raise ValueError(f"{name}: bias has {bias.size} elements, the epilogue uses "
                             f"{bias_len}")
        if aux is not None and (aux.dtype != np.uint8 or aux.size * 8 < plan.aux_ld * g.n):
            raise ValueError(f"{name}: the ReLU bit-mask needs {plan.aux_ld * g.n // 8} bytes "
                             f"of uint8, got {aux.size} of {aux.dtype}")
        alpha, beta = dtype.type(alpha), dtype.type(beta)
        ld = plan.aux_ld

        def bits(mask_bytes):
            flat = np.unpackbits(mask_bytes, bitorder="little")[:ld * g.n]
            return flat.reshape(g.n, ld).T[:g.m]  # bit r + c * ld

        def run(m):
            A, B = self._operands(g, dtype, m["a"], m["b"])
            D = column_major(m["d"], g.m, g.n, g.ldc, "D")
            value = (alpha * (A @ B)).astype(dtype)
            if beta != 0:
                value = value + beta * column_major(m["c"], g.m, g.n, g.ldc, "C")
            if epilogue in ("bias", "relu_bias", "relu_aux_bias"):
                value = value + m["bias_in"][:, None]
            if epilogue in ("relu_bias", "relu_aux_bias"):
                if epilogue == "relu_aux_bias":
                    mask = np.zeros((g.n, ld), dtype=np.uint8)
                    mask[:, :g.m] = (value > 0).T
                    packed = np.packbits(mask.reshape(-1), bitorder="little")
                    m["aux_out"].reshape(-1)[:packed.size] = packed
                value = np.maximum(value, 0)
            if epilogue in ("drelu", "drelu_bgrad"):
                value = value * bits(m["aux_in"].reshape(-1))
            if epilogue == "drelu_bgrad":
                m["bias_out"][...] = value.sum(axis=1, dtype=dtype)
            if epilogue == "bgrada":
                m["bias_out"][...] = A.sum(axis=1, dtype=dtype)
            if epilogue == "bgradb":
                m["bias_out"][...] = B.sum(axis=0, dtype=dtype)
            D[...] = value

        reads_bias = epilogue in ("bias", "relu_bias", "relu_aux_bias")
        self._enqueue(name, stream, {
            "a": a, "b": b, "c": c if beta != 0 else None, "d": d,
            "bias_in": bias if reads_bias else None,
            "bias_out": bias if bias is not None and not reads_bias else None,
            "aux_in": aux if epilogue in ("drelu", "drelu_bgrad") else None,
            "aux_out": aux if epilogue == "relu_aux_bias" else None,
            "workspace": workspace}, run)
