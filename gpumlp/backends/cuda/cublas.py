"""cuBLAS and cuBLASLt called directly, so that their GEMMs can be captured in a CUDA graph.

CuPy's own wrappers refuse to run during stream capture (``cupy_backends.cuda.libs.cublas``:
``setStream`` raises while the stream captures, cupy/cupy#6290), but the libraries themselves
can be captured when a handle's stream, workspace and pointer mode are set *before* capture,
which is what PyTorch does.  This module does exactly that:

* **Route: ctypes into the very libraries CuPy loads.**  CuPy 14 finds ``libcublas`` and
  ``libcublasLt`` with ``cuda.pathfinder.load_nvidia_dynamic_lib``; calling it again returns
  the already-loaded library, so ``ctypes.CDLL`` of its path shares CuPy's copy (no second
  cuBLAS in the process, no new dependency).  CuPy 14.2 has no cuBLASLt binding at all, and
  nvmath-python's low-level bindings would work too but add an optional dependency pinned to
  the ``cuda-bindings`` generation, for the dozen entry points used here; they could replace
  :class:`CtypesBlas` behind the same :class:`BlasApi` interface.
* **Before capture** (:meth:`DirectBlas.prepare`): one cuBLAS handle and one cuBLASLt handle
  per stream, the handle bound to that stream, a preallocated workspace (32 MiB, what cuBLAS
  asks for on Hopper) set on it, host pointer mode, default (FP32, no TF32) math; and a
  cuBLASLt plan per (operation, shape, dtype, operand alignments): descriptors, layouts and
  the heuristic's algorithm for operands as aligned as the ones at hand.  Nothing of this may happen inside a capture (it allocates and synchronises).
* **Inside capture**: only ``cublas{S,D}gemm_v2`` on a prepared handle and ``cublasLtMatmul``
  with a prepared plan, the stream passed explicitly; host-mode ``alpha``/``beta`` are read
  at capture time, which is right because they are constants of the captured step.

cuBLASLt epilogues fuse a ReLU layer completely when it has no dropout:
``RELU_AUX_BIAS`` (forward: bias, ReLU, and the ReLU bit-mask kept for the backward pass),
``DRELU`` / ``DRELU_BGRAD`` (backward delta ``(H W^T) ⊙ relu'`` from that mask, optionally
with the layer's bias gradient) and ``BGRADA`` (weight gradient with the bias gradient; with
gpumlp's row-major layout the summed operand is cuBLAS's ``A``).  Other activations, and
dropout, use a plain GEMM and gpumlp's epilogue kernels.  A configuration the library cannot
run (the heuristic returns no algorithm) raises :class:`BlasUnsupported` while planning,
before any capture, so the caller falls back to its own kernels.

Layout: gpumlp's matrices are row-major; a row-major ``r x c`` matrix is a column-major
``c x r`` one, so ``C = op(A) op(B)`` (row-major) is computed as ``C^T = op(B)^T op(A)^T``
(column-major) with the operands swapped: see :func:`rowmajor_gemm`.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

OP_N, OP_T = 0, 1
POINTER_MODE_HOST = 0
DEFAULT_MATH = 0
COMPUTE_TYPE = {"<f4": 68, "<f8": 70}  # CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_64F
DATA_TYPE = {"<f4": 0, "<f8": 1}  # CUDA_R_32F, CUDA_R_64F
#: cublasLtEpilogue_t values used here.
EPILOGUES = {"default": 1, "bias": 4, "relu_bias": 6, "relu_aux_bias": 134,
             "drelu": 136, "drelu_bgrad": 152, "bgrada": 256, "bgradb": 512}
#: cublasLtMatmulDescAttributes_t
DESC_TRANSA, DESC_TRANSB, DESC_EPILOGUE, DESC_BIAS_POINTER = 3, 4, 7, 8
DESC_AUX_POINTER, DESC_AUX_LD = 11, 12
PREF_MAX_WORKSPACE_BYTES = 1
#: cublasLtMatmulPreferenceAttributes_t MIN_ALIGNMENT_{A,B,C,D}_BYTES (uint32).  Unset, the
#: heuristic assumes every operand 256-byte aligned and may pick an algorithm that then
#: refuses (or misreads) a less aligned one: parameter views are only 16-byte aligned (a
#: hidden width of 100 puts W2 at byte 314000, 144 mod 256) and a slice of X is anything.
PREF_MIN_ALIGNMENT_BYTES = (5, 6, 7, 8)
#: The alignment cuBLASLt assumes when the preference does not say.
DEFAULT_ALIGNMENT = 256
#: Workspace per stream: cuBLAS's recommendation for Hopper (smaller GPUs need less).
WORKSPACE_BYTES = 32 * 2**20
#: The ReLU bit-mask's leading dimension (bits) must be a multiple of this.
AUX_LD_MULTIPLE = 128


class BlasError(RuntimeError):
    """A cuBLAS / cuBLASLt call returned an error status."""


class BlasUnsupported(BlasError):
    """cuBLASLt has no algorithm for this operation (shape, alignment, epilogue)."""


def aux_ld(rows: int) -> int:
    """Leading dimension, in bits, of the ReLU bit-mask for ``rows`` output features."""
    return -(-rows // AUX_LD_MULTIPLE) * AUX_LD_MULTIPLE


def aux_bytes(features: int, batch: int) -> int:
    """Bytes of the ReLU bit-mask of a layer with ``features`` outputs at ``batch`` rows."""
    return aux_ld(features) // 8 * batch


@dataclass(frozen=True)
class ColumnMajorGemm:
    """A column-major ``D (m x n) = op(A) (m x k) op(B) (k x n)`` with leading dimensions."""

    transa: int
    transb: int
    m: int
    n: int
    k: int
    lda: int
    ldb: int
    ldc: int


def rowmajor_gemm(left: tuple[int, int], left_t: bool, right: tuple[int, int],
                  right_t: bool) -> ColumnMajorGemm:
    """The column-major GEMM computing row-major ``C = op(L) op(R)``.

    ``left`` and ``right`` are the row-major *storage* shapes; ``left_t`` / ``right_t`` say
    whether the operand is used transposed.  cuBLAS's ``A`` is then ``R``'s storage and its
    ``B`` is ``L``'s (``C^T = op(R)^T op(L)^T``).
    """
    rows, inner = (left[1], left[0]) if left_t else left
    inner_r, cols = (right[1], right[0]) if right_t else right
    if inner != inner_r:
        raise ValueError(f"cannot multiply {'transposed ' if left_t else ''}{left} by "
                         f"{'transposed ' if right_t else ''}{right}: inner sizes "
                         f"{inner} and {inner_r} differ")
    # Row-major storage (r, c) is column-major (c, r) with leading dimension c.
    return ColumnMajorGemm(transa=OP_T if right_t else OP_N, transb=OP_T if left_t else OP_N,
                           m=cols, n=rows, k=inner, lda=right[1], ldb=left[1], ldc=cols)


def pointer(array: Any) -> int:
    """The device address of ``array``'s first element (CuPy), or its memory address."""
    data = array.data
    ptr = getattr(data, "ptr", None)
    return int(ptr) if ptr is not None else int(array.__array_interface__["data"][0])


