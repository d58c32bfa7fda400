"""Whole training steps captured as CUDA graphs and replayed (CuPy backend).

At MNIST-sized batches a step is launch-bound: its arithmetic takes microseconds while each
eager launch costs several.  Every operation of a gpumlp step is one of our own kernels or a
direct cuBLAS(Lt) call bound to the runner's stream before capture (CuPy's wrappers refuse
to run during capture; each GEMM takes the route measured faster in the warm-up,
:mod:`gpumlp.backends.cuda.routes`), so the whole step — gather the batch, forward, loss,
backward, optimizer update — is captured once per batch size and replayed.  Each layer's
weight-gradient GEMM is captured on a second stream forked from the runner's, so in the graph
it is a branch parallel to the backward chain (joined before the update), and only the first
layer's weight gradient lies on the step's critical path.  The batch's L2 term (one kernel
over every layer's weights) heads that branch, off the critical path too.

What changes from step to step lives in device memory: the batch's first row, the dropout
counter and the optimizer's step count (moved on inside the graph by the ``gather_batch``
kernel that also forms the batch), the learning rate (written once per epoch) and the loss
(summed on the device and read once per epoch).  A step therefore makes no allocation, no
host synchronisation and one graph launch per ``steps_per_graph`` steps.

The permutation of each epoch comes from the trainer's host generator, copied to the device
once per epoch (480 kB for 60,000 rows): the graph and eager paths then see the same batches,
so their weights agree to float32 rounding and either can be checked against the other.

A runner's graphs touch only memory the runner owns: its copy of the data, its step buffers,
and a twin of the network's parameters and gradients and of the optimizer's state.  Each epoch
copies the trainer's parameters and optimizer state into the twin before the replays and back
after them (for Adam three device-to-device copies of the parameter buffer's size each way),
so a runner is not tied to one network object.  New data of the same shape (``partial_fit`` on the
next chunk) is copied into its buffers with :meth:`GraphStepRunner.load`, and when a fit ends
the runner waits in :data:`gpumlp.graph_pool.IDLE` for the next fit of the same step (a refit,
the next fold of a cross-validation, a clone in a grid search), which then trains without a
new warm-up or capture.  With ``cuda_graph="auto"`` the trainer replays only where
:meth:`GraphStepRunner.faster_than_eager` measured the graph to be faster for this step shape
(:mod:`gpumlp.backends.cuda.graph_auto`).

Two rules keep the replays correct on a real device:

* **One stream, joined to the caller's.**  Everything a runner does to device memory (the
  warm-up, the captures, the copies of the data and of the model in and out, the per-epoch
  writes of the step state and the replays) runs on the runner's own stream, and every entry to and exit from it
  is ordered with the caller's current stream by an event each way.  So the caller's earlier
  work (slicing or copying ``X``, the trainer's ``_last_good`` copy of the parameters) is
  finished before a replay reads or overwrites it, and the caller's later work sees the
  replays' results, whatever streams the two are.
* **State of its own.**  The device scalars baked into the captured graphs (dropout counter
  base, optimizer step, learning rate, loss accumulators), the split-K scratch and span
  tables they address and the cuBLAS(Lt) handles bound to the runner's streams belong to the
  runner's :class:`~gpumlp.backends.cuda.run.DeviceRun`, never to the process-wide backend,
  so two models trained in one process cannot overwrite each other's step count or learning
  rate; every operation of the runner runs on the backend bound to that run
  (:attr:`GraphStepRunner.ops`).  Every buffer a graph reads or writes is held by the runner
  for as long as the graphs live, so no buffer a graph still uses can be freed and handed to
  another array (a trainer drops its own step buffers whenever the batch shapes change), and
  :meth:`GraphStepRunner.close` gives all of it back.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np

from . import graph_auto
from .run import DeviceRun


class SideBranch:
    """Where a captured step's launches go: the weight gradients and the L2 term on ``side``,
    forked from the runner's stream and joined before the update
    (:meth:`DeviceRun.weight_grads_beside`); the rest in order on the runner's stream."""

    def __init__(self, device_run: DeviceRun, main: Any, side: Any):
        self.device_run, self.main, self.side = device_run, main, side

    def weight_grads_beside(self) -> contextlib.AbstractContextManager:
        return self.device_run.weight_grads_beside(self.main, self.side)

    def beside(self, launch: Any) -> None:
        self.device_run.beside(launch)


