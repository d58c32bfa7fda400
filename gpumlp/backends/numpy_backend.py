"""The NumPy (CPU) backend: the generic operations rewritten in place, without temporaries.

Every fast path writes through ``out=`` arguments and small work arrays from a per-thread,
bounded pool (:mod:`gpumlp.backends.scratch`), so a training step at a fixed batch size
allocates nothing after its first call, threads never share a temporary, and memory stays
bounded whatever batch sizes are seen; matrix products
go to BLAS on contiguous (or transposed-contiguous) operands, which NumPy passes through
without copying, and the elementwise work between them runs on the calling thread, or split
over the cores when asked (:mod:`gpumlp.backends.threads`; see :class:`NumpyBackend`).

Where Numba imports, that elementwise work is done by compiled passes instead
(:mod:`gpumlp.backends.cpu_kernels`: one pass per operation where NumPy makes several); the
NumPy code below stays as their reference and as the path when ``GPUMLP_CPU_KERNELS=off`` or
Numba is missing.

Matrix products stay in NumPy's BLAS (OpenBLAS in NumPy's wheels) although Intel's MKL is
faster for the small products of a training step on Intel CPUs: the eight products of a
default-recipe step at batch 128 (784-512-512-10, float32) took 1.82 ms in OpenBLAS against
1.33 ms in MKL (PyTorch's, on the same memory; sum of each product's median, 30 interleaved
repeats of ``benchmarks/cpu_gemm_blas.py --batch 128`` alone on the 2-core Xeon, one-minute
load average 1.5), and about the same at batch 1024 in an earlier run.  Using it would mean a
second BLAS in the process beside NumPy's (the 229 MB ``mkl`` wheel and Intel's OpenMP, or
PyTorch), bound by our own ``cblas_sgemm`` wrapper, with two thread pools that spin against
each other on the same cores: in that run the eight products at batch 1024 took 30.5 ms in
MKL, the two libraries interleaved, against 10.6 ms in OpenBLAS.  Until one BLAS can be chosen for
the whole process (a NumPy built against MKL), the products stay where NumPy puts them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import activations, config
from ..dropout import Dropout, keep_mask, keep_threshold
from ..precision import gemm_operand
from .base import Backend, check_spans
from .cpu_path import CpuPath, choose_cpu_path
from .scratch import ScratchPool
from .threads import RowChunks

_MASK32 = 0xFFFFFFFF
#: Activations the compiled passes know (forward; the backward excludes hard_limit, which
#: has no derivative and is left to the reference's error).
_FORWARD_CODES = dict(activations.CODES)
_BACKWARD_CODES = {k: v for k, v in activations.CODES.items() if k != "hard_limit"}


class NumpyBackend(Backend):
    """CPU backend on NumPy; float32 and float64.

    Parameters
    ----------
    threads : int, optional
        Threads for the elementwise work between matrix products.  Default: the value of
        ``GPUMLP_NUM_THREADS`` when set, else 1.  BLAS keeps its worker threads spinning
        for a while after every product, so elementwise work split over the same cores
        competes with them: on a 2-core machine the default recipe's step ran about 5 %
        faster on one thread than on two, batches of 1024 and 8192 gained nothing from
        the split, and the compiled Adam update was slower on two threads at every size
        (figures in :mod:`gpumlp.backends.threads`).
    cpu_kernels : {"auto", "on", "off"}, optional
        Whether the elementwise work runs as Numba-compiled passes
        (:mod:`gpumlp.backends.cpu_kernels`): ``"auto"`` where Numba imports, ``"on"``
        requires it, ``"off"`` keeps the NumPy passes.  Default: ``GPUMLP_CPU_KERNELS``,
        else ``"auto"``.
    """

    name = "numpy"

    def __init__(self, threads: int | None = None, cpu_kernels: str | None = None) -> None:
        super().__init__(np)
        if threads is None and config.get("GPUMLP_NUM_THREADS") is None:
            threads = 1
        self.chunks = RowChunks(threads)
        self.cpu_path: CpuPath = choose_cpu_path(cpu_kernels)
        self._scratch = ScratchPool(lambda shape, dtype: np.empty(shape, dtype=dtype))
        # Forward dropout masks kept (per thread, bounded) for the backward pass, which would
        # otherwise regenerate them: Philox is cheap on a GPU, not in NumPy.
        self._masks = ScratchPool(max_entries=16)
        # Weight-span tables of the compiled update, by spans (read-only once made).
        self._span_tables: dict[tuple, np.ndarray] = {}

    def scratch(self, tag: str, shape: tuple, dtype: Any) -> np.ndarray:
        """A work array for one purpose and shape, from the calling thread's bounded pool."""
        return self._scratch.get(tag, shape, np.dtype(dtype).str)

    def warm_up(self) -> None:
        """Compile (or load from Numba's cache) every compiled CPU pass."""
        self.cpu_path.compile()

    def describe(self) -> dict:
        info = super().describe()
        info["blas"] = _blas_name()
        info["elementwise_threads"] = self.chunks.threads
        info["cpu_path"] = self.cpu_path.describe()
        return info

    def _compiled(self, *arrays: np.ndarray):
        """The compiled kernels when they may take these arrays (C-contiguous, one float
        dtype), else ``None``: the NumPy passes then do the work."""
        kernels = self.cpu_path.kernels
        if kernels is None:
            return None
        dtype = arrays[0].dtype
        if dtype != np.float32 and dtype != np.float64:
            return None
        for a in arrays:
            if a.dtype != dtype or not a.flags.c_contiguous:
                return None
        return kernels

    # ----------------------------------------------------------------------- data movement
    def gather_rows(self, src, index, out):
        kernels = (self._compiled(src, out) if src.ndim == 2 and out.ndim == 2
                   and isinstance(index, np.ndarray) and index.dtype == np.int64
                   and index.ndim == 1 and out.shape == (index.shape[0], src.shape[1])
                   else None)
        # Out-of-range (or negative) indices go to np.take, which wraps or raises as usual.
        if kernels is None or (index.size and (index.min() < 0
                                               or index.max() >= src.shape[0])):
            return super().gather_rows(src, index, out)
        kernels.gather_rows(src, index, out)
        return out

    # ----------------------------------------------------------------------------- forward
    def affine_act(self, x, w, b, act, out, dropout: Dropout | None = None,
                   precision: str = "float32"):
        # TF32 is emulated: inputs rounded as the tensor cores round them (gpumlp.precision).
        np.matmul(gemm_operand(np, x, precision), gemm_operand(np, w, precision), out=out)
        kernels = (self._compiled(out, b) if act in _FORWARD_CODES and out.ndim == 2
                   and b.shape == out.shape[1:] else None)
        if kernels is not None:
            return self._bias_act_compiled(kernels, out, b, act, dropout)
        tmp = self.scratch("act", out.shape, out.dtype) if act == "leaky_relu" else None
        # Drawn on this thread: split over threads, Philox's many short passes ran slower.
        mask = None if dropout is None else keep_mask(np, out.shape, dropout)
        scale = out.dtype.type(1.0 / dropout.keep) if dropout is not None else None

        def epilogue(start: int, stop: int) -> None:
            rows = out[start:stop]
            rows += b
            self._activate_in_place(act, rows, None if tmp is None else tmp[start:stop])
            if mask is not None:  # inverted dropout: (A * mask) * (1 / keep)
                np.multiply(rows, mask[start:stop], out=rows)
                rows *= scale

        self.chunks.run(epilogue, out.shape[0], out.shape[1])
        if mask is not None:  # kept for the backward pass, which would otherwise draw it again
            self._masks.put((dropout, out.shape), mask)
        return out

    def _bias_act_compiled(self, kernels, out, b, act, dropout: Dropout | None):
        dt = out.dtype.type
        code, m = _FORWARD_CODES[act], out.shape[1]
        constants = (dt(0), dt(1), dt(activations.LEAKY_SLOPE))
        if dropout is None:
            self.chunks.run(lambda start, stop: kernels.bias_act(
                out[start:stop], b, code, *constants), out.shape[0], m)
            return out
        keep = np.empty(out.shape, np.bool_)
        scale, philox = dt(1.0 / dropout.keep), _philox_arguments(dropout)
        self.chunks.run(lambda start, stop: kernels.bias_act_dropout(
            out[start:stop], b, code, keep[start:stop], start * m, *philox, scale, *constants),
            out.shape[0], m)
        self._masks.put((dropout, out.shape), keep)  # for the backward pass
        return out

    @staticmethod
    def _activate_in_place(act: str, z: np.ndarray, tmp: np.ndarray | None) -> None:
        if act == "identity":
            return
        if act == "relu":
            np.maximum(z, 0, out=z)
        elif act == "leaky_relu":
            np.multiply(z, z.dtype.type(activations.LEAKY_SLOPE), out=tmp)
            np.maximum(z, tmp, out=z)
        elif act == "sigmoid":
            # 1 / (1 + e^-z); e^-z may overflow to inf for very negative z, giving exactly 0.
            with np.errstate(over="ignore"):
                np.negative(z, out=z)
                np.exp(z, out=z)
            z += 1
            np.reciprocal(z, out=z)
        elif act == "tanh":
            np.tanh(z, out=z)
        else:
            activations.apply(np, act, z, z)

    def _dropout_mask(self, shape: tuple, dropout: Dropout) -> np.ndarray:
        mask = self._masks.pop((dropout, shape))
        if mask is not None:
            return mask
        kernels = self.cpu_path.kernels
        if kernels is None:
            return keep_mask(np, shape, dropout)
        mask = np.empty(shape, np.bool_)
        kernels.keep_flags(mask.reshape(-1), 0, *_philox_arguments(dropout))
        return mask

    def softmax(self, z, out):
        rows = self.scratch("rows", (z.shape[0], 1), z.dtype)
        np.max(z, axis=1, keepdims=True, out=rows)
        np.subtract(z, rows, out=out)
        np.exp(out, out=out)
        np.sum(out, axis=1, keepdims=True, out=rows)
        out /= rows
        return out

    # ---------------------------------------------------------------------------- backward
    def act_grad(self, delta, a, act, out, dropout: Dropout | None = None):
        kernels = (self._compiled(delta, a, out) if act in _BACKWARD_CODES and a.ndim == 2
                   and delta.shape == a.shape == out.shape else None)
        if kernels is not None:
            return self._act_grad_compiled(kernels, delta, a, act, out, dropout)
        if dropout is not None:
            return self._act_grad_dropped(delta, a, act, out, dropout)
        slope = self.scratch("slope", a.shape, a.dtype)

        def rows(start: int, stop: int) -> None:
            self._act_grad_rows(delta[start:stop], a[start:stop], act, out[start:stop],
                                slope[start:stop])

        self.chunks.run(rows, a.shape[0], a.shape[1] if a.ndim > 1 else 1)
        return out

    def _act_grad_compiled(self, kernels, delta, a, act, out, dropout: Dropout | None):
        dt = a.dtype.type
        code = _BACKWARD_CODES[act]
        # The reference's constants: slope = max(sign(a), 0) * (1 - s) + s for leaky relu.
        constants = (dt(0), dt(1), dt(activations.LEAKY_SLOPE),
                     dt(1 - activations.LEAKY_SLOPE))
        in_place = delta is out or (delta.ctypes.data == out.ctypes.data)
        if dropout is None:
            if in_place:  # one name for the memory: the loop vectorises (see cpu_kernels)
                work = lambda start, stop: kernels.act_grad_in_place(  # noqa: E731
                    out[start:stop], a[start:stop], code, *constants)
            else:
                work = lambda start, stop: kernels.act_grad(  # noqa: E731
                    delta[start:stop], a[start:stop], out[start:stop], code, *constants)
            self.chunks.run(work, a.shape[0], a.shape[1])
            return out
        mask = self._dropout_mask(a.shape, dropout)
        keep, scale = dt(dropout.keep), dt(1.0 / dropout.keep)
        if in_place:
            work = lambda start, stop: kernels.act_grad_dropout_in_place(  # noqa: E731
                out[start:stop], a[start:stop], mask[start:stop], code, keep, scale,
                *constants)
        else:
            work = lambda start, stop: kernels.act_grad_dropout(  # noqa: E731
                delta[start:stop], a[start:stop], out[start:stop], mask[start:stop], code,
                keep, scale, *constants)
        self.chunks.run(work, a.shape[0], a.shape[1])
        return out

    @staticmethod
    def _act_grad_rows(delta, a, act, out, slope) -> None:
        # Slopes are built in a's dtype: a boolean mask would make NumPy cast through a
        # temporary buffer on every call.
        if out is not delta:
            np.copyto(out, delta)
        if act == "identity":
            return
        if act == "relu":
            np.sign(a, out=slope)  # a = max(z, 0) >= 0, so sign(a) is relu'(z)
        elif act == "leaky_relu":
            np.sign(a, out=slope)  # 1 where z > 0, -1 where z < 0 (a has z's sign)
            np.maximum(slope, 0, out=slope)
            slope *= a.dtype.type(1 - activations.LEAKY_SLOPE)
            slope += a.dtype.type(activations.LEAKY_SLOPE)
        elif act == "sigmoid":
            np.subtract(1, a, out=slope)
            slope *= a
        elif act == "tanh":
            np.multiply(a, a, out=slope)
            np.subtract(1, slope, out=slope)
        else:
            slope[...] = activations.derivative_from_output(np, act, a)
        out *= slope

    def _act_grad_dropped(self, delta, a, act, out, dropout: Dropout):
        """``delta ⊙ mask / keep ⊙ phi'(A)`` where ``a = A ⊙ mask / keep`` is stored."""
        keep = a.dtype.type(dropout.keep)
        scale = a.dtype.type(1.0 / dropout.keep)
        mask = self._dropout_mask(a.shape, dropout)
        undropped = self.scratch("undropped", a.shape, a.dtype)
        np.multiply(a, keep, out=undropped)  # A where kept; dropped entries are masked below
        self.act_grad(delta, undropped, act, out)
        np.multiply(out, mask, out=out)
        out *= scale
        return out

    def backprop_hidden(self, h_next, w_next, a, act, out, dropout: Dropout | None = None,
                        precision: str = "float32"):
        np.matmul(gemm_operand(np, h_next, precision), gemm_operand(np, w_next, precision).T,
                  out=out)
        return self.act_grad(out, a, act, out, dropout)

    def weight_grads(self, a_prev, h, dw, db, w=None, decay: float = 0.0,
                     precision: str = "float32"):
        np.matmul(gemm_operand(np, a_prev, precision).T, gemm_operand(np, h, precision), out=dw)
        kernels = self._compiled(dw, w) if decay and w.shape == dw.shape else None
        if kernels is not None:
            factor = w.dtype.type(decay)
            rows = w.shape[0] if w.ndim > 1 else 1
            flat_dw, flat_w = dw.reshape(rows, -1), w.reshape(rows, -1)
            self.chunks.run(lambda start, stop: kernels.add_scaled(
                flat_dw[start:stop].reshape(-1), flat_w[start:stop].reshape(-1), factor),
                rows, flat_w.shape[1])
        elif decay:
            tmp = self.scratch("decay", w.shape, w.dtype)
            factor = w.dtype.type(decay)

            def add_decay(start: int, stop: int) -> None:
                np.multiply(w[start:stop], factor, out=tmp[start:stop])
                dw[start:stop] += tmp[start:stop]

            self.chunks.run(add_decay, w.shape[0], w.shape[1] if w.ndim > 1 else 1)
        # Column sums as a BLAS product with a ones vector: multithreaded, unlike np.sum.
        ones = self.scratch("ones", (h.shape[0],), h.dtype)
        ones.fill(1)
        np.matmul(ones, h, out=db)

    # ------------------------------------------------------------------------------ losses
    def affine_softmax_xent(self, x, w, b, t, z_out, h_out, precision: str = "float32"):
        kernels = (self._compiled(z_out, b, t, h_out) if z_out.ndim == 2
                   and b.shape == z_out.shape[1:] and t.shape == z_out.shape == h_out.shape
                   else None)
        if kernels is None:
            return super().affine_softmax_xent(x, w, b, t, z_out, h_out, precision)
        np.matmul(gemm_operand(np, x, precision), gemm_operand(np, w, precision), out=z_out)
        return self._softmax_xent_compiled(kernels, z_out, b, t, h_out)

    @staticmethod
    def _softmax_xent_compiled(kernels, z, b, t, h_out):
        """Bias, softmax, cross-entropy and ``H`` in one pass over each row of logits."""
        n, dt = z.shape[0], z.dtype.type
        total = kernels.softmax_xent(z, b, t, h_out, dt(1.0 / n), dt(0))
        return np.asarray(total / n, dtype=z.dtype)

    def softmax_xent(self, z, t, h_out):
        kernels = (self._compiled(z, t, h_out) if z.ndim == 2
                   and t.shape == z.shape == h_out.shape else None)
        if kernels is not None:
            zero_bias = self.scratch("zero_bias", z.shape[1:], z.dtype)
            zero_bias.fill(0)
            logits = self.scratch("logits", z.shape, z.dtype)  # z itself stays unchanged
            np.copyto(logits, z)
            return self._softmax_xent_compiled(kernels, logits, zero_bias, t, h_out)
        n = z.shape[0]
        dt = z.dtype.type
        rows = self.scratch("rows", (n, 1), z.dtype)
        log_norm = self.scratch("log_norm", (n, 1), z.dtype)
        np.max(z, axis=1, keepdims=True, out=rows)
        np.subtract(z, rows, out=h_out)
        np.exp(h_out, out=h_out)
        np.sum(h_out, axis=1, keepdims=True, out=log_norm)
        h_out /= log_norm
        np.log(log_norm, out=log_norm)
        log_norm += rows
        # sum_ij t_ij (log_norm_i - z_ij), without forming t * z.
        target_mass = self.scratch("target_mass", (n, 1), z.dtype)
        np.sum(t, axis=1, keepdims=True, out=target_mass)
        loss = (np.vdot(log_norm, target_mass) - np.vdot(t, z)) / n
        h_out -= t
        h_out *= dt(1.0 / n)
        return np.asarray(loss, dtype=z.dtype)

    def squared_error(self, a, t, h_out):
        n = a.shape[0]
        np.subtract(a, t, out=h_out)
        loss = np.vdot(h_out, h_out) / (2 * n)
        h_out *= a.dtype.type(1.0 / n)
        return np.asarray(loss, dtype=a.dtype)

    # --------------------------------------------------------------------------- optimizer
    def folds_l2_into_update(self, params) -> bool:
        """On the compiled path the update adds ``decay * W`` and sums ``W * W`` in its own
        pass over the weights; the NumPy passes keep them in the weight gradients' pass and
        a loss pass of their own, as the reference does."""
        return params.ndim == 1 and self._compiled(params) is not None

    def sgd_step(self, params, grads, velocity, lr, momentum, nesterov, l2=None):
        dt = params.dtype.type
        kernels = self._compiled(params, grads, velocity) if params.ndim == 1 else None
        if kernels is not None:
            self._update_compiled(kernels.sgd, params, l2, (grads, velocity),
                                  (dt(lr), dt(momentum), bool(nesterov),
                                   dt(np.finfo(params.dtype).tiny)))
            return
        if l2 is not None:
            self.fold_l2_term(params, grads, l2)
        scratch = self.scratch("optim", params.shape, params.dtype)

        def update(start: int, stop: int) -> None:
            p, g, vel, tmp = (a[start:stop] for a in (params, grads, velocity, scratch))
            vel *= dt(momentum)
            np.multiply(g, dt(lr), out=tmp)
            vel -= tmp
            if nesterov:
                p -= tmp
                np.multiply(vel, dt(momentum), out=tmp)
            else:
                np.copyto(tmp, vel)
            p += tmp

        self.chunks.run(update, params.shape[0], 1)

    def adam_step(self, params, grads, m, v, lr, beta1, beta2, eps, step, l2=None):
        dt = params.dtype.type
        lr_t = lr * (1 - beta2**step) ** 0.5 / (1 - beta1**step)
        kernels = self._compiled(params, grads, m, v) if params.ndim == 1 else None
        if kernels is not None:
            self._update_compiled(kernels.adam, params, l2, (grads, m, v),
                                  (dt(beta1), dt(1 - beta1), dt(beta2), dt(1 - beta2),
                                   dt(eps), dt(lr_t), dt(np.finfo(params.dtype).tiny)))
            return
        if l2 is not None:
            self.fold_l2_term(params, grads, l2)
        scratch = self.scratch("optim", params.shape, params.dtype)

        def update(start: int, stop: int) -> None:
            p, g, m_, v_, tmp = (a[start:stop] for a in (params, grads, m, v, scratch))
            m_ *= dt(beta1)
            np.multiply(g, dt(1 - beta1), out=tmp)
            m_ += tmp
            v_ *= dt(beta2)
            np.multiply(g, g, out=tmp)
            tmp *= dt(1 - beta2)
            v_ += tmp
            np.sqrt(v_, out=tmp)
            tmp += dt(eps)
            np.divide(m_, tmp, out=tmp)
            tmp *= dt(lr_t)
            p -= tmp

        self.chunks.run(update, params.shape[0], 1)

    def _update_compiled(self, kernel, params, l2, state: tuple, constants: tuple) -> None:
        """One compiled pass of ``kernel`` (:func:`cpu_kernels.adam` or ``sgd``) over the flat
        buffer, the L2 term of ``l2`` folded in; split over threads, each chunk's sum of
        squares is added in chunk order."""
        dt = params.dtype.type
        spans = self._span_table(() if l2 is None else l2.spans, params.size)
        decay = dt(0 if l2 is None else l2.decay)
        n = params.shape[0]
        if self.chunks.threads == 1:
            total = kernel(params, *state, 0, n, spans, decay, *constants)
        else:
            sums: dict[int, float] = {}

            def work(start: int, stop: int) -> None:
                sums[start] = kernel(params, *state, start, stop, spans, decay, *constants)

            self.chunks.run(work, n, 1)
            total = sum(sums[start] for start in sorted(sums))
        if l2 is not None and spans.shape[0]:
            np.add(l2.loss_acc, dt(l2.loss_scale) * dt(total), out=l2.loss_acc)

    def _span_table(self, spans, size: int) -> np.ndarray:
        """``spans`` as the compiled update takes them: a sorted ``(k, 2)`` int64 table of
        disjoint ``(offset, size)`` inside ``size`` elements (made once per spans, then
        reused)."""
        key = (spans, size)
        table = self._span_tables.get(key)
        if table is None:
            pairs = sorted(check_spans("optimizer update", spans, size))
            for (offset, length), (after, _) in zip(pairs, pairs[1:]):
                if offset + length > after:
                    raise ValueError(f"optimizer update: weight span (offset={offset}, "
                                     f"size={length}) overlaps the one at offset {after}; "
                                     f"allowed: disjoint spans")
            table = np.array(pairs, np.int64).reshape(-1, 2)
            if len(self._span_tables) >= 64:  # bounded: a few networks' layouts at a time
                self._span_tables.clear()
            self._span_tables[key] = table
        return table


def _philox_arguments(dropout: Dropout) -> tuple:
    """Key, call counter and keep limit of one dropout call as the compiled passes take
    them: uint64 words (``word < limit`` is ``(word >> 8) < keep_threshold``)."""
    u64 = np.uint64
    return (u64(dropout.seed & _MASK32), u64((dropout.seed >> 32) & _MASK32),
            u64(dropout.counter & _MASK32), u64((dropout.counter >> 32) & _MASK32),
            u64(keep_threshold(dropout.keep) << 8))


def _blas_name() -> str:
    """The BLAS NumPy was built against (for info and benchmark records)."""
    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: show_config has no dict mode
        return "unknown"
