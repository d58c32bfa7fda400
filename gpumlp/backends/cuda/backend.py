"""The CuPy (GPU) backend: every operation is one or two launches of the fused kernels.

Each matrix product of a step can run two ways:

* ``fused``: our tiled GEMM with the epilogue (bias + activation + dropout, or ``⊙ phi'``, or
  the bias gradient) in the same kernel: one launch, and capturable in a CUDA graph;
* ``cublas``: ``cupy.matmul`` (cuBLAS) followed by a fused epilogue kernel: two launches,
  faster for large shapes.

``GPUMLP_GEMM=fused|cublas|auto`` chooses; with ``auto`` (the default) both are timed once per
(operation, shape, dtype) with CUDA events and the faster is cached.  When the kernels cannot
be compiled or loaded (or ``GPUMLP_KERNELS=off``), every operation falls back to the generic
CuPy implementation of the base class, with one warning.

Every public operation checks its array arguments once, before launching anything
(:mod:`gpumlp.backends.contracts`: device arrays of the call's dtype, C-contiguous, on the
current device, of consistent shapes), and passes each scalar as the exact type the kernel
declares.

The backend made by :func:`gpumlp.get_backend` is shared by every model of the process and
keeps no device state of a run: the step scalars its kernels read, split-K scratch, span
tables, library handles and masks belong to a :class:`~gpumlp.backends.cuda.run.DeviceRun`
(:meth:`CupyBackend.open_run`), whose :attr:`~gpumlp.backends.cuda.run.DeviceRun.backend` —
this backend bound to the run — is what the run's owner passes to the operations.  An
operation called on the shared backend itself runs in a run of its own, opened and closed
around the call.  Only the GEMM route verdicts (measurements, :attr:`CupyBackend.routes`) and
the kernels dropped after a failure are kept here.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

import numpy as np

from ... import config
from ...dropout import Dropout
from .. import contracts
from ..base import Backend, check_spans
from . import forward, graph_pool, graphs, kernels, routes, step_state
from . import plan as gemm_plan  # `plan` names each call's chosen tile
from .run import DeviceRun

GEMM_PATHS = config.GEMM_PATHS


class KernelDropped(RuntimeError):
    """A kernel's launch failed; it is dropped and its operation runs again without it."""


class _GuardedKernel:
    """A kernel whose launch, if the driver refuses it, drops that kernel alone."""

    def __init__(self, backend: "CupyBackend", key: tuple, fn: Any):
        self.backend, self.key, self.fn = backend, key, fn

    def __call__(self, grid: tuple, block: tuple, args: tuple) -> None:
        try:
            self.fn(grid, block, args)
        except self.backend.xp.cuda.driver.CUDADriverError as exc:
            if self.backend.capturing:
                raise
            self.backend._drop(self.key, f"launch failed: {exc}")
            raise KernelDropped(self.key) from exc


def _falls_back(operation: Callable) -> Callable:
    """Run ``operation`` in a run: the backend's own when it is bound to one, else one
    opened for this call and closed after it (so the shared backend keeps nothing); and run
    it again (it then leaves the kernel out) when a kernel it launched was dropped: each
    retry drops one more kernel, so this ends."""
    @functools.wraps(operation)
    def run(self: "CupyBackend", *args: Any, **kwargs: Any) -> Any:
        if self.run is None:
            with self.open_run() as device_run:
                return run(device_run.backend, *args, **kwargs)
        while True:
            try:
                return operation(self, *args, **kwargs)
            except KernelDropped:
                continue
    return run