def alignment(array: Any) -> int:
    """The largest power of two, up to :data:`DEFAULT_ALIGNMENT`, dividing ``array``'s
    address (a null operand: :data:`DEFAULT_ALIGNMENT`)."""
    address = 0 if array is None else pointer(array)
    return DEFAULT_ALIGNMENT if address == 0 else min(DEFAULT_ALIGNMENT, address & -address)


def stream_pointer(stream: Any) -> int:
    """The ``cudaStream_t`` of a CuPy stream (0 is the legacy default stream)."""
    return int(getattr(stream, "ptr", 0) or 0)


# ------------------------------------------------------------------------ the library calls
class BlasApi:
    """The library entry points gpumlp calls; :class:`CtypesBlas` is the real one and the
    tests substitute an emulation of the same methods (``tests/kernels/emulated_cublas.py``).

    Operands are device arrays (C-contiguous; the library sees only their address and the
    leading dimension in ``g``), ``None`` for a null pointer; ``stream`` is a CuPy stream;
    ``alpha`` and ``beta`` are host scalars (host pointer mode).
    """

    def create_handle(self) -> int:
        raise NotImplementedError

    def bind(self, handle: int, stream: Any, workspace: Any) -> None:
        """Bind the cuBLAS ``handle`` to ``stream`` with ``workspace``, host pointer mode."""
        raise NotImplementedError

    def gemm(self, handle: int, g: ColumnMajorGemm, alpha: float, a: Any, b: Any,
             beta: float, c: Any) -> None:
        """``c = alpha op(a) op(b) + beta c`` on the handle's stream (``{S,D}gemm``)."""
        raise NotImplementedError

    def lt_create(self) -> int:
        raise NotImplementedError

    def destroy_handle(self, handle: int) -> None:
        """Free a cuBLAS handle (``cublasDestroy``; it synchronises: never during capture)."""
        raise NotImplementedError

    def lt_destroy(self, lt_handle: int) -> None:
        """Free a cuBLASLt handle (``cublasLtDestroy``)."""
        raise NotImplementedError

    def lt_plan(self, lt_handle: int, dtype: np.dtype, g: ColumnMajorGemm, epilogue: str,
                aux_ld: int, workspace_bytes: int, alignments: tuple[int, int, int, int]
                ) -> Any:
        """Descriptors and the heuristic's algorithm for operands ``A, B, C, D`` aligned to
        at least ``alignments`` bytes; :class:`BlasUnsupported` if there is none."""
        raise NotImplementedError

    def lt_matmul(self, lt_handle: int, plan: Any, alpha: float, a: Any, b: Any, beta: float,
                  c: Any, d: Any, bias: Any, aux: Any, workspace: Any, stream: Any) -> None:
        """``d = epilogue(alpha op(a) op(b) + beta c)`` on ``stream`` (``cublasLtMatmul``)."""
        raise NotImplementedError