class GraphStepRunner:
    """Replays captured training steps of ``trainer``'s model over device-resident ``X``, ``T``.

    Built once per step (:meth:`key`: data shapes, batch size, hyper-parameters, network
    structure, optimizer constants); :meth:`run_epoch` trains the bound trainer's model one
    epoch and returns its mean loss and the steps made; :meth:`run_steps` replays full-batch
    steps (benchmarks).  The step captured is the trainer's own
    (:class:`gpumlp.step.TrainingStep`), run on twins of its network and optimizer.
    A runner serves one trainer at a time (:attr:`trainer`; :meth:`bind` hands it to another
    trainer of the same key).
    """

    def __init__(self, trainer: Any, X: Any, T: Any, steps_per_graph: int = 8):
        self.key = self.key_for(trainer, X, T, steps_per_graph)
        self.trainer = trainer
        self.backend = trainer.network.backend
        cupy = self.backend.xp
        self.cupy = cupy
        # The twins the graphs train: the trainer's values are copied in and out each epoch.
        self.net = trainer.network.copy()
        self.optimizer = trainer.optimizer.copy()
        dtype = self.net.dtype
        # The runner's device state: its stream, the weight gradients' branch of each
        # captured step (DeviceRun.weight_grads_beside), its step state, split-K scratch and
        # span tables, and what the direct cuBLAS route makes for those streams; given back
        # by close().  Every operation of the runner runs on `ops`, the backend bound to it.
        self.device_run = DeviceRun(self.backend, dtype, streams=2)
        self.ops = self.device_run.backend
        self.stream, self.side = self.device_run.streams
        self.state = self.device_run.state
        self.placement = SideBranch(self.device_run, self.stream, self.side)
        # The trainer's step on the twins and the run; its settings are kernel arguments,
        # fixed for the runner's life (part of the key).
        self.step = trainer.step.bound_to(self.net, self.optimizer, self.ops)
        self.settings = self.step.settings
        self.data_key = data_key(X, T)
        # The graphs read these buffers; load() copies new data of the same shape into them.
        self.X = cupy.empty(X.shape, X.dtype)
        self.T = cupy.empty(T.shape, T.dtype)
        self.n = len(X)
        self.batch = min(trainer.batch_size, self.n)
        self.full_steps, self.rest = divmod(self.n, self.batch)
        self._buffers: dict[int, Any] = {}
        # Made on the caller's stream; the first entry to the runner's stream waits for it.
        self.perm = cupy.arange(self.n, dtype=cupy.int64)
        self.start = cupy.zeros((), dtype=cupy.int64)
        self.blocks_done = cupy.zeros((), dtype=cupy.int32)  # gather_batch's block count
        self.loss_full = cupy.zeros((), dtype=dtype)
        self.loss_rest = cupy.zeros((), dtype=dtype)
        self.steps_per_graph = max(1, min(steps_per_graph, self.full_steps))
        with self.on_stream():
            self._copy_in(X, T)
            self._warm_up()
            self.graph_many = self._capture(self.batch, self.steps_per_graph, self.loss_full)
            self.graph_one = (self._capture(self.batch, 1, self.loss_full)
                              if self.steps_per_graph > 1 else self.graph_many)
            self.graph_rest = (self._capture(self.rest, 1, self.loss_rest) if self.rest
                               else None)

    @staticmethod
    def key_for(trainer: Any, X: Any, T: Any, steps_per_graph: int = 8) -> tuple:
        """Everything the captured graphs fix: a runner of this key can train ``trainer`` on
        ``X``, ``T`` (the data themselves, the weights and the optimizer state are copied in).

        The dropout seed is a kernel argument, so it is part of the key where dropout is on.
        """
        net, optimizer = trainer.network, trainer.optimizer
        return (data_key(X, T), min(trainer.batch_size, len(X)), int(steps_per_graph),
                float(trainer.alpha), float(trainer.dropout),
                trainer.dropout_seed if trainer.dropout else None,
                net.structure(), type(optimizer).__name__, optimizer.constants(),
                id(net.backend), net.backend.xp.cuda.runtime.getDevice())

    def close(self) -> None:
        """Give back the device state made for this runner (its graphs, buffers, and the
        cuBLAS(Lt) handles, workspaces and masks of its streams); the runner is unusable
        after.  Called when it leaves the idle pool or its trainer drops it."""
        self.device_run.close()
        self.graph_many = self.graph_one = self.graph_rest = None
        self._buffers.clear()

    def bind(self, trainer: Any) -> None:
        """Serve ``trainer`` from now on (its step must have this runner's key)."""
        self.trainer = trainer

    def on_stream(self) -> contextlib.AbstractContextManager:
        """Make the runner's stream current, joined to the caller's (:func:`joined`)."""
        return joined(self.cupy, self.stream)

    # -------------------------------------------------------------------------------- data
    def load(self, X: Any, T: Any) -> None:
        """Train on new ``X``, ``T`` of the shapes captured: copy them into the graphs'
        buffers (ordered after the caller's work on them, like every runner operation)."""
        if data_key(X, T) != self.data_key:
            raise ValueError(f"load: X {X.shape} {X.dtype} and T {T.shape} {T.dtype} differ "
                             f"from the captured {self.data_key}; build a new runner")
        with self.on_stream():
            self._copy_in(X, T)

    def _copy_in(self, X: Any, T: Any) -> None:
        if X is not self.X:
            self.X[...] = X
        if T is not self.T:
            self.T[...] = T

    # ----------------------------------------------------------- the bound trainer's model
    def _model_pairs(self) -> list[tuple[Any, Any]]:
        """(trainer's buffer, twin buffer) for the parameters and each optimizer state."""
        trainer = self.trainer
        pairs = [(trainer.network.params, self.net.params)]
        theirs, ours = trainer.optimizer.state_buffers(), self.optimizer.state_buffers()
        return pairs + [(theirs[name], ours[name]) for name in sorted(ours)]

    def _take_model(self) -> None:
        """Copy the bound trainer's parameters and optimizer state into the twins."""
        for theirs, ours in self._model_pairs():
            ours[...] = theirs

    def _give_model(self) -> None:
        """Copy the twins' trained parameters and optimizer state back to the trainer."""
        for theirs, ours in self._model_pairs():
            theirs[...] = ours

    # ----------------------------------------------------------------------------- capture
    def _step_buffers(self, rows: int) -> Any:
        """The batch and work buffers of a ``rows``-row step: the runner's own, kept as long
        as its graphs (which hold their addresses)."""
        if rows not in self._buffers:
            self._buffers[rows] = self.step.new_buffers(rows, self.X.shape[1], self.T.shape[1])
        return self._buffers[rows]

    def _gather_at_start(self, buffers: Any) -> None:
        """One launch gathers both halves of the batch and moves the step state on (batch
        start, dropout counter base, optimizer step count): the kernels after it read the
        advanced state, so the dropout counters are offsets from the next step's base
        (step=-1) and the optimizer reads the count of the step it makes."""
        self.ops.gather_batch_at(self.X, self.T, self.perm, self.start, buffers.x,
                                     buffers.t, self.net.n_layers, self.blocks_done)

    def _step_ops(self, rows: int) -> None:
        """The launches of one step, reading the batch start from device memory.  The weight
        gradients run beside the backward chain, joined before the update; so does the
        batch's L2 term, forked just after the gather; the loss and the L2 term are summed
        into the recording's accumulator."""
        self.step(self._gather_at_start, self._step_buffers(rows), step=-1,
                  loss_acc=self.state.loss, placement=self.placement)

    def _warm_up(self) -> None:
        """Run each step shape once eagerly (loads every kernel, makes every buffer, chooses
        each GEMM's route) on the twins, whose values are scratch until the next epoch."""
        self._set_device_state(0)
        with self.device_run.recording(self.loss_full):
            for rows in sorted({self.batch, self.rest} - {0}):
                self._step_ops(rows)
        self.loss_full.fill(0)

    def _capture(self, rows: int, steps: int, loss_acc: Any) -> Any:
        with self.device_run.recording(loss_acc):
            self.stream.begin_capture()
            try:
                for _ in range(steps):
                    self._step_ops(rows)
            finally:
                graph = self.stream.end_capture()
        graph.upload(self.stream)
        return graph

    # ------------------------------------------------------------------------------ replay
    def _set_device_state(self, start: int) -> None:
        """Write the step state the graphs read (on the runner's stream)."""
        trainer, optimizer = self.trainer, self.trainer.optimizer
        self.start.fill(start)
        self.state.write(counter_base=trainer.step_count * self.net.n_layers,
                         step=optimizer.steps_taken,
                         learning_rate=optimizer.learning_rate)

    def run_epoch(self, order: Any) -> tuple[float, int]:
        """Train the bound trainer's model one epoch over the rows in ``order``; returns the
        mean loss (one sync) and the number of steps made (the trainer counts them)."""
        with self.on_stream():
            self._take_model()
            self.perm.set(np.ascontiguousarray(order, dtype=np.int64))
            self._set_device_state(0)
            self.loss_full.fill(0)
            self.loss_rest.fill(0)
            many, one = divmod(self.full_steps, self.steps_per_graph)
            for _ in range(many):
                self.graph_many.launch(self.stream)
            for _ in range(one):
                self.graph_one.launch(self.stream)
            if self.graph_rest is not None:
                self.graph_rest.launch(self.stream)
            self._give_model()
            total = self.loss_full * self.batch + self.loss_rest * self.rest
            loss = float(total) / self.n  # the epoch's one synchronisation
        return loss, self.full_steps + (1 if self.rest else 0)

    def run_steps(self, steps: int) -> int:
        """Replay ``steps`` full-batch steps from the first row on the bound trainer's model
        (no sync; for benchmarks); returns ``steps`` (the trainer's counts are not moved).

        The caller's current stream is ordered after the replays, so events recorded on it
        time them."""
        if steps > self.full_steps:
            raise ValueError(f"steps={steps} exceeds the {self.full_steps} full batches")
        with self.on_stream():
            self._take_model()
            self._replay_steps(steps)
            self._give_model()
        return steps

    def synchronize(self) -> None:
        self.stream.synchronize()

    # ----------------------------------------------------------------------- graph or eager
    @staticmethod
    def known_slower_than_eager(trainer: Any, rows: int) -> bool:
        """Whether a replayed step was measured slower than an eager one for the step shape
        ``trainer`` would capture on ``rows`` rows (then no runner need be built)."""
        net = trainer.network
        key = graph_auto.step_shape(net, min(trainer.batch_size, rows), trainer.dropout,
                                    trainer.alpha, net.backend.xp.cuda.runtime.getDevice())
        return graph_auto.VERDICTS.get(key) is False

    def faster_than_eager(self) -> bool:
        """Whether a replayed full-batch step beats the same step launched eagerly.

        Measured once per step shape and process (:data:`gpumlp.backends.cuda.graph_auto.VERDICTS`) over
        a few steps of each way, on the twins: the trainer's model and step counts are not
        touched, so training is as if nothing had been measured.
        """
        key = graph_auto.step_shape(self.net, self.batch, self.settings.dropout,
                                    self.settings.alpha,
                                    self.cupy.cuda.runtime.getDevice())
        verdict = graph_auto.VERDICTS.get(key)
        if verdict is not None:
            return verdict
        steps = min(graph_auto.MEASURE_STEPS, self.full_steps)
        with self.on_stream():
            self.perm.set(np.arange(self.n, dtype=np.int64))
            verdict = graph_auto.VERDICTS.measure(key, self._eager_steps, self._replay_steps,
                                                  self.stream.synchronize, steps)
            self.loss_full.fill(0)
        return verdict

    def _eager_steps(self, steps: int) -> Any:
        """``steps`` full-batch steps launched one kernel at a time, the step the trainer's
        eager loop runs (on the twins); returns their summed loss times the batch rows (on
        the device), as the eager loop sums it."""
        batch = self.batch
        buffers = self._step_buffers(batch)
        total = 0.0
        for i in range(steps):
            gather = self.step.gather_rows(self.X, self.T, self.perm[i * batch:(i + 1) * batch])
            total = total + self.step(gather, buffers, step=i) * batch
        return total

    def _replay_steps(self, steps: int) -> None:
        """``steps`` full-batch steps replayed on the twins (no host counters moved)."""
        self._set_device_state(0)
        many, one = divmod(steps, self.steps_per_graph)
        for _ in range(many):
            self.graph_many.launch(self.stream)
        for _ in range(one):
            self.graph_one.launch(self.stream)


@contextlib.contextmanager
def joined(cupy: Any, stream: Any) -> Iterator[Any]:
    """Make ``stream`` current, ordered after the caller's current stream's queued work and
    before the caller's later work (one event each way)."""
    caller = cupy.cuda.get_current_stream()
    stream.wait_event(caller.record())
    try:
        with stream:
            yield stream
    finally:
        caller.wait_event(stream.record())


def data_key(X: Any, T: Any) -> tuple:
    """What the captured graphs fix about the data: shapes and dtypes (not the arrays)."""
    return (tuple(X.shape), X.dtype.str, tuple(T.shape), T.dtype.str)
