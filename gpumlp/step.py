"""The training step, written once.

One minibatch step is: gather the batch, the forward pass (with dropout), the loss with its
L2 term, the backward pass, the optimizer update.  :class:`TrainingStep` is that sequence of
backend operations, and every way gpumlp trains runs it: the trainer's eager loop, the graph
runner that captures it once and replays it, the eager steps ``cuda_graph="auto"`` times
against the replays, and the benchmark subject.  What differs between them is given to the
call, not written again:

* ``gather(buffers)``: how the batch reaches the step's buffers (rows picked by an index,
  :meth:`TrainingStep.gather_rows`; a sparse matrix densified; or one launch reading the
  batch start from device memory in a captured step);
* ``step``: the dropout counter's step (``-1`` in a captured step: an offset from the base
  the graph moves on);
* ``loss_acc``: where the loss and its L2 term are summed (``None``: the step returns them);
* ``placement``: where the weight gradients and the L2 term run (:data:`IN_ORDER`, or a
  second stream forked and joined inside a captured step).

Every operation of the step runs on the step's ``backend``: the network's, or the backend of
the run that executes it (:meth:`gpumlp.backends.base.Backend.open_run`), bound with
:meth:`TrainingStep.bound_to` — the run of a fit's eager epochs, or a graph runner's.

The L2 term of a batch is ``0.5 * alpha * sum_l ||W_l||^2 / weight_sum``, from the weights
the batch starts with, as scikit-learn's ``loss_curve_`` counts it.  A backend whose
optimizer update can take it (:meth:`Backend.folds_l2_into_update
<gpumlp.backends.base.Backend.folds_l2_into_update>`, the NumPy backend's compiled path) gets
the whole term there: the update adds ``decay * W`` to the weight gradients and sums
``W * W`` for the loss in its one pass over the weights, so the gradients stay without it (the
update reads them plus the term); elsewhere the weight gradients include it and the loss term is
its own launch.

Examples
--------
>>> import numpy as np
>>> from gpumlp.network import Network
>>> from gpumlp.optim import SGD
>>> from gpumlp.step import StepSettings, TrainingStep
>>> net = Network([2, 4, 2], seed=0, backend="numpy")
>>> step = TrainingStep(net, SGD(net.backend, net.params, 0.1), StepSettings(alpha=1e-3))
>>> buffers = step.new_buffers(rows=3, x_columns=2, t_columns=2)
>>> X, T = np.ones((3, 2), np.float32), np.eye(2, dtype=np.float32)[[0, 1, 0]]
>>> def gather(b):
...     b.x[...], b.t[...] = X, T
>>> loss = step(gather, buffers, step=0)
>>> bool(loss > 0)
True
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

from .backends.base import Backend, L2Term
from .network import Network, Workspace


@dataclass(frozen=True)
class StepSettings:
    """What a step's launches take besides the data, fixed for a trainer's life."""

    #: L2 penalty; each weight gradient gets ``alpha / weight_sum * W``.
    alpha: float = 0.0
    #: Inverted-dropout rate of the hidden layers, in ``[0, 1)``.
    dropout: float = 0.0
    #: The seed of every dropout mask (a kernel argument: part of a captured step).
    dropout_seed: int = 0


@dataclass
class StepBuffers:
    """What one step at a given batch size writes: the gathered batch and the work buffers."""

    x: Any
    t: Any
    workspace: Workspace
    #: Gathered sample weights, ``(rows, 1)``; made on the first weighted step.
    w: Any = None


class InOrder:
    """Every launch of the step on the current stream, in program order (eager steps)."""

    def weight_grads_beside(self) -> ContextManager:
        return contextlib.nullcontext()

    def beside(self, launch: Callable[[], Any]) -> None:
        launch()


#: The placement of an eager step.
IN_ORDER = InOrder()


class TrainingStep:
    """One minibatch step of ``network`` with ``optimizer`` under ``settings``, its
    operations run on ``backend`` (a run's; default: the network's)."""

    def __init__(self, network: Network, optimizer: Any, settings: StepSettings,
                 backend: Backend | None = None):
        self.network = network
        self.optimizer = optimizer
        self.settings = settings
        self.backend = backend or network.backend
        self.weight_spans = network.weight_spans()

    @functools.cached_property
    def folds_l2(self) -> bool:
        """Whether the update takes the L2 term: fixed for the step's life, so asked once,
        at the first step (asking may load the backend's compiled passes)."""
        return bool(self.settings.alpha) and self.backend.folds_l2_into_update(
            self.network.params)

    def bound_to(self, network: Network, optimizer: Any,
                 backend: Backend | None = None) -> "TrainingStep":
        """The same step on another model (a graph runner's twins) and run."""
        return TrainingStep(network, optimizer, self.settings, backend)

    def gather_rows(self, X: Any, T: Any, index: Any) -> Callable[[StepBuffers], None]:
        """The ``gather`` of the batch ``X[index]``, ``T[index]`` (``index``: row numbers
        on the step's backend), launched on the step's backend: an eager step's gather."""
        backend = self.backend

        def gather(buffers: StepBuffers) -> None:
            backend.gather_rows(X, index, buffers.x)
            backend.gather_rows(T, index, buffers.t)

        return gather

    def new_buffers(self, rows: int, x_columns: int, t_columns: int) -> StepBuffers:
        """New batch and work buffers for a ``rows``-row step; the caller owns them."""
        backend, dtype = self.network.backend, self.network.dtype
        return StepBuffers(backend.empty((rows, x_columns), dtype),
                           backend.empty((rows, t_columns), dtype),
                           self.network.new_workspace(rows))

    def __call__(self, gather: Callable[[StepBuffers], Any], buffers: StepBuffers, step: int,
                 loss_acc: Any = None, weight_sum: float | None = None,
                 row_weights: Any = None, placement: Any = IN_ORDER) -> Any:
        """Run the step on ``buffers`` (``gather`` fills them first).

        ``weight_sum`` is the batch's rows, or with ``row_weights`` (a backend vector) their
        host sum.  Returns the batch's mean loss plus its L2 term as a 0-d backend array (no
        host synchronisation); with ``loss_acc`` (a captured step's accumulator, which the
        backend's loss kernels add into) the L2 term is added there and ``loss_acc`` returned.
        """
        net, settings = self.network, self.settings
        backend = self.backend
        gather(buffers)
        rows = buffers.x.shape[0]
        weight_sum = float(rows) if weight_sum is None else weight_sum
        decay = settings.alpha / weight_sum
        l2 = loss_acc
        if settings.alpha and l2 is None:
            l2 = backend.zeros((), net.dtype)
        # Where the backend's update reads every weight anyway, the L2 term rides on it.
        folded = L2Term(self.weight_spans, decay, 0.5 * decay, l2) if self.folds_l2 else None
        with placement.weight_grads_beside():
            if settings.alpha and folded is None:  # from the weights the batch starts with
                placement.beside(lambda: backend.add_weights_l2_loss(
                    net.params, self.weight_spans, 0.5 * decay, l2))
            loss = net.loss_and_gradients(
                buffers.x, buffers.t, buffers.workspace,
                decay=decay if folded is None else 0.0,
                dropout=settings.dropout, seed=settings.dropout_seed, step=step,
                row_weights=row_weights, weight_sum=weight_sum, backend=backend)
        self.optimizer.step(net.params, net.grads, backend=backend, l2=folded)
        if loss_acc is not None or not settings.alpha:
            return loss
        return loss + l2