class _HeuristicResult(ctypes.Structure):
    _fields_ = [("algo", ctypes.c_uint64 * 8), ("workspaceSize", ctypes.c_size_t),
                ("state", ctypes.c_int), ("wavesCount", ctypes.c_float),
                ("reserved", ctypes.c_int * 4)]


@dataclass
class _LtPlan:
    desc: ctypes.c_void_p
    layouts: tuple
    algo: _HeuristicResult
    dtype: np.dtype


class CtypesBlas(BlasApi):
    """The real libraries, through ctypes, loaded as CuPy loads them."""

    def __init__(self) -> None:
        try:
            from cuda import pathfinder
        except ImportError as exc:  # CuPy 14 depends on it
            raise BlasError(f"cuda.pathfinder is missing ({exc}); it comes with CuPy 14") \
                from None
        try:
            self.cublas = ctypes.CDLL(pathfinder.load_nvidia_dynamic_lib("cublas").abs_path)
            self.lt = ctypes.CDLL(pathfinder.load_nvidia_dynamic_lib("cublasLt").abs_path)
        except Exception as exc:
            raise BlasError(f"cannot load cuBLAS / cuBLASLt: {exc}") from None
        vp, i32, i64, u64, sz = (ctypes.c_void_p, ctypes.c_int, ctypes.c_int64,
                                 ctypes.c_uint64, ctypes.c_size_t)
        signatures = {
            (self.cublas, "cublasCreate_v2"): [ctypes.POINTER(vp)],
            (self.cublas, "cublasSetStream_v2"): [vp, vp],
            (self.cublas, "cublasSetWorkspace_v2"): [vp, vp, sz],
            (self.cublas, "cublasSetPointerMode_v2"): [vp, i32],
            (self.cublas, "cublasSetMathMode"): [vp, i32],
            (self.cublas, "cublasSgemm_v2"): [vp, i32, i32, i32, i32, i32, vp, vp, i32, vp,
                                              i32, vp, vp, i32],
            (self.cublas, "cublasDgemm_v2"): [vp, i32, i32, i32, i32, i32, vp, vp, i32, vp,
                                              i32, vp, vp, i32],
            (self.lt, "cublasLtCreate"): [ctypes.POINTER(vp)],
            (self.cublas, "cublasDestroy_v2"): [vp],
            (self.lt, "cublasLtDestroy"): [vp],
            (self.lt, "cublasLtMatmulDescCreate"): [ctypes.POINTER(vp), i32, i32],
            (self.lt, "cublasLtMatmulDescSetAttribute"): [vp, i32, vp, sz],
            (self.lt, "cublasLtMatrixLayoutCreate"): [ctypes.POINTER(vp), i32, u64, u64, i64],
            (self.lt, "cublasLtMatmulPreferenceCreate"): [ctypes.POINTER(vp)],
            (self.lt, "cublasLtMatmulPreferenceSetAttribute"): [vp, i32, vp, sz],
            (self.lt, "cublasLtMatmulAlgoGetHeuristic"): [
                vp, vp, vp, vp, vp, vp, vp, i32, ctypes.POINTER(_HeuristicResult),
                ctypes.POINTER(i32)],
            (self.lt, "cublasLtMatmul"): [vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp, vp,
                                          vp, sz, vp],
        }
        for (library, name), argtypes in signatures.items():
            function = getattr(library, name)
            function.argtypes, function.restype = argtypes, ctypes.c_int

    def _call(self, library: ctypes.CDLL, name: str, *args: Any) -> None:
        status = getattr(library, name)(*args)
        if status != 0:
            raise BlasError(f"{name} returned status {status}")

    def create_handle(self) -> int:
        handle = ctypes.c_void_p()
        self._call(self.cublas, "cublasCreate_v2", ctypes.byref(handle))
        return int(handle.value)

    def bind(self, handle, stream, workspace):
        # The order matters: setting the stream resets the workspace to cuBLAS's own pool.
        self._call(self.cublas, "cublasSetStream_v2", handle, stream_pointer(stream))
        self._call(self.cublas, "cublasSetWorkspace_v2", handle, pointer(workspace),
                   workspace.nbytes)
        self._call(self.cublas, "cublasSetPointerMode_v2", handle, POINTER_MODE_HOST)
        self._call(self.cublas, "cublasSetMathMode", handle, DEFAULT_MATH)

    def gemm(self, handle, g, alpha, a, b, beta, c):
        single = c.dtype == np.float32
        scalar = ctypes.c_float if single else ctypes.c_double
        alpha_c, beta_c = scalar(alpha), scalar(beta)
        self._call(self.cublas, "cublasSgemm_v2" if single else "cublasDgemm_v2", handle,
                   g.transa, g.transb, g.m, g.n, g.k, ctypes.byref(alpha_c), pointer(a), g.lda,
                   pointer(b), g.ldb, ctypes.byref(beta_c), pointer(c), g.ldc)

    def lt_create(self):
        handle = ctypes.c_void_p()
        self._call(self.lt, "cublasLtCreate", ctypes.byref(handle))
        return int(handle.value)

    def destroy_handle(self, handle):
        self._call(self.cublas, "cublasDestroy_v2", handle)

    def lt_destroy(self, lt_handle):
        self._call(self.lt, "cublasLtDestroy", lt_handle)

    def _desc_attribute(self, desc, attribute, value):
        self._call(self.lt, "cublasLtMatmulDescSetAttribute", desc, attribute,
                   ctypes.byref(value), ctypes.sizeof(value))

    def lt_plan(self, lt_handle, dtype, g, epilogue, aux_ld, workspace_bytes, alignments):
        key = np.dtype(dtype).str
        desc = ctypes.c_void_p()
        self._call(self.lt, "cublasLtMatmulDescCreate", ctypes.byref(desc),
                   COMPUTE_TYPE[key], DATA_TYPE[key])
        self._desc_attribute(desc, DESC_TRANSA, ctypes.c_int32(g.transa))
        self._desc_attribute(desc, DESC_TRANSB, ctypes.c_int32(g.transb))
        self._desc_attribute(desc, DESC_EPILOGUE, ctypes.c_uint32(EPILOGUES[epilogue]))
        if aux_ld:
            self._desc_attribute(desc, DESC_AUX_LD, ctypes.c_int64(aux_ld))
        # Storage shapes of A, B, C = D (column-major), before op().
        shapes = [(g.m, g.k) if g.transa == OP_N else (g.k, g.m),
                  (g.k, g.n) if g.transb == OP_N else (g.n, g.k), (g.m, g.n)]
        lds = [g.lda, g.ldb, g.ldc]
        layouts = []
        for (rows, cols), ld in zip(shapes, lds):
            layout = ctypes.c_void_p()
            self._call(self.lt, "cublasLtMatrixLayoutCreate", ctypes.byref(layout),
                       DATA_TYPE[key], rows, cols, ld)
            layouts.append(layout)
        preference = ctypes.c_void_p()
        self._call(self.lt, "cublasLtMatmulPreferenceCreate", ctypes.byref(preference))
        limit = ctypes.c_uint64(workspace_bytes)
        self._call(self.lt, "cublasLtMatmulPreferenceSetAttribute", preference,
                   PREF_MAX_WORKSPACE_BYTES, ctypes.byref(limit), ctypes.sizeof(limit))
        for attribute, bytes_ in zip(PREF_MIN_ALIGNMENT_BYTES, alignments):
            value = ctypes.c_uint32(bytes_)
            self._call(self.lt, "cublasLtMatmulPreferenceSetAttribute", preference,
                       attribute, ctypes.byref(value), ctypes.sizeof(value))
        result, found = _HeuristicResult(), ctypes.c_int(0)
        status = self.lt.cublasLtMatmulAlgoGetHeuristic(
            lt_handle, desc, layouts[0], layouts[1], layouts[2], layouts[2], preference, 1,
            ctypes.byref(result), ctypes.byref(found))
        if status != 0 or found.value < 1:
            raise BlasUnsupported(f"cuBLASLt has no algorithm for epilogue {epilogue!r} at "
                                  f"{g} ({np.dtype(dtype).name}; status {status})")
        return _LtPlan(desc, tuple(layouts), result, np.dtype(dtype))

    def lt_matmul(self, lt_handle, plan, alpha, a, b, beta, c, d, bias, aux, workspace,
                  stream):
        # Host-side attributes (no stream work): allowed inside a capture.
        if bias is not None:
            self._desc_attribute(plan.desc, DESC_BIAS_POINTER, ctypes.c_void_p(pointer(bias)))
        if aux is not None:
            self._desc_attribute(plan.desc, DESC_AUX_POINTER, ctypes.c_void_p(pointer(aux)))
        scalar = ctypes.c_float if plan.dtype == np.float32 else ctypes.c_double
        alpha_c, beta_c = scalar(alpha), scalar(beta)
        la, lb, lc = plan.layouts
        self._call(self.lt, "cublasLtMatmul", lt_handle, plan.desc, ctypes.byref(alpha_c),
                   pointer(a), la, pointer(b), lb, ctypes.byref(beta_c), pointer(c), lc,
                   pointer(d), lc, ctypes.byref(plan.algo.algo), pointer(workspace),
                   workspace.nbytes, stream_pointer(stream))


