"""The backend interface: whole fused operations of an MLP step, with generic implementations.

Every method here is written once against ``self.xp`` (NumPy or CuPy) and is the reference the
fast paths of each backend are tested against.  Model code calls only these operations, so a
backend may fuse each one into a single kernel without the model noticing.

Conventions shared by all operations:

* arrays are C-contiguous, row-major minibatches: ``x`` is ``(n, d_in)``, ``w`` is
  ``(d_in, d_out)``, ``b`` is ``(d_out,)``;
* ``out`` arguments are preallocated by the caller and returned, so the steady-state
  training step allocates nothing;
* losses return a 0-d array on the backend's device (no host synchronisation) holding the mean
  loss over the batch, and write ``H_L = dJ/dZ_L`` (already divided by the batch size).

A backend may also capture whole steps as graphs and replay them; :class:`Backend` documents
that **capture protocol** (:meth:`Backend.graphs_unavailable_reason` and what follows it) and
implements it as "nothing is captured", which is what the NumPy backend keeps.

**Runs.**  Whatever executes operations for a while — the eager epochs of a fit, one
prediction — opens a run (:meth:`Backend.open_run`), passes its :attr:`Run.backend` to the
operations (the network's ``forward``, the optimizer's ``step``, the training step) and
closes it when done.  A backend whose operations need device state of their own (the CUDA
backend's step scalars, split-K scratch, span tables, library handles) keeps it in the run,
never in itself, so a finished run leaves nothing behind; here a run holds nothing.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Protocol

from .. import activations
from ..dropout import Dropout, keep_mask
from ..precision import gemm_operand


@dataclass(frozen=True)
class L2Term:
    """A step's L2 penalty, given to the optimizer update of a backend that folds it in
    (:meth:`Backend.folds_l2_into_update`).

    Before updating, the update adds ``decay * W`` to the gradient of every weight in
    ``spans`` (biases excluded) and ``loss_scale * sum ||W||^2`` of the weights it starts from
    to ``loss_acc`` — exactly what :meth:`Backend.weight_grads` with ``decay`` and
    :meth:`Backend.add_weights_l2_loss` do on a backend that does not fold.
    """

    #: ``(offset, size)`` of each layer's weights in the flat parameter buffer.
    spans: tuple[tuple[int, int], ...]
    #: The factor of the weights added to their gradient (``alpha / weight_sum``).
    decay: float
    #: The factor of the weights' sum of squares added to the loss (``0.5 * decay``).
    loss_scale: float
    #: 0-d array of the parameters' dtype that the L2 loss term is added to.
    loss_acc: Any


class Backend:
    """Base class: generic implementations of every operation in terms of ``self.xp``."""

    #: Short name used by :func:`gpumlp.get_backend` (``"numpy"``, ``"cupy"``).
    name = "base"
    #: Whether this backend's arrays live in host memory: a host backend uses a host array
    #: where it is, while a device backend keeps a device array on its device and returns
    #: results there ("everything follows X").
    arrays_on_host = True

    def __init__(self, xp: Any):
        self.xp = xp

    def __repr__(self) -> str:
        return f"<gpumlp backend {self.name!r}>"

    # ----------------------------------------------------------------- arrays and devices
    def asarray(self, x: Any, dtype: Any = None) -> Any:
        """Return ``x`` as a contiguous array of this backend (copying only when needed)."""
        return self.xp.ascontiguousarray(self.xp.asarray(x, dtype=dtype))

    def to_numpy(self, x: Any) -> Any:
        """Return ``x`` as a NumPy array on the host."""
        import numpy

        return numpy.asarray(x)

    def owns(self, x: Any) -> bool:
        """Whether ``x`` is an array of this backend (used for "results follow X")."""
        return isinstance(x, self.xp.ndarray)

    def empty(self, shape: Any, dtype: Any) -> Any:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape: Any, dtype: Any) -> Any:
        return self.xp.zeros(shape, dtype=dtype)

    def synchronize(self) -> None:
        """Wait for queued device work (nothing to wait for on the CPU)."""

    def warm_up(self) -> None:
        """Compile (or load from a cache) now what this backend would otherwise compile at
        its first use, so that no timed region pays for it.  Nothing to do here: a backend
        whose kernels compile lazily overrides it."""

    def describe(self) -> dict:
        """Versions and devices, for ``gpumlp info`` and benchmark results."""
        return {"name": self.name, "array_module": self.xp.__name__,
                "version": getattr(self.xp, "__version__", "unknown")}

    # ------------------------------------------------------------------------------ runs
    def open_run(self, dtype: Any = None) -> "Run":
        """A run of operations on parameters of ``dtype``: pass its :attr:`Run.backend` to
        them and close it when done (``with``; see the module docstring).  Operations called
        on the backend itself run as if each opened a run of its own."""
        return Run(self)

    # ------------------------------------------------------------------ capture protocol
    # The trainer and the network reach captured graphs only through these methods: a
    # backend that cannot capture keeps the defaults below, and everything runs eagerly.
    def graphs_unavailable_reason(self) -> str | None:
        """``None`` where this backend captures training steps and forward passes as graphs
        and replays them, else a sentence saying why not."""
        return f"the {self.name!r} backend has no CUDA graphs (use backend='cupy')"

    def step_graphs_key(self, trainer: Any, X: Any, T: Any) -> tuple:
        """Everything the captured steps of ``trainer`` over ``X``, ``T`` fix (shapes,
        hyper-parameters, structure, device): runners of equal keys are interchangeable."""
        raise NotImplementedError(self.graphs_unavailable_reason())

    def step_graphs_known_slower(self, trainer: Any, rows: int) -> bool:
        """Whether replaying ``trainer``'s step on ``rows`` rows was measured slower than
        launching it eagerly (then no runner need be built)."""
        return False

    def capture_steps(self, trainer: Any, X: Any, T: Any) -> "StepGraphs":
        """A runner of ``trainer``'s steps over device arrays ``X``, ``T``: an idle runner
        of the same key (a refit; ``X``, ``T`` copied into it) or a new capture."""
        raise NotImplementedError(self.graphs_unavailable_reason())

    def release_step_graphs(self, runner: "StepGraphs", keep: bool) -> None:
        """The trainer is done with ``runner``: ``keep`` it idle for a later fit of its key,
        or free it."""

    def forward_replays(self) -> Any | None:
        """A new cache of captured forward passes for one network, with
        ``output(network, x, chunk, output_activation) -> array | None`` (``None``: run the
        forward eagerly; ``output_activation(z, out, backend)``); ``None`` where this backend
        captures nothing."""
        return None

    # ----------------------------------------------------------------------- data movement
    def gather_rows(self, src: Any, index: Any, out: Any) -> Any:
        """``out[i] = src[index[i]]``: gather a minibatch into a preallocated buffer."""
        self.xp.take(src, index, axis=0, out=out)
        return out

    def permutation(self, n: int, rng: Any) -> Any:
        """A random permutation of ``range(n)`` on this backend's device, from a NumPy rng."""
        return self.xp.asarray(rng.permutation(n))

    # ----------------------------------------------------------------------------- forward
    def affine_act(self, x: Any, w: Any, b: Any, act: str, out: Any,
                   dropout: Dropout | None = None, precision: str = "float32") -> Any:
        """``out = phi(x @ w + b)``, then inverted dropout (``* mask / keep``) when given.

        ``precision="tf32"`` rounds the product's inputs to TF32 (:mod:`gpumlp.precision`)."""
        xp = self.xp
        z = gemm_operand(xp, x, precision) @ gemm_operand(xp, w, precision) + b
        activations.apply(xp, act, z, out)
        if dropout is not None:
            out *= keep_mask(xp, out.shape, dropout) / out.dtype.type(dropout.keep)
        return out

    def softmax(self, z: Any, out: Any) -> Any:
        """Row-wise softmax (numerically stable)."""
        xp = self.xp
        e = xp.exp(z - z.max(axis=1, keepdims=True))
        out[...] = e / e.sum(axis=1, keepdims=True)
        return out

    def sigmoid(self, z: Any, out: Any) -> Any:
        return activations.apply(self.xp, "sigmoid", z, out)

    # ---------------------------------------------------------------------------- backward
    def act_grad(self, delta: Any, a: Any, act: str, out: Any,
                 dropout: Dropout | None = None) -> Any:
        """``out = delta ⊙ phi'(A)`` from the stored output ``a`` (``out`` may be ``delta``).

        With dropout, ``a`` holds the dropped output ``A ⊙ mask / keep``; the mask is
        regenerated, ``A = a * keep`` where kept, and dropped elements get zero.
        """
        xp = self.xp
        if dropout is None:
            out[...] = delta * activations.derivative_from_output(xp, act, a)
            return out
        keep = a.dtype.type(dropout.keep)
        mask = keep_mask(xp, a.shape, dropout)
        slope = activations.derivative_from_output(xp, act, a * keep)
        out[...] = xp.where(mask, delta * slope / keep, a.dtype.type(0))
        return out

    def backprop_hidden(self, h_next: Any, w_next: Any, a: Any, act: str, out: Any,
                        dropout: Dropout | None = None, precision: str = "float32") -> Any:
        """``out = (h_next @ w_next^T) ⊙ phi'(A)``: the sensitivity of a hidden layer."""
        xp = self.xp
        product = gemm_operand(xp, h_next, precision) @ gemm_operand(xp, w_next, precision).T
        return self.act_grad(product, a, act, out, dropout)

    def weight_grads(self, a_prev: Any, h: Any, dw: Any, db: Any,
                     w: Any = None, decay: float = 0.0, precision: str = "float32") -> None:
        """``dw = a_prev^T h + decay * w`` and ``db = 1^T h`` (column sums; never rounded to
        TF32: only the matrix product's inputs are)."""
        xp = self.xp
        dw[...] = gemm_operand(xp, a_prev, precision).T @ gemm_operand(xp, h, precision)
        if decay:
            dw += w.dtype.type(decay) * w
        db[...] = h.sum(axis=0)

    # ------------------------------------------------------------------------------ losses
    def softmax_xent(self, z: Any, t: Any, h_out: Any) -> Any:
        """Softmax + cross-entropy from logits ``z``; ``h_out = (softmax(z) - t) / n``."""
        xp = self.xp
        n = z.shape[0]
        zmax = z.max(axis=1, keepdims=True)
        e = xp.exp(z - zmax)
        s = e.sum(axis=1, keepdims=True)
        log_norm = xp.log(s) + zmax
        loss = (xp.sum(t * (log_norm - z)) / n).astype(z.dtype)
        h_out[...] = (e / s - t) / z.dtype.type(n)
        return loss

    def affine_softmax_xent(self, x: Any, w: Any, b: Any, t: Any, z_out: Any, h_out: Any,
                            precision: str = "float32") -> Any:
        """The output layer with softmax + cross-entropy: ``z_out = x @ w + b``, then
        :meth:`softmax_xent` of ``z_out``; returns its loss and writes ``h_out``.

        A backend may fuse both into one kernel that never writes the logits: ``z_out`` is
        then scratch, its contents unspecified afterwards.
        """
        options = {} if precision == "float32" else {"precision": precision}
        self.affine_act(x, w, b, "identity", z_out, None, **options)
        return self.softmax_xent(z_out, t, h_out)

    def sigmoid_bce(self, z: Any, t: Any, h_out: Any) -> Any:
        """Sigmoid + binary cross-entropy from logits; ``h_out = (sigmoid(z) - t) / n``."""
        xp = self.xp
        n = z.shape[0]
        # log(1 + e^z) - t z, written so that exp never overflows.
        per_element = xp.maximum(z, 0) - t * z + xp.log1p(xp.exp(-xp.abs(z)))
        loss = (xp.sum(per_element) / n).astype(z.dtype)
        p = activations.apply(xp, "sigmoid", z, xp.empty_like(z))
        h_out[...] = (p - t) / z.dtype.type(n)
        return loss

    def squared_error(self, a: Any, t: Any, h_out: Any) -> Any:
        """``J = ||a - t||^2 / (2 n)``; ``h_out = dJ/da = (a - t) / n``."""
        xp = self.xp
        n = a.shape[0]
        diff = a - t
        loss = (xp.sum(diff * diff) / (2 * n)).astype(a.dtype)
        h_out[...] = diff / a.dtype.type(n)
        return loss

    def sample_weighted_loss(self, loss: str, z: Any, t: Any, h_out: Any, weights: Any,
                             weight_sum: float) -> Any:
        """Loss operation ``loss`` with per-row weights (``sample_weight``).

        Returns ``sum_i w_i l_i / weight_sum`` (0-d) and writes
        ``h_out_i = w_i * dl_i/dz_i / weight_sum``: the unweighted operation's ``H`` (already
        divided by ``n``) scaled per row by ``w_i * n / weight_sum``.  ``weights`` is a
        vector of the batch's rows on this backend; ``weight_sum`` a host float.
        """
        xp = self.xp
        dt = z.dtype.type
        n = z.shape[0]
        getattr(self, loss)(z, t, h_out)
        h_out *= (weights * dt(n / weight_sum))[:, None]
        if loss == "softmax_xent":
            zmax = z.max(axis=1, keepdims=True)
            log_norm = xp.log(xp.exp(z - zmax).sum(axis=1, keepdims=True)) + zmax
            per_row = (t * (log_norm - z)).sum(axis=1)
        elif loss == "sigmoid_bce":
            per_row = (xp.maximum(z, 0) - t * z + xp.log1p(xp.exp(-xp.abs(z)))).sum(axis=1)
        else:  # squared_error
            per_row = 0.5 * ((z - t) ** 2).sum(axis=1)
        return (xp.vdot(weights, per_row) / dt(weight_sum)).astype(z.dtype)

    def add_weights_l2_loss(self, params: Any, spans: Any, scale: float, loss_acc: Any) -> Any:
        """``loss_acc += scale * sum_l ||W_l||^2`` in place: a step's L2 term (biases excluded)
        added to the summed loss, over every layer at once.

        ``params`` is the flat parameter buffer, ``spans`` the ``(offset, size)`` of each
        layer's weights in it (host integers, :meth:`gpumlp.network.Network.weight_spans`),
        ``loss_acc`` a 0-d array of ``params``' dtype (a captured step's loss accumulator) and
        ``scale`` a host float (``0.5 * alpha / rows``).  Returns ``loss_acc``.
        """
        spans = check_spans("add_weights_l2_loss", spans, params.size)
        total = None
        for offset, size in spans:
            flat = params[offset:offset + size]
            square = self.xp.vdot(flat, flat)
            total = square if total is None else total + square
        if total is not None:
            loss_acc += (params.dtype.type(scale) * total).astype(params.dtype)
        return loss_acc

    # --------------------------------------------------------------------------- optimizer
    def folds_l2_into_update(self, params: Any) -> bool:
        """Whether the L2 term of a step over ``params`` should go to :meth:`sgd_step` /
        :meth:`adam_step` as an :class:`L2Term` instead of to :meth:`weight_grads` and
        :meth:`add_weights_l2_loss`: a backend whose update reads every weight anyway may
        add ``decay * W`` and sum ``W * W`` in the same pass.  The step passes ``l2`` to the
        update only where this says ``True`` (a backend that keeps the default gets ``l2=None``).
        """
        return False

    def fold_l2_term(self, params: Any, grads: Any, l2: L2Term) -> None:
        """The reference of what an update given ``l2`` does before updating: the L2 loss
        term into ``l2.loss_acc``, then ``decay * W`` into the weights' gradients."""
        self.add_weights_l2_loss(params, l2.spans, l2.loss_scale, l2.loss_acc)
        decay = params.dtype.type(l2.decay)
        for offset, size in l2.spans:
            grads[offset:offset + size] += decay * params[offset:offset + size]

    def sgd_step(self, params: Any, grads: Any, velocity: Any, lr: float,
                 momentum: float, nesterov: bool, l2: L2Term | None = None) -> None:
        """SGD with (Nesterov) momentum on the flat parameter buffer, as scikit-learn does.

        ``velocity = momentum * velocity - lr * grads``; the update is ``velocity`` or, with
        Nesterov, ``momentum * velocity - lr * grads``.  With ``l2`` the L2 term is folded
        in first (:class:`L2Term`).
        """
        if l2 is not None:
            self.fold_l2_term(params, grads, l2)
        dt = params.dtype.type
        velocity *= dt(momentum)
        velocity -= dt(lr) * grads
        if nesterov:
            params += dt(momentum) * velocity - dt(lr) * grads
        else:
            params += velocity

    def adam_step(self, params: Any, grads: Any, m: Any, v: Any, lr: float,
                  beta1: float, beta2: float, eps: float, step: int,
                  l2: L2Term | None = None) -> None:
        """Adam on the flat buffer; ``step`` counts from 1 (bias correction as scikit-learn).
        With ``l2`` the L2 term is folded in first (:class:`L2Term`)."""
        if l2 is not None:
            self.fold_l2_term(params, grads, l2)
        xp = self.xp
        dt = params.dtype.type
        m *= dt(beta1)
        m += dt(1 - beta1) * grads
        v *= dt(beta2)
        v += dt(1 - beta2) * grads * grads
        lr_t = lr * (1 - beta2**step) ** 0.5 / (1 - beta1**step)
        params -= dt(lr_t) * m / (xp.sqrt(v) + dt(eps))


