"""The NumPy (CPU) backend: the generic operations rewritten in place, without temporaries.

Every fast path writes through ``out=`` arguments and small work arrays from a per-thread,
bounded pool (:mod:`gpumlp.backends.scratch`), so a training step at a fixed batch size
allocates nothing after its first call, threads never share a temporary, and memory stays
bounded whatever batch sizes are seen; matrix products
go to BLAS on contiguous (or transposed-contiguous) operands, which NumPy passes through
without copying, and the elementwise work between them runs on the calling thread, or split
over the cores when asked (:mod:`gpumlp.backends.threads`; see :class:`NumpyBackend`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import activations
from ..dropout import Dropout, keep_mask
from ..precision import gemm_operand
from .base import Backend
from .scratch import ScratchPool
from .threads import RowChunks


class NumpyBackend(Backend):
    """CPU backend on NumPy; float32 and float64.

    Parameters
    ----------
    threads : int, optional
        Threads for the elementwise work between matrix products.  Default: the value of
        ``GPUMLP_NUM_THREADS`` when set, else 1.  BLAS keeps its worker threads spinning
        for a while after every product, so elementwise work split over the same cores
        competes with them: on a 2-core machine the default recipe's step ran about 5 %
        faster on one thread than on two, and batches of 1024 and 8192 gained nothing from
        the split.
    """

    name = "numpy"

    def __init__(self, threads: int | None = None) -> None:
        super().__init__(np)
        if threads is None and not os.environ.get("GPUMLP_NUM_THREADS", "").strip():
            threads = 1
        self.chunks = RowChunks(threads)
        self._scratch = ScratchPool(lambda shape, dtype: np.empty(shape, dtype=dtype))
        # Forward dropout masks kept (per thread, bounded) for the backward pass, which would
        # otherwise regenerate them: Philox is cheap on a GPU, not in NumPy.
        self._masks = ScratchPool(max_entries=16)

    def scratch(self, tag: str, shape: tuple, dtype: Any) -> np.ndarray:
        """A work array for one purpose and shape, from the calling thread's bounded pool."""
        return self._scratch.get(tag, shape, np.dtype(dtype).str)

    def describe(self) -> dict:
        info = super().describe()
        info["blas"] = _blas_name()
        info["elementwise_threads"] = self.chunks.threads
        return info

    # ----------------------------------------------------------------------------- forward
    def affine_act(self, x, w, b, act, out, dropout: Dropout | None = None,
                   precision: str = "float32"):
        # TF32 is emulated: inputs rounded as the tensor cores round them (gpumlp.precision).
        np.matmul(gemm_operand(np, x, precision), gemm_operand(np, w, precision), out=out)
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
        return keep_mask(np, shape, dropout) if mask is None else mask

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
        if dropout is not None:
            return self._act_grad_dropped(delta, a, act, out, dropout)
        slope = self.scratch("slope", a.shape, a.dtype)

        def rows(start: int, stop: int) -> None:
            self._act_grad_rows(delta[start:stop], a[start:stop], act, out[start:stop],
                                slope[start:stop])

        self.chunks.run(rows, a.shape[0], a.shape[1] if a.ndim > 1 else 1)
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
        if decay:
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
    def softmax_xent(self, z, t, h_out):
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
    def sgd_step(self, params, grads, velocity, lr, momentum, nesterov):
        dt = params.dtype.type
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

    def adam_step(self, params, grads, m, v, lr, beta1, beta2, eps, step):
        dt = params.dtype.type
        scratch = self.scratch("optim", params.shape, params.dtype)
        lr_t = lr * (1 - beta2**step) ** 0.5 / (1 - beta1**step)

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


def _blas_name() -> str:
    """The BLAS NumPy was built against (for info and benchmark records)."""
    try:
        config = np.show_config(mode="dicts")
        blas = config.get("Build Dependencies", {}).get("blas", {})
        return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()
    except Exception:  # older NumPy: show_config has no dict mode
        return "unknown"