# ----------------------------------------------------------------- row-major operations
class DirectBlas:
    """gpumlp's GEMMs on cuBLAS / cuBLASLt, safe to call inside a stream capture once
    :meth:`prepare` has run for the stream (and :meth:`plan` for each fused operation).

    Parameters
    ----------
    cupy : module
        CuPy (or the tests' emulation of it): allocates the workspaces.
    api : BlasApi, optional
        The library entry points; :class:`CtypesBlas` by default.
    workspace_bytes : int
        Workspace per stream for both libraries.
    plans : dict, optional
        Where the cuBLASLt plans are kept (host-side, usable with any handle of the device:
        a backend shares one table between its runs); a table of its own by default.
    """

    def __init__(self, cupy: Any, api: BlasApi | None = None,
                 workspace_bytes: int = WORKSPACE_BYTES, plans: dict | None = None):
        self.cupy = cupy
        self.api = api if api is not None else CtypesBlas()
        self.workspace_bytes = int(workspace_bytes)
        # stream -> (cuBLAS handle, cuBLASLt handle, cuBLASLt workspace, cuBLAS workspace):
        # both workspaces stay referenced here while the handles may use them.
        self._streams: dict[int, tuple[int, int, Any, Any]] = {}
        self._stream_objects: dict[int, Any] = {}  # to wait for before releasing
        self._plans: dict[tuple, Any] = {} if plans is None else plans

    # -------------------------------------------------------------------------- set-up
    def prepare(self, stream: Any) -> None:
        """Handles bound to ``stream`` and its workspace: call before capturing on it."""
        key = stream_pointer(stream)
        if key in self._streams:
            return
        workspace = self.cupy.empty(self.workspace_bytes, dtype=np.uint8)
        handle = self.api.create_handle()
        self.api.bind(handle, stream, workspace)
        # cuBLASLt takes its workspace per call: its own buffer, so that two GEMMs of one
        # stream never share scratch memory.
        lt_workspace = self.cupy.empty(self.workspace_bytes, dtype=np.uint8)
        self._streams[key] = (handle, self.api.lt_create(), lt_workspace, workspace)
        self._stream_objects[key] = stream

    def release(self, stream: Any) -> None:
        """Destroy the handles bound to ``stream`` and drop its workspaces (outside capture;
        the stream's queued work is waited for first).  A later stream that reuses the
        address is then prepared afresh instead of finding handles bound to a dead one."""
        entry = self._streams.pop(stream_pointer(stream), None)
        self._stream_objects.pop(stream_pointer(stream), None)
        if entry is None:
            return
        stream.synchronize()
        handle, lt_handle, _, _ = entry
        self.api.destroy_handle(handle)
        self.api.lt_destroy(lt_handle)

    def release_all(self) -> None:
        """:meth:`release` every stream prepared so far."""
        for stream in list(self._stream_objects.values()):
            self.release(stream)

    def workspace_nbytes(self) -> int:
        """Device bytes of the workspaces of the streams prepared."""
        return sum(lt.nbytes + ws.nbytes for _, _, lt, ws in self._streams.values())

    def live_streams(self) -> int:
        """Streams with handles bound (each holds two handles and two workspaces)."""
        return len(self._streams)

    def _bound(self, stream: Any) -> tuple[int, int, Any, Any]:
        try:
            return self._streams[stream_pointer(stream)]
        except KeyError:
            raise RuntimeError("DirectBlas.prepare(stream) must run before a GEMM on this "
                               "stream (it binds the handle outside any capture)") from None

    def plan(self, op: str, dtype: Any, g: ColumnMajorGemm, stream: Any,
             alignments: tuple[int, int, int, int] = (DEFAULT_ALIGNMENT,) * 4) -> Any:
        """The cuBLASLt plan of a fused ``op`` for operands ``A, B, C, D`` aligned to
        ``alignments`` bytes; raises :class:`BlasUnsupported` when the library has no
        algorithm for it.  Call before capture (the heuristic synchronises)."""
        epilogue = {"forward_relu": "relu_aux_bias", "forward_bias": "bias",
                    "backward_drelu": "drelu", "backward_drelu_bgrad": "drelu_bgrad",
                    "weight_grads": "bgrada",
                    "gemm": "default"}[op]
        key = (op, np.dtype(dtype).str, g, tuple(alignments))
        if key not in self._plans:
            lt_handle = self._bound(stream)[1]
            ld = aux_ld(g.m) if epilogue in ("relu_aux_bias", "drelu", "drelu_bgrad") else 0
            self._plans[key] = self.api.lt_plan(lt_handle, np.dtype(dtype), g, epilogue, ld,
                                                self.workspace_bytes, tuple(alignments))
        return self._plans[key]

    def _planned(self, op: str, dtype: Any, g: ColumnMajorGemm,
                 alignments: tuple[int, int, int, int]) -> Any:
        plan = self._plans.get((op, np.dtype(dtype).str, g, alignments))
        if plan is None:
            raise RuntimeError(f"no cuBLASLt plan for {op} at {g} with operands aligned to "
                               f"{alignments} bytes: DirectBlas.plan must run before the "
                               "operation (outside any capture)")
        return plan

    # ----------------------------------------------------------------------- operations
    def matmul(self, left: Any, right: Any, out: Any, stream: Any, left_t: bool = False,
               right_t: bool = False, accumulate: Any = None, beta: float = 0.0) -> Any:
        """Row-major ``out = op(left) op(right)`` (``+ beta * accumulate`` when given, which
        must be ``out`` itself for plain cuBLAS) on cuBLAS."""
        g = rowmajor_gemm(left.shape, left_t, right.shape, right_t)
        _check_out(out, (g.n, g.m))
        _check_operands(out.dtype, left=left, right=right)
        if accumulate is not None and accumulate is not out:
            raise ValueError("cuBLAS accumulates into out itself; use weight_grads for a "
                             "separate C")
        handle = self._bound(stream)[0]
        self.api.gemm(handle, g, 1.0, right, left, beta if accumulate is not None else 0.0,
                      out)
        return out

    def _lt(self, op: str, left: Any, left_t: bool, right: Any, right_t: bool, out: Any,
            stream: Any, bias: Any = None, aux: Any = None, c: Any = None,
            beta: float = 0.0) -> None:
        g = rowmajor_gemm(left.shape, left_t, right.shape, right_t)
        _check_out(out, (g.n, g.m))
        _check_operands(out.dtype, left=left, right=right, bias=bias, c=c)
        plan = self._planned(op, out.dtype, g, lt_alignments(left, right, out, c))
        _, lt_handle, workspace, _ = self._bound(stream)
        self.api.lt_matmul(lt_handle, plan, 1.0, right, left, beta,
                           out if c is None else c, out, bias, aux, workspace, stream)

    def affine_relu(self, x: Any, w: Any, b: Any, out: Any, mask: Any, stream: Any) -> Any:
        """``out = relu(x w + b)``, keeping the ReLU bit-mask in ``mask`` (uint8,
        :func:`aux_bytes` long) for :meth:`backprop_relu`: one cuBLASLt call."""
        self._lt("forward_relu", x, False, w, False, out, stream, bias=b, aux=mask)
        return out

    def affine(self, x: Any, w: Any, b: Any, out: Any, stream: Any) -> Any:
        """``out = x w + b`` (an output layer): one cuBLASLt call."""
        self._lt("forward_bias", x, False, w, False, out, stream, bias=b)
        return out

    def backprop_relu(self, h_next: Any, w_next: Any, mask: Any, out: Any, stream: Any,
                      db: Any = None) -> Any:
        """``out = (h_next w_next^T) ⊙ relu'`` from the forward's mask (``DRELU``), and with
        ``db`` also its column sums, the layer's bias gradient (``DRELU_BGRAD``): one
        cuBLASLt call."""
        op = "backward_drelu" if db is None else "backward_drelu_bgrad"
        self._lt(op, h_next, False, w_next, True, out, stream, bias=db, aux=mask)
        return out

    def weight_grads(self, a_prev: Any, h: Any, dw: Any, db: Any, stream: Any,
                     w: Any = None, decay: float = 0.0) -> None:
        """``dw = a_prev^T h + decay * w`` and ``db = sum_rows(h)``: one cuBLASLt call
        (``BGRADA``; the decay as ``beta`` with ``C = w``)."""
        if decay and w is None:
            raise ValueError("weight_grads with decay needs the weights w")
        self._lt("weight_grads", a_prev, True, h, False, dw, stream, bias=db,
                 c=w if decay else None, beta=float(decay) if decay else 0.0)

    def fused_gemms(self, op: str, left: Any, right: Any, out: Any, stream: Any,
                    c: Any = None) -> Any:
        """Plan the cuBLASLt call of ``op`` on these operands (see :meth:`plan`): their
        shapes, and the alignment of their addresses, which the plan's algorithm relies on
        (a later call on operands less aligned needs its own plan); the transposes are those
        of the operations above."""
        transposes = {"forward_relu": (False, False), "forward_bias": (False, False),
                      "backward_drelu": (False, True), "backward_drelu_bgrad": (False, True),
                      "weight_grads": (True, False)}[op]
        g = rowmajor_gemm(left.shape, transposes[0], right.shape, transposes[1])
        return self.plan(op, out.dtype, g, stream, lt_alignments(left, right, out, c))