class Run:
    """What :meth:`Backend.open_run` returns: the state one run of operations owns.

    Here it holds nothing and :attr:`backend` is the backend itself; a backend with device
    state returns a subclass that keeps it and gives it back in :meth:`close`.

    Examples
    --------
    >>> import numpy as np
    >>> from gpumlp.backends import get_backend
    >>> with get_backend("numpy").open_run(np.float32) as run:
    ...     run.backend.name
    'numpy'
    """

    def __init__(self, backend: Backend):
        self._backend = backend

    @property
    def backend(self) -> Backend:
        """The backend whose operations use this run's state."""
        return self._backend

    def close(self) -> None:
        """Give back what the run holds (idempotent)."""

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_spans(op: str, spans: Any, size: int) -> tuple[tuple[int, int], ...]:
    """``spans`` as a tuple of ``(offset, size)`` integer pairs lying inside a buffer of
    ``size`` elements, else a ``ValueError``/``TypeError`` naming ``op`` and the span."""
    try:
        pairs = tuple((operator.index(offset), operator.index(length))
                      for offset, length in spans)
    except (TypeError, ValueError):
        raise TypeError(f"{op}: spans must be a sequence of (offset, size) integer pairs; "
                        f"got {spans!r}") from None
    for offset, length in pairs:
        if offset < 0 or length < 0 or offset + length > size:
            raise ValueError(f"{op}: span (offset={offset}, size={length}) does not lie "
                             f"inside the {size} parameters; allowed: 0 <= offset and "
                             f"offset + size <= {size}")
    return pairs


class StepGraphs(Protocol):
    """What :meth:`Backend.capture_steps` returns: one trainer's step
    (:class:`gpumlp.step.TrainingStep`), captured once and replayed (the trainer's model and
    optimizer state are copied in and out each epoch)."""

    #: :meth:`Backend.step_graphs_key` of the step captured.
    key: tuple
    #: Full batches per epoch: the most steps :meth:`run_steps` replays.
    full_steps: int

    def load(self, X: Any, T: Any) -> None:
        """Train on new ``X``, ``T`` of the shapes captured."""

    def faster_than_eager(self) -> bool:
        """Whether a replayed step beats the same step launched eagerly (measured once per
        step shape; the trainer's model is left as it was)."""

    def run_epoch(self, order: Any) -> tuple[float, int]:
        """Train one epoch over the rows in ``order`` (host integers); returns the mean loss
        and the number of steps made (the trainer, not the runner, counts them)."""

    def run_steps(self, steps: int) -> int:
        """Replay ``steps`` full-batch steps from the first row (no sync; benchmarks);
        returns the number of steps made."""

    def synchronize(self) -> None:
        """Wait for the replays queued so far."""