class CupyBackend(Backend):
    """GPU backend on CuPy with fused raw CUDA kernels; float32 and float64."""

    name = "cupy"
    arrays_on_host = False
    #: The run whose device state the operations use; ``None`` on the shared backend
    #: (each operation then opens a run of its own), set on a view (:meth:`bound_to`).
    run: DeviceRun | None = None

    def __init__(self, gemm_path: str | None = None) -> None:
        import cupy

        super().__init__(cupy)
        self.gemm_path = gemm_path or config.get("GPUMLP_GEMM")
        if self.gemm_path not in GEMM_PATHS:
            raise ValueError(f"gemm_path={self.gemm_path!r} is not valid; choose one of "
                             f"{GEMM_PATHS}")
        self.use_kernels = kernels.kernels_enabled()
        #: Kernels that failed to compile, load or launch, by instantiation: each falls
        #: back alone (its operation takes another route or the generic CuPy path).
        self.dropped_kernels: dict[tuple, str] = {}
        #: The GEMM route verdicts and cuBLASLt plans, shared by every run (measurements).
        self.routes = routes.RouteChooser(cupy, self.gemm_path)
        #: The backend every run is opened on (a view's is the one it was made from).
        self.shared = self

    # ------------------------------------------------------------------------------ runs
    def open_run(self, dtype: Any = None, streams: int = 0) -> DeviceRun:
        """A run of this backend (:class:`~gpumlp.backends.cuda.run.DeviceRun`) with
        ``streams`` streams of its own; close it when done."""
        return DeviceRun(self.shared, dtype, streams)

    def bound_to(self, device_run: DeviceRun) -> "CupyBackend":
        """This backend with its operations using ``device_run``'s state (a view: the
        kernels, dropped kernels and route verdicts stay shared)."""
        view = object.__new__(type(self))
        view.__dict__.update(self.shared.__dict__)
        view.run = device_run
        return view

    def __repr__(self) -> str:
        return "<gpumlp backend 'cupy'" + (" bound to a run>" if self.run else ">")

    @property
    def capturing(self) -> bool:
        """Whether the operations record a step of the bound run (its warm-up or capture,
        :meth:`DeviceRun.recording`)."""
        return self.run is not None and self.run.recording_step

    def _recorded_state(self) -> step_state.StepState:
        """The step state of the run's recording (an error outside one)."""
        if not self.capturing:
            raise RuntimeError("this operation moves a graph runner's step state: call it "
                               "on a run's backend inside DeviceRun.recording(...)")
        return self.run.state

    def _check(self, op: str, dtype: Any, **arrays: Any) -> dict[str, int]:
        """The array contracts of one call (see :mod:`gpumlp.backends.contracts`)."""
        return contracts.check(self.xp, op, dtype, self.xp.cuda.runtime.getDevice(), **arrays)

    # ------------------------------------------------------------------ capture protocol
    def graphs_unavailable_reason(self) -> str | None:
        if not self.use_kernels:
            return "the fused kernels are unavailable, and cuBLAS cannot be captured"
        return None

    def step_graphs_key(self, trainer: Any, X: Any, T: Any) -> tuple:
        return graphs.GraphStepRunner.key_for(trainer, X, T)

    def step_graphs_known_slower(self, trainer: Any, rows: int) -> bool:
        return graphs.GraphStepRunner.known_slower_than_eager(trainer, rows)

    def capture_steps(self, trainer: Any, X: Any, T: Any) -> graphs.GraphStepRunner:
        runner = graph_pool.IDLE.take(self.step_graphs_key(trainer, X, T))
        if runner is None:
            return graphs.GraphStepRunner(trainer, X, T)
        runner.bind(trainer)
        runner.load(X, T)
        return runner

    def release_step_graphs(self, runner: Any, keep: bool) -> None:
        if keep:
            graph_pool.IDLE.keep(runner)
        else:
            runner.close()

    def forward_replays(self) -> forward.ForwardGraphs:
        return forward.ForwardGraphs()

    # ----------------------------------------------------------------- arrays and devices
    def to_numpy(self, x: Any) -> np.ndarray:
        return self.xp.asnumpy(x) if isinstance(x, self.xp.ndarray) else np.asarray(x)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()

    def describe(self) -> dict:
        cupy = self.xp
        info = super().describe()
        device = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(device.id)
        name = props["name"]
        info.update({
            "device_name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": device.compute_capability,
            "sm_count": props["multiProcessorCount"],
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "fp32_peak_tflops": fp32_peak_tflops(props, device.compute_capability),
            "kernels": self.kernel_status(),
            "gemm_path": self.gemm_path,
        })
        return info

    def warm_up(self) -> None:
        """Compile every kernel source now (or load it from CuPy's disk cache), so that no
        timed region pays for it.  A module holds all the instantiations of its source, and
        a default fit launches kernels of every source (GEMMs, epilogues, losses, optimizer,
        gathers, and in captured steps the step-state kernels).  A source that fails is left
        to its first use, which drops its kernels with one warning naming each."""
        if not self.use_kernels:
            return
        for source in kernels.sources():
            try:
                kernels.load_module(source)
            except kernels.KernelsUnavailable:
                pass  # remembered by load_module: each kernel of it falls back when asked for

    def kernel_status(self) -> str:
        """``"compiled"``, or why the generic path is used."""
        if not self.use_kernels:
            return "off (GPUMLP_KERNELS=off)"
        try:
            for source in kernels.sources():
                kernels.load_module(source)
        except kernels.KernelsUnavailable as exc:
            return f"unavailable: {exc}"
        return "compiled"

    # ------------------------------------------------------------------ kernel launching
    def _kernel(self, name: str, dtype: Any, **params: Any) -> Any | None:
        """The kernel, or None where it is unavailable (``GPUMLP_KERNELS=off``, or dropped)."""
        if not self.use_kernels:
            return None
        key = (name, None if dtype is None else np.dtype(dtype).str,
               tuple(sorted(params.items())))
        if key in self.dropped_kernels:
            return None
        try:
            fn = kernels.get_kernel(name, dtype, **params)
        except kernels.KernelsUnavailable as exc:
            if self.capturing:  # a captured step cannot fall back to CuPy's own code
                raise
            self._drop(key, str(exc))
            return None
        return _GuardedKernel(self, key, fn)

    def _drop(self, key: tuple, reason: str) -> None:
        """Stop using one kernel instantiation, with one warning naming it."""
        name, dtype, params = key
        label = kernels.name_expression(name, dtype, **dict(params))
        self.dropped_kernels[key] = reason
        warnings.warn(f"gpumlp: kernel {label} is unavailable ({reason}); its operation "
                      "takes another route", RuntimeWarning, stacklevel=5)

    def _gemm_plan(self, kernel: str, dtype: Any, M: int, N: int, K: int,
                   precision: str = "float32") -> Any:
        """Tile and split-K of a fused GEMM with an M x N output (gpumlp.backends.cuda.plan)."""
        return gemm_plan.choose(kernel, dtype, M, N, K, gemm_plan.device_sm_count(self.xp),
                                precision=precision)

    def _device_precision(self, precision: str) -> str:
        """``precision``, except ``"tf32"`` on a device without TF32 tensor cores (before
        compute capability 8.0), which computes in float32 (warned once)."""
        if precision != "tf32":
            return precision
        try:
            capability = int(self.xp.cuda.Device().compute_capability)
        except Exception:  # a stand-in module without device properties: a current GPU
            capability = kernels.TF32_MIN_CAPABILITY
        if capability >= kernels.TF32_MIN_CAPABILITY:
            return "tf32"
        if not getattr(self.shared, "_tf32_warned", False):  # once, whatever the run
            self.shared._tf32_warned = True
            warnings.warn(f"precision='tf32' needs TF32 tensor cores (compute capability 8.0 "
                          f"or later); this device is {capability // 10}.{capability % 10}: "
                          "computing in float32", RuntimeWarning, stacklevel=4)
        return "float32"

    def _scratch(self, plan: Any, dtype: Any) -> tuple[Any, Any]:
        """Split-K scratch of a fused GEMM: the bound run's (its graphs keep the addresses;
        two models never share it), never this shared backend's."""
        return gemm_plan.scratch(self.run.scratch, self.xp, plan, dtype)

    def _dropout_args(self, dtype: Any, dropout: Dropout | None) -> tuple:
        # Eager: the counter is all in `dropout.counter` (the eager base stays 0); captured:
        # it is an offset from the recording runner's base, which the graph advances.
        state = self.run.state if self.capturing else self.run.eager_state(dtype)
        base = state.counter_base
        if dropout is None:
            return (dtype.type(1), np.uint64(0), base, np.int64(0))
        return (dtype.type(dropout.keep), np.uint64(dropout.seed), base,
                np.int64(dropout.counter))

    def _choose(self, op: str, shape: tuple, dtype: Any, fused: Callable[[], None] | None,
                cublas: Callable[[], None] | None, direct: Any = None,
                precision: str = "float32") -> bool:
        """Run ``op`` by the route the one chooser (:meth:`routes.RouteChooser.run`) picks
        for its shape; ``False`` where no route can run (the caller takes the generic path).

        Eager steps choose between ``fused`` and ``cublas``; a graph runner's step between
        ``fused`` and ``direct`` (cuBLAS called so that it can be captured).  ``None``
        candidates (a dropped kernel) are not offered.  TF32 runs ``fused`` (our
        tensor-core kernels) on every path: cuBLAS as CuPy calls it computes in float32
        (unless CuPy's CUPY_TF32=1 environment variable is set)."""
        if precision != "float32":
            shape, cublas, direct = (*shape, precision), None, None
        if self.capturing:
            return routes.run(self, self.run, op, shape, dtype, fused, direct) is not None
        return self.routes.run("eager", op, shape, dtype,
                               {"fused": fused, "cublas": cublas}) is not None

    def path_choices(self) -> dict[tuple, str]:
        """The GEMM route measured for each eager (operation, shape, dtype) so far."""
        return self.routes.choices("eager")

    # ----------------------------------------------------------------------------- forward
    @_falls_back
    def affine_act(self, x, w, b, act, out, dropout: Dropout | None = None,
                   precision: str = "float32"):
        dtype = contracts.float_dtype("affine_act", "x", x)
        size = self._check("affine_act", dtype, x=(x, "n k"), w=(w, "k m"), b=(b, "m"),
                           out=(out, "n m"))
        n, k, m = size["n"], size["k"], size["m"]
        dropped = dropout is not None
        precision = self._device_precision(precision)
        plan = self._gemm_plan("gemm_bias_act", x.dtype, n, m, k, precision)
        fused_fn = self._kernel("gemm_bias_act", x.dtype, act=act, dropout=dropped,
                                tile=plan.tile)
        epilogue = self._kernel("bias_act", x.dtype, act=act, dropout=dropped)
        drop = self._dropout_args(x.dtype, dropout)
        sizes = (np.int64(n), np.int64(k), np.int64(m))

        def fused():
            fused_fn(plan.grid, plan.block, (out, x, w, b, *sizes, *drop,
                                             *self._scratch(plan, x.dtype)))

        def cublas():
            self.xp.matmul(x, w, out=out)
            grid, block = kernels.launch_config("bias_act", n, m)
            epilogue(grid, block, (out, b, np.int64(n), np.int64(m), *drop))

        direct = routes.forward(
            x, w, out, lambda: epilogue(*kernels.launch_config("bias_act", n, m),
                                        (out, b, np.int64(n), np.int64(m), *drop)),
            b=b, relu_mask=act == "relu" and not dropped) if epilogue is not None else None
        if not self._choose("forward", (n, k, m), x.dtype, fused if fused_fn else None,
                            cublas if epilogue else None, direct, precision):
            return super().affine_act(x, w, b, act, out, dropout, precision)
        return out

    @_falls_back
    def softmax(self, z, out):
        dtype = contracts.float_dtype("softmax", "z", z)
        self._check("softmax", dtype, z=(z, "n k"), out=(out, "n k"))
        fn = self._kernel("softmax_rows", z.dtype)
        if fn is None:
            return super().softmax(z, out)
        grid, block = kernels.launch_config("softmax_rows", *z.shape)
        fn(grid, block, (out, z, np.int64(z.shape[0]), np.int64(z.shape[1])))
        return out

    @_falls_back
    def sigmoid(self, z, out):
        dtype = contracts.float_dtype("sigmoid", "z", z)
        self._check("sigmoid", dtype, z=(z, "n k"), out=(out, "n k"))
        fn = self._kernel("apply_act", z.dtype, act="sigmoid")
        if fn is None:
            return super().sigmoid(z, out)
        grid, block = kernels.launch_config("apply_act", z.size)
        fn(grid, block, (out, z, np.int64(z.size)))  # one pass, no temporaries: capturable
        return out

    # ---------------------------------------------------------------------------- backward
    @_falls_back
    def act_grad(self, delta, a, act, out, dropout: Dropout | None = None):
        dtype = contracts.float_dtype("act_grad", "a", a)
        self._check("act_grad", dtype, delta=(delta, "n m"), a=(a, "n m"), out=(out, "n m"))
        fn = self._kernel("act_grad", a.dtype, act=act, dropout=dropout is not None)
        if fn is None:
            return super().act_grad(delta, a, act, out, dropout)
        grid, block = kernels.launch_config("act_grad", a.size)
        fn(grid, block, (out, delta, a, np.int64(a.size), *self._dropout_args(a.dtype, dropout)))
        return out

    @_falls_back
    def backprop_hidden(self, h_next, w_next, a, act, out, dropout: Dropout | None = None,
                        precision: str = "float32"):
        dtype = contracts.float_dtype("backprop_hidden", "a", a)
        size = self._check("backprop_hidden", dtype, h_next=(h_next, "n m"),
                           w_next=(w_next, "k m"), a=(a, "n k"), out=(out, "n k"))
        n, k, m = size["n"], size["k"], size["m"]
        precision = self._device_precision(precision)
        plan = self._gemm_plan("gemm_backprop_act", a.dtype, n, k, m, precision)
        fused_fn = self._kernel("gemm_backprop_act", a.dtype, act=act,
                                dropout=dropout is not None, tile=plan.tile)
        drop = self._dropout_args(a.dtype, dropout)

        def fused():
            fused_fn(plan.grid, plan.block, (out, h_next, w_next, a, np.int64(n), np.int64(k),
                                             np.int64(m), *drop,
                                             *self._scratch(plan, a.dtype)))

        def cublas():
            self.xp.matmul(h_next, w_next.T, out=out)
            self.act_grad(out, a, act, out, dropout)

        if not self._choose("backward", (n, k, m), a.dtype, fused if fused_fn else None, cublas,
                            routes.backward(h_next, w_next, out,
                                            lambda: self.act_grad(out, a, act, out, dropout),
                                            a=a, relu=act == "relu" and dropout is None),
                            precision):
            return super().backprop_hidden(h_next, w_next, a, act, out, dropout, precision)
        return out

    @_falls_back
    def weight_grads(self, a_prev, h, dw, db, w=None, decay: float = 0.0,
                     precision: str = "float32"):
        dtype = contracts.float_dtype("weight_grads", "h", h)
        if decay and w is None:
            raise ValueError(f"weight_grads: decay={decay!r} needs the weights w; got None")
        size = self._check("weight_grads", dtype, a_prev=(a_prev, "n k"), h=(h, "n m"),
                           dw=(dw, "k m"), db=(db, "m"), w=(w if decay else None, "k m"))
        n, k, m = size["n"], size["k"], size["m"]
        precision = self._device_precision(precision)
        plan = self._gemm_plan("gemm_weight_grads", h.dtype, k, m, n, precision)
        fused_fn = self._kernel("gemm_weight_grads", h.dtype, tile=plan.tile)
        dt = h.dtype.type
        # w is read only when decay != 0; None is CuPy's null pointer.
        w_arg = w if decay else None

        def fused():
            fused_fn(plan.grid, plan.block, (dw, db, a_prev, h, w_arg, np.int64(n), np.int64(k),
                                             np.int64(m), dt(decay),
                                             *self._scratch(plan, h.dtype)))

        def cublas():
            self.xp.matmul(a_prev.T, h, out=dw)
            if decay:
                self.xp.add(dw, dt(decay) * w, out=dw)
            h.sum(axis=0, out=db)

        if not self._choose("weight_grads", (n, k, m), h.dtype, fused if fused_fn else None,
                            cublas, routes.weight_grads(a_prev, h, dw, db, w, decay),
                            precision):
            return super().weight_grads(a_prev, h, dw, db, w, decay, precision)

    # ------------------------------------------------------------------------------ losses
    def _loss(self, name: str, x, t, h_out):
        first = "a" if name == "squared_error" else "z"
        dtype = contracts.float_dtype(name, first, x)
        self._check(name, dtype, **{first: (x, "n k")}, t=(t, "n k"), h_out=(h_out, "n k"))
        fn = self._kernel(name, x.dtype)
        if fn is None:
            return getattr(super(), name)(x, t, h_out)
        loss = self.run.state.loss if self.capturing else None
        if loss is None:
            loss = self.xp.zeros((), dtype=x.dtype)  # the kernel adds into it
        elif loss.dtype != x.dtype:
            raise TypeError(f"{name}: the recording's loss accumulator is {loss.dtype}, "
                            f"the logits {x.dtype}")
        shape = x.shape if name == "softmax_xent" else (x.size,)
        grid, block = kernels.launch_config(name, *shape)
        fn(grid, block, (h_out, loss, x, t, np.int64(x.shape[0]), np.int64(x.shape[1])))
        return loss

    @_falls_back
    def softmax_xent(self, z, t, h_out):
        return self._loss("softmax_xent", z, t, h_out)

    @_falls_back
    def affine_softmax_xent(self, x, w, b, t, z_out, h_out, precision: str = "float32"):
        """One launch of ``gemm_softmax_xent`` where :func:`gemm_plan.softmax_xent_plan` says
        it pays (a block holds whole rows of the logits, at no worse a tile), leaving
        ``z_out`` unwritten; elsewhere the forward GEMM and the loss kernel, as before.

        The fused kernel and the GEMM + epilogue + loss kernel are chosen between like every
        GEMM of a step (eager: :meth:`_choose`; captured: :mod:`routes`)."""
        dtype = contracts.float_dtype("affine_softmax_xent", "x", x)
        size = self._check("affine_softmax_xent", dtype, x=(x, "n k"), w=(w, "k m"),
                           b=(b, "m"), t=(t, "n m"), z_out=(z_out, "n m"),
                           h_out=(h_out, "n m"))
        n, k, m = size["n"], size["k"], size["m"]
        precision = self._device_precision(precision)
        plan = gemm_plan.softmax_xent_plan(x.dtype, n, k, m,
                                           gemm_plan.device_sm_count(self.xp), precision)
        fused_fn = (self._kernel("gemm_softmax_xent", x.dtype, tile=plan.tile)
                    if plan is not None else None)
        bias_fn = self._kernel("bias_act", x.dtype, act="identity", dropout=False)
        loss_fn = self._kernel("softmax_xent", x.dtype)
        epilogues = bias_fn is not None and loss_fn is not None
        state = self.run.state if self.capturing else None
        loss = self._loss_accumulator("affine_softmax_xent", state, x.dtype)
        # Eager: the loss is this call's own and starts at zero in each variant (timing the
        # two runs both); recorded: every variant adds into the runner's accumulator.
        reset = (lambda: loss.fill(0)) if state is None else (lambda: None)
        drop = self._dropout_args(x.dtype, None)
        sizes = (np.int64(n), np.int64(k), np.int64(m))

        def fused():
            reset()
            fused_fn(plan.grid, plan.block, (h_out, loss, x, w, b, t, *sizes,
                                             *self._scratch(plan, x.dtype)))

        def bias_and_loss():
            bias_fn(*kernels.launch_config("bias_act", n, m),
                    (z_out, b, np.int64(n), np.int64(m), *drop))
            loss_fn(*kernels.launch_config("softmax_xent", n, m),
                    (h_out, loss, z_out, t, np.int64(n), np.int64(m)))

        def cublas():
            reset()
            self.xp.matmul(x, w, out=z_out)
            bias_and_loss()

        def direct_epilogue():
            reset()
            bias_and_loss()

        if not self._choose("forward_softmax_xent", (n, k, m), x.dtype,
                            fused if fused_fn else None, cublas if epilogues else None,
                            routes.forward(x, w, z_out, direct_epilogue) if epilogues else None,
                            precision):
            return super().affine_softmax_xent(x, w, b, t, z_out, h_out, precision)
        return loss

    def _loss_accumulator(self, op: str, state: Any, dtype: Any) -> Any:
        """The recording runner's loss accumulator, else a new device scalar (eager)."""
        loss = state.loss if state is not None else None
        if loss is None:
            return self.xp.zeros((), dtype=dtype)  # the kernels add into it
        if loss.dtype != dtype:
            raise TypeError(f"{op}: the recording's loss accumulator is {loss.dtype}, the "
                            f"logits {np.dtype(dtype)}")
        return loss

    @_falls_back
    def sigmoid_bce(self, z, t, h_out):
        return self._loss("sigmoid_bce", z, t, h_out)

    @_falls_back
    def squared_error(self, a, t, h_out):
        return self._loss("squared_error", a, t, h_out)

    @_falls_back
    def add_weights_l2_loss(self, params, spans, scale, loss_acc):
        """One launch over every layer's weights (``spans``: host ``(offset, size)`` pairs,
        kept on the device as an int64 table made once per owner; see :meth:`_span_table`)."""
        dtype = contracts.float_dtype("add_weights_l2_loss", "params", params)
        self._check("add_weights_l2_loss", dtype, params=(params, "p"), loss_acc=(loss_acc, ""))
        spans = check_spans("add_weights_l2_loss", spans, params.size)
        fn = self._kernel("add_weights_l2_loss", params.dtype)
        if fn is None:
            return super().add_weights_l2_loss(params, spans, scale, loss_acc)
        if not spans:
            return loss_acc
        table = self._span_table(spans, params.dtype)
        grid, block = kernels.launch_config("add_weights_l2_loss",
                                            sum(size for _, size in spans))
        fn(grid, block, (loss_acc, params, table, np.int64(len(spans)),
                         params.dtype.type(scale)))
        return loss_acc

    def _span_table(self, spans: tuple[tuple[int, int], ...], dtype: Any) -> Any:
        """The device int64 table ``[offset_0, size_0, offset_1, ...]`` of ``spans``, owned
        like the split-K scratch by the bound run: made on first use, outside a capture (the
        runner's warm-up), and kept while the run is open, so captured graphs keep a valid
        address."""
        tables = self.run.span_tables
        table = tables.get(spans)
        if table is None:
            if routes.is_capturing(self.xp):
                raise RuntimeError("add_weights_l2_loss: the span table of these weights was "
                                   "not made before the capture; run the step once outside "
                                   "the capture first (the runner's warm-up)")
            table = self.xp.asarray(np.asarray(spans, dtype=np.int64).reshape(-1))
            # Once: any stream may read the table from now on.
            self.xp.cuda.get_current_stream().synchronize()
            tables[spans] = table
        return table

    # --------------------------------------------------------------------------- optimizer
    def _step_scalars(self, dtype: Any, lr: float, step: int | None) -> step_state.StepState:
        """The device learning rate and step count a launch reads: the recording run's
        (written by the runner once per epoch, moved on by the graph), or the run's eager
        scalars, written here on the current stream."""
        if self.capturing:
            state = self.run.state
            if state.dtype != np.dtype(dtype):
                raise TypeError(f"the recording step state is {state.dtype}, the parameters "
                                f"{np.dtype(dtype)}")
            return state
        state = self.run.eager_state(dtype)
        state.lr.fill(state.dtype.type(lr))
        if step is not None:
            state.step.fill(np.int32(step))
        return state

    @_falls_back
    def sgd_step(self, params, grads, velocity, lr, momentum, nesterov, l2=None):
        dtype = contracts.float_dtype("sgd_step", "params", params)
        self._check("sgd_step", dtype, params=(params, "p"), grads=(grads, "p"),
                    velocity=(velocity, "p"))
        fn = self._kernel("sgd_step", params.dtype, nesterov=bool(nesterov))
        if fn is None:
            return super().sgd_step(params, grads, velocity, lr, momentum, nesterov, l2)
        if l2 is not None:  # never asked for (folds_l2_into_update is False): the reference
            self.fold_l2_term(params, grads, l2)
        state = self._step_scalars(params.dtype, lr, None)
        grid, block = kernels.launch_config("sgd_step", params.size)
        fn(grid, block, (params, velocity, grads, np.int64(params.size), state.lr,
                         np.float64(momentum)))

    @_falls_back
    def adam_step(self, params, grads, m, v, lr, beta1, beta2, eps, step, l2=None):
        dtype = contracts.float_dtype("adam_step", "params", params)
        self._check("adam_step", dtype, params=(params, "p"), grads=(grads, "p"), m=(m, "p"),
                    v=(v, "p"))
        fn = self._kernel("adam_step", params.dtype)
        if fn is None:
            return super().adam_step(params, grads, m, v, lr, beta1, beta2, eps, step, l2)
        if l2 is not None:  # never asked for (folds_l2_into_update is False): the reference
            self.fold_l2_term(params, grads, l2)
        state = self._step_scalars(params.dtype, lr, step)
        grid, block = kernels.launch_config("adam_step", params.size)
        fn(grid, block, (params, m, v, grads, np.int64(params.size), state.lr, state.step,
                         np.float64(beta1), np.float64(beta2), np.float64(eps)))

    # ----------------------------------------------------------------------- data movement
    @_falls_back
    def gather_rows(self, src, index, out):
        dtype = contracts.float_dtype("gather_rows", "src", src)
        self._check("gather_rows", dtype, src=(src, "total c"), index=(index, "r", np.int64),
                    out=(out, "r c"))
        fn = self._kernel("gather_rows", src.dtype)
        if fn is None:
            return super().gather_rows(src, index, out)
        rows, cols = out.shape
        grid, block = kernels.launch_config("gather_rows", rows * cols)
        fn(grid, block, (out, src, index, None, np.int64(rows), np.int64(cols)))
        return out

    def gather_rows_at(self, src, perm, start, out):
        """``out[i] = src[perm[start + i]]`` with ``start`` a device scalar (graph steps)."""
        dtype = contracts.float_dtype("gather_rows_at", "src", src)
        self._check("gather_rows_at", dtype, src=(src, "total c"),
                    perm=(perm, "total", np.int64), start=(start, "", np.int64),
                    out=(out, "r c"))
        fn = kernels.get_kernel("gather_rows", src.dtype)
        rows, cols = out.shape
        grid, block = kernels.launch_config("gather_rows", rows * cols)
        fn(grid, block, (out, src, perm, start, np.int64(rows), np.int64(cols)))
        return out

    def advance_step(self, start, rows: int, counters_per_step: int) -> None:
        """Move the recording runner's step state on: batch start, dropout counter base,
        step count (inside a captured step only)."""
        state = self._recorded_state()
        self._check("advance_step", np.int64, start=(start, ""))
        fn = kernels.get_kernel("advance_step")
        grid, block = kernels.launch_config("advance_step", 1)
        fn(grid, block, (start, np.int64(rows), state.counter_base,
                         np.int64(counters_per_step), state.step))

    def gather_batch_at(self, X, T, perm, start, xb, tb, counters_per_step: int,
                        blocks_done) -> None:
        """``xb[i] = X[perm[start + i]]`` and ``tb[i] = T[perm[start + i]]`` in one launch,
        which then moves the recording runner's step state on as :meth:`advance_step` does
        (``blocks_done``: an int32 device counter at 0, left at 0)."""
        state = self._recorded_state()
        dtype = contracts.float_dtype("gather_batch_at", "X", X)
        size = self._check("gather_batch_at", dtype, X=(X, "total c"), T=(T, "total d"),
                           perm=(perm, "total", np.int64), start=(start, "", np.int64),
                           xb=(xb, "r c"), tb=(tb, "r d"),
                           blocks_done=(blocks_done, "", np.int32))
        rows, x_cols, t_cols = size["r"], size["c"], size["d"]
        fn = kernels.get_kernel("gather_batch", X.dtype)
        grid, block = kernels.launch_config("gather_batch", rows * (x_cols + t_cols))
        fn(grid, block, (xb, tb, X, T, perm, start, np.int64(rows), np.int64(x_cols),
                         np.int64(t_cols), state.counter_base, np.int64(counters_per_step),
                         state.step, blocks_done))

    def permutation(self, n: int, rng: Any) -> Any:
        return self.xp.asarray(rng.permutation(n).astype(np.int64))


def fp32_peak_tflops(props: dict, capability: str) -> float | None:
    """FP32 (non-tensor) peak: SMs x FP32 lanes per SM x 2 (FMA) x boost clock.

    Lanes per SM by architecture: 64 on sm_60/sm_70/sm_80 (A100), 128 on sm_86/sm_89/sm_90.
    """
    lanes = {"60": 64, "70": 64, "75": 64, "80": 64, "86": 128, "89": 128, "90": 128,
             "100": 128, "120": 128}.get(str(capability))
    if lanes is None:
        return None
    return props["multiProcessorCount"] * lanes * 2 * props["clockRate"] * 1e3 / 1e12