def lt_alignments(left: Any, right: Any, out: Any, c: Any = None
                  ) -> tuple[int, int, int, int]:
    """The alignments of cuBLASLt's ``A, B, C, D`` for row-major ``out = op(left) op(right)``
    (+ ``c``): ``A`` is ``right`` and ``B`` is ``left`` (see :func:`rowmajor_gemm`), ``C`` is
    ``out`` unless a separate ``c`` is given."""
    return (alignment(right), alignment(left), alignment(out if c is None else c),
            alignment(out))


def _check_operands(dtype: np.dtype, **arrays: Any) -> None:
    """cuBLAS sees a pointer and a leading dimension: every operand must be C-contiguous and
    of the GEMM's dtype (the library would read other bytes as this type)."""
    for name, array in arrays.items():
        if array is None:
            continue
        if array.dtype != dtype:
            raise TypeError(f"{name} has dtype {array.dtype}; this GEMM is {np.dtype(dtype)} "
                            "(all operands must match out)")
        if not array.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous (shape {tuple(array.shape)}, "
                             f"strides {array.strides}); cuBLAS reads it with a fixed stride")


def _check_out(out: Any, shape: tuple[int, int]) -> None:
    if tuple(out.shape) != shape:
        raise ValueError(f"out has shape {tuple(out.shape)}; the product is {shape}")
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous (cuBLAS writes it with a fixed stride)")
