"""GPU-only failure classes, modelled on the CPU by the emulated CuPy and shown to be closed.

Each test here fails on code with the hazard it names (unordered streams, device state shared
between models, unchecked array arguments, scalars of the wrong type, allocations or host
synchronisation during capture) and passes on the fixed code; ``tests/kernels/emulated_cupy.py``
turns each hazard into an exception the way a GPU would turn it into wrong numbers.
"""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from gpumlp.backends import get_backend
from gpumlp.dropout import Dropout
from gpumlp.network import Network
from gpumlp.optim import SGD, Adam
from gpumlp.training import Trainer

from conftest import load_support

pytestmark = pytest.mark.kernels

harness = load_support("harness")
CPU = get_backend("numpy")


def gpu_backend(path: str = "fused"):
    from gpumlp.backends.cuda.backend import CupyBackend

    return CupyBackend(gemm_path=path)


def make_trainer(backend, solver="adam", dropout=0.25, lr=1e-2, seed=0, graph="on"):
    net = Network([12, 16, 8, 3], activation="relu", backend=backend, seed=seed,
                  dtype=np.float64)
    optimizer = (Adam(backend, net.params, lr) if solver == "adam"
                 else SGD(backend, net.params, lr, momentum=0.9))
    return Trainer(net, optimizer, batch_size=16, alpha=1e-3, dropout=dropout, seed=seed,
                   cuda_graph=graph)


def data(seed=5, n=70):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 12)), np.eye(3)[rng.integers(0, 3, n)]


# ------------------------------------------------------------------- 1. stream ordering
def test_unordered_cross_stream_access_raises(emulated_gpu):
    cp, em = emulated_gpu
    a = cp.zeros(8)  # written on the legacy default stream
    side = cp.cuda.Stream(non_blocking=True)
    with side, pytest.raises(em.StreamOrderViolation, match="no event or synchronisation"):
        a += 1
    side.wait_event(cp.cuda.get_current_stream().record())
    with side:
        a += 1  # ordered by the event
    with pytest.raises(em.StreamOrderViolation, match="no event"):
        float(a.sum())  # back on the legacy stream, not ordered after the side stream
    side.synchronize()
    assert float(a.sum()) == 8.0  # a host synchronisation orders it


def test_blocking_streams_order_with_the_legacy_stream(emulated_gpu):
    cp, _ = emulated_gpu
    a = cp.zeros(4)
    blocking = cp.cuda.Stream()
    with blocking:
        a += 2  # implicitly after the legacy stream's zeros
    a *= 3  # the legacy stream waits for blocking streams
    assert float(a.sum()) == 24.0


def test_graph_epochs_are_ordered_with_the_callers_stream(emulated_gpu):
    """The trainer copies the parameters (`_last_good`) and the caller rewrites X on the
    legacy stream between epochs; the replays run on the runner's own stream."""
    cp, _ = emulated_gpu
    X, T = data()
    X_d, T_d = cp.asarray(X), cp.asarray(T)
    graph = make_trainer(gpu_backend())
    eager = make_trainer(CPU, graph="off")
    for epoch in range(3):
        X_d *= 1.0  # a write of X on the caller's stream right before the warm-up/replays
        assert graph.run_epoch(X_d, T_d)
        assert eager.run_epoch(X, T)
    np.testing.assert_allclose(graph.network.get_flat_params(),
                               eager.network.get_flat_params(), rtol=1e-10, atol=1e-12)


def test_graph_epochs_on_a_user_stream(emulated_gpu):
    cp, _ = emulated_gpu
    X, T = data()
    with cp.cuda.Stream(non_blocking=True):
        X_d, T_d = cp.asarray(X), cp.asarray(T)
        trainer = make_trainer(gpu_backend())
        for _ in range(2):
            trainer.run_epoch(X_d, T_d)
    assert np.isfinite(trainer.network.get_flat_params()).all()


# ------------------------------------------------------- 2. no device state shared by models
class Baton:
    """Lets one of several threads run at a time; each graph launch hands over to the next,
    so two trainers' replays interleave deterministically, as two host threads' could."""

    def __init__(self, names):
        self.names, self.turn, self.done = list(names), names[0], set()
        self.cond = threading.Condition()

    def _next(self, name):
        live = [n for n in self.names if n not in self.done]
        return live[(live.index(name) + 1) % len(live)] if name in live else live[0]

    def wait(self, name):
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)

    def hand_over(self, name):
        with self.cond:
            self.turn = self._next(name)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn == name)

    def finish(self, name):
        with self.cond:
            following = self._next(name)
            self.done.add(name)
            if len(self.done) < len(self.names):
                self.turn = following
            self.cond.notify_all()


def test_two_models_in_threads_do_not_share_step_state(emulated_gpu):
    cp, em = emulated_gpu
    backend = gpu_backend()
    X, T = data(n=40)  # 2 full batches and a rest of 8: two graph launches per epoch
    settings = {"a": dict(solver="adam", lr=1e-2, seed=0),
                "b": dict(solver="adam", lr=3e-3, seed=1, dropout=0.4)}

    def train(trainer):  # one epoch: two graph launches, so the threads interleave
        trainer.run_epoch(cp.asarray(X), cp.asarray(T))
        return trainer.network.get_flat_params()

    alone = {name: train(make_trainer(backend, **kw)) for name, kw in settings.items()}
    baton, results, errors = Baton(list(settings)), {}, []

    def worker(name):
        baton.wait(name)
        try:
            results[name] = train(make_trainer(backend, **settings[name]))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            baton.finish(name)

    em.STATE.before_graph_launch = lambda graph: baton.hand_over(
        threading.current_thread().name)
    threads = [threading.Thread(target=worker, args=(name,), name=name) for name in settings]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    em.STATE.before_graph_launch = None
    assert not errors, errors
    for name in settings:
        np.testing.assert_allclose(results[name], alone[name], rtol=1e-12, atol=1e-14)


def test_interleaved_epochs_of_two_models_equal_each_alone(emulated_gpu):
    cp, _ = emulated_gpu
    backend = gpu_backend()
    X, T = data(n=40)
    X_d, T_d = cp.asarray(X), cp.asarray(T)
    pair = [make_trainer(backend, lr=1e-2, seed=0), make_trainer(backend, lr=2e-3, seed=1,
                                                                  solver="sgd")]
    for _ in range(2):
        for trainer in pair:
            trainer.run_epoch(X_d, T_d)
    for trainer, kw in zip(pair, [dict(lr=1e-2, seed=0), dict(lr=2e-3, seed=1, solver="sgd")]):
        alone = make_trainer(backend, **kw)
        for _ in range(2):
            alone.run_epoch(X_d, T_d)
        np.testing.assert_allclose(trainer.network.get_flat_params(),
                                   alone.network.get_flat_params(), rtol=1e-12, atol=1e-14)
    assert pair[0].step_graphs.state is not pair[1].step_graphs.state


# ------------------------------------------------------------ 3. array contracts
N, K, M, ROWS = 6, 5, 4, 3


def operations(gpu, run):
    """Every public operation: (call, {argument: (shape, dtype or None for the call's)})."""
    drop = Dropout(keep=0.8, seed=3, counter=1)
    loss_args = {"z": ((N, M), None), "t": ((N, M), None), "h_out": ((N, M), None)}
    return {
        "affine_act": (lambda a: gpu.affine_act(a["x"], a["w"], a["b"], "relu", a["out"], drop),
                       {"x": ((N, K), None), "w": ((K, M), None), "b": ((M,), None),
                        "out": ((N, M), None)}),
        "softmax": (lambda a: gpu.softmax(a["z"], a["out"]),
                    {"z": ((N, M), None), "out": ((N, M), None)}),
        "sigmoid": (lambda a: gpu.sigmoid(a["z"], a["out"]),
                    {"z": ((N, M), None), "out": ((N, M), None)}),
        "act_grad": (lambda a: gpu.act_grad(a["delta"], a["a"], "tanh", a["out"], drop),
                     {"delta": ((N, M), None), "a": ((N, M), None), "out": ((N, M), None)}),
        "backprop_hidden": (
            lambda a: gpu.backprop_hidden(a["h_next"], a["w_next"], a["a"], "relu", a["out"]),
            {"h_next": ((N, M), None), "w_next": ((K, M), None), "a": ((N, K), None),
             "out": ((N, K), None)}),
        "weight_grads": (
            lambda a: gpu.weight_grads(a["a_prev"], a["h"], a["dw"], a["db"], a["w"], 0.01),
            {"a_prev": ((N, K), None), "h": ((N, M), None), "dw": ((K, M), None),
             "db": ((M,), None), "w": ((K, M), None)}),
        "softmax_xent": (lambda a: gpu.softmax_xent(a["z"], a["t"], a["h_out"]), loss_args),
        "sigmoid_bce": (lambda a: gpu.sigmoid_bce(a["z"], a["t"], a["h_out"]), loss_args),
        "squared_error": (lambda a: gpu.squared_error(a["a"], a["t"], a["h_out"]),
                          {"a": ((N, M), None), "t": ((N, M), None), "h_out": ((N, M), None)}),
        "sgd_step": (lambda a: gpu.sgd_step(a["params"], a["grads"], a["velocity"], 0.1, 0.9,
                                            True),
                     {"params": ((N,), None), "grads": ((N,), None), "velocity": ((N,), None)}),
        "adam_step": (lambda a: gpu.adam_step(a["params"], a["grads"], a["m"], a["v"], 1e-3,
                                              0.9, 0.999, 1e-8, 1),
                      {"params": ((N,), None), "grads": ((N,), None), "m": ((N,), None),
                       "v": ((N,), None)}),
        "gather_rows": (lambda a: gpu.gather_rows(a["src"], a["index"], a["out"]),
                        {"src": ((N, K), None), "index": ((ROWS,), np.int64),
                         "out": ((ROWS, K), None)}),
        "gather_rows_at": (lambda a: gpu.gather_rows_at(a["src"], a["perm"], a["start"],
                                                         a["out"]),
                           {"src": ((N, K), None), "perm": ((N,), np.int64),
                            "start": ((), np.int64), "out": ((ROWS, K), None)}),
        "advance_step": (lambda a: advance(run, a["start"]),
                         {"start": ((), np.int64)}),
        "gather_batch_at": (lambda a: gather_batch(run, a),
                            {"X": ((N, K), None), "T": ((N, M), None),
                             "perm": ((N,), np.int64), "start": ((), np.int64),
                             "xb": ((ROWS, K), None), "tb": ((ROWS, M), None),
                             "blocks_done": ((), np.int32)}),
    }


def gather_batch(run, a):
    with run.recording(None):
        run.backend.gather_batch_at(a["X"], a["T"], a["perm"], a["start"], a["xb"], a["tb"],
                                    3, a["blocks_done"])


def advance(run, start):
    with run.recording(None):
        run.backend.advance_step(start, 4, 3)


def valid_arguments(cp, spec, dtype):
    rng = np.random.default_rng(0)
    arrays = {}
    for name, (shape, fixed) in spec.items():
        if fixed is not None:
            arrays[name] = cp.asarray(rng.permutation(N)[:shape[0]].astype(fixed) if shape
                                      else np.zeros((), fixed))
        else:
            arrays[name] = cp.asarray(rng.uniform(0.1, 0.9, shape).astype(dtype))
    return arrays


def corrupt(cp, em, array, how):
    if how == "host":
        return cp.asnumpy(array)
    if how == "dtype":
        other = {np.dtype(np.float32): np.float64, np.dtype(np.float64): np.float32,
                 np.dtype(np.int64): np.int32, np.dtype(np.int32): np.int64}[array.dtype]
        return array.astype(other)
    if how == "device":
        return em.on_device(array, 1)
    if how == "shape":
        return cp.zeros(array.shape[:-1] + (array.shape[-1] + 1,), array.dtype) \
            if array.ndim else cp.zeros((1,), array.dtype)
    wide = cp.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
    return wide[..., ::2]  # strided: same shape and dtype, not contiguous


CORRUPTIONS = {"strided": ValueError, "dtype": TypeError, "host": TypeError,
               "device": ValueError, "shape": ValueError}
OPERATIONS = ["affine_act", "softmax", "sigmoid", "act_grad", "backprop_hidden",
              "weight_grads", "softmax_xent", "sigmoid_bce", "squared_error", "sgd_step",
              "adam_step", "gather_rows", "gather_rows_at", "advance_step", "gather_batch_at"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", OPERATIONS)
def test_every_operation_checks_its_arrays_before_launch(emulated_gpu, op, dtype):
    cp, em = emulated_gpu
    gpu = gpu_backend("fused")
    run = gpu.open_run(dtype)
    call, spec = operations(gpu, run)[op]
    call(valid_arguments(cp, spec, dtype))  # the valid call runs
    for name in spec:
        for how, error in CORRUPTIONS.items():
            arrays = valid_arguments(cp, spec, dtype)
            if how == "strided" and arrays[name].ndim == 0:
                continue  # a 0-d array is always contiguous
            arrays[name] = corrupt(cp, em, arrays[name], how)
            launches = sum(k.launches for k in _kernels(em))
            # a wrong shape may be reported on the argument it disagrees with
            pattern = rf"^{op}: \w+ has shape" if how == "shape" else rf"^{op}: .*\b{name}\b"
            with pytest.raises(error, match=pattern):
                call(arrays)
            assert sum(k.launches for k in _kernels(em)) == launches, "launched before check"


def _kernels(em):
    from gpumlp.backends.cuda import kernels

    return list(kernels.get_kernel.cache.values())


# ------------------------------------------------------------ 4. marshalling as CuPy does
def test_scalars_are_marshalled_as_cupy_marshals_them():
    assert harness.scalar_dtype(0.75) == np.float64
    assert harness.scalar_dtype(3) == np.int64
    assert harness.scalar_dtype(True) == np.bool_
    assert harness.scalar_dtype(np.float32(0.75)) == np.float32
    assert harness.scalar_dtype(np.uint64(7)) == np.uint64
    with pytest.raises(TypeError, match="unsupported"):
        harness.scalar_dtype("0.75")


PLANTED = [  # (kernel, dtype, argument index, wrong value, what the message names)
    ("act_grad", np.float32, 4, 0.75, "T keep"),  # a Python float is a double
    ("gemm_weight_grads", np.float32, 8, 0.01, "T decay"),
    ("act_grad", np.float64, 5, 12345, "unsigned long long seed"),  # a Python int is int64
    ("adam_step", np.float64, 7, np.float32(0.9), "double beta1"),
    ("gather_rows", np.float32, 4, np.int32(3), "long long rows"),
]


@pytest.mark.parametrize("kernel, dtype, index, value, declared", PLANTED)
def test_a_wrong_scalar_type_is_rejected_by_the_harness(emulated_gpu, kernel, dtype, index,
                                                          value, declared):
    cp, em = emulated_gpu
    from gpumlp.backends.cuda import kernels

    args = list(_valid_launch(cp, kernel, dtype))
    fn = kernels.get_kernel(kernel, dtype, **_flags(kernel, dtype))
    fn(*_geometry(kernel), tuple(args))  # the well-typed launch runs
    args[index] = value
    with pytest.raises(harness.KernelArgumentError, match=declared):
        fn(*_geometry(kernel), tuple(args))


def test_a_pointer_to_the_wrong_dtype_is_rejected(emulated_gpu):
    cp, _ = emulated_gpu
    from gpumlp.backends.cuda import kernels

    args = list(_valid_launch(cp, "gather_rows", np.float32))
    args[2] = cp.asarray(np.arange(4, dtype=np.int32))  # perm declared const long long*
    with pytest.raises(harness.KernelArgumentError, match="perm"):
        kernels.get_kernel("gather_rows", np.float32)(*_geometry("gather_rows"), tuple(args))


def test_a_planted_wrong_type_in_the_backend_fails(emulated_gpu, monkeypatch):
    """The backend passing ``keep`` as a Python float (a double on the GPU, read as a float
    by ``T keep``: 0.0 instead of 0.75) must not pass unnoticed."""
    cp, _ = emulated_gpu
    from gpumlp.backends.cuda.backend import CupyBackend

    gpu = gpu_backend("fused")
    original = CupyBackend._dropout_args

    def python_float_keep(self, dtype, dropout):
        args = original(self, dtype, dropout)
        return (float(args[0]),) + args[1:]

    monkeypatch.setattr(CupyBackend, "_dropout_args", python_float_keep)
    x, w, b = (cp.asarray(np.ones(s, np.float32)) for s in ((4, 3), (3, 2), (2,)))
    with pytest.raises(harness.KernelArgumentError, match="T keep"):
        gpu.affine_act(x, w, b, "relu", cp.empty((4, 2), np.float32),
                       Dropout(keep=0.75, seed=1, counter=0))


def _geometry(kernel):
    from gpumlp.backends.cuda import kernels

    launch = kernels.KERNELS[kernel].launch
    return kernels.launch_config(kernel, *((4, 4) if launch in ("gemm", "rows") else (16,)))


def _flags(kernel, dtype):
    """Template parameters of the first instantiation of ``kernel`` for ``dtype``."""
    from gpumlp.backends.cuda import kernels

    name = np.dtype(dtype).name
    first = next(c for c in kernels.KERNELS[kernel].grid() if c.get("dtype", name) == name)
    return {p: v for p, v in first.items() if p != "dtype"}


def _valid_launch(cp, kernel, dtype):
    """Well-typed arguments for a 4x4 launch of ``kernel``, from its declared signature."""
    from gpumlp.backends.cuda import kernels

    args = []
    for decl in kernels.KERNELS[kernel].signature:
        ctype, name = decl.rsplit(" ", 1)
        ctype = ctype.replace("const ", "").strip()
        pointer = name.startswith("*") or ctype.endswith("*")
        base = ctype.rstrip("*").strip()
        numpy_type = {"T": dtype, "long long": np.int64, "unsigned long long": np.uint64,
                      "double": np.float64, "int": np.int32}[base]
        if pointer:
            if name.lstrip("*") in ("perm",):
                args.append(cp.asarray(np.arange(4, dtype=np.int64)))
            elif name.lstrip("*") in ("start", "counter_base", "step"):
                args.append(cp.asarray(np.full((), name.lstrip("*") == "step", numpy_type)))
            else:
                args.append(cp.asarray(np.full(16, 0.5, numpy_type)))
        elif name in ("n", "k", "m", "rows", "cols"):
            args.append(np.int64(4))
        elif name == "size":
            args.append(np.int64(16))
        elif name == "keep":
            args.append(numpy_type(1))
        else:
            args.append(numpy_type(0.5) if base in ("T", "double") else numpy_type(1))
    return args


# ------------------------------------------------------------- 5. capture hygiene
def capturing(cp):
    stream = cp.cuda.Stream(non_blocking=True)
    stream.wait_event(cp.cuda.get_current_stream().record())
    return stream


def test_a_temporary_made_during_capture_is_flagged(emulated_gpu):
    cp, em = emulated_gpu
    x = cp.ones(4)
    stream = capturing(cp)
    with stream:
        stream.begin_capture()
        with pytest.raises(em.CaptureViolation, match="during stream capture"):
            x * 2  # a temporary: an allocation the graph would replay into freed memory
        with pytest.raises(em.CaptureViolation):
            stream.end_capture()


def test_a_free_during_capture_is_flagged(emulated_gpu):
    cp, em = emulated_gpu
    stream = capturing(cp)
    with stream:
        doomed = cp.ones(1000)  # a block of the capturing stream's pool
        stream.begin_capture()
        del doomed
        gc.collect()
        with pytest.raises(em.CaptureViolation, match="pool free of 8000 bytes"):
            stream.end_capture()


@pytest.mark.parametrize("sync", ["float", "stream", "asnumpy", "event", "bool"])
def test_a_host_synchronisation_during_capture_is_flagged(emulated_gpu, sync):
    cp, em = emulated_gpu
    x = cp.ones(3)
    stream = capturing(cp)
    event = cp.cuda.Event()
    event.record(stream)
    actions = {"float": lambda: float(x[0]), "stream": stream.synchronize,
               "asnumpy": lambda: cp.asnumpy(x), "event": event.synchronize,
               "bool": lambda: bool(x[0])}
    with stream:
        stream.begin_capture()
        with pytest.raises(em.CaptureViolation, match="host synchronisation"):
            actions[sync]()
        with pytest.raises(em.CaptureViolation):
            stream.end_capture()


def test_a_replay_into_memory_freed_after_capture_is_flagged(emulated_gpu):
    cp, em = emulated_gpu
    gpu = gpu_backend("fused").open_run().backend  # a run: its scalars outlive the capture
    a = cp.ones((4, 3))
    out = cp.empty((4, 3))
    gpu.act_grad(a, a, "tanh", out)  # warm-up: kernels loaded, the run's scalars made
    stream = capturing(cp)
    with stream:
        stream.begin_capture()
        gpu.act_grad(a, a, "tanh", out)
        graph = stream.end_capture()
        graph.launch(stream)  # fine while `out` lives
        del out
        gc.collect()
        with pytest.raises(em.CaptureViolation, match="freed after capture"):
            graph.launch(stream)


def test_a_planted_temporary_in_a_captured_step_is_flagged(emulated_gpu, monkeypatch):
    """A step that makes a temporary (``decay * w`` computed eagerly) cannot be captured."""
    cp, em = emulated_gpu
    from gpumlp.backends.cuda.backend import CupyBackend

    original = CupyBackend.weight_grads

    def with_temporary(self, a_prev, h, dw, db, w=None, decay=0.0):
        scaled = w * decay  # the hazard: an allocation inside the captured step
        return original(self, a_prev, h, dw, db, scaled, 1.0 if decay else 0.0)

    monkeypatch.setattr(CupyBackend, "weight_grads", with_temporary)
    X, T = data()
    trainer = make_trainer(gpu_backend(), graph="on")
    with pytest.raises(em.CaptureViolation, match="during stream capture"):
        trainer.run_epoch(cp.asarray(X), cp.asarray(T))


def test_capture_and_replays_leave_the_pool_unchanged(emulated_gpu):
    cp, _ = emulated_gpu
    X, T = data()
    trainer = make_trainer(gpu_backend(), graph="on")
    X_d, T_d = cp.asarray(X), cp.asarray(T)
    trainer.run_epoch(X_d, T_d)
    runner = trainer.step_graphs
    pool = cp.get_default_memory_pool()
    gc.collect()

    def pool_state():
        runner.synchronize()
        return pool.used_bytes(), pool.total_bytes(), pool.n_allocations, pool.n_frees

    before = pool_state()
    with runner.on_stream():
        graph = runner._capture(runner.batch, 2, runner.loss_full)
    assert pool_state() == before, "capture allocated or freed pool memory"
    for _ in range(2):
        runner.run_steps(2)
        with runner.on_stream():
            runner._set_device_state(0)  # the graph's two steps start at the first row
            graph.launch(runner.stream)
    assert pool_state() == before, "replays allocated or freed pool memory"


def test_split_k_scratch_is_never_shared_between_models_or_threads(emulated_gpu):
    """A split-K GEMM's workspace and tile counters are written by every launch: shared by
    two runners (or threads, or streams) they would race.  Each run (a recording runner's,
    an eager epoch's in any thread) owns its own, recording or not; the same run gets the
    same buffers (captured graphs keep their addresses), and closing it gives them back."""
    from gpumlp.backends.cuda import plan as gemm_plan

    gpu = gpu_backend()
    plan = gemm_plan.choose("gemm_bias_act", "float32", 256, 256, 784, splits=4)
    runs = [gpu.open_run(np.float32) for _ in range(2)]
    owned = []
    for run in runs:
        with run.recording(None):
            owned.append(run.backend._scratch(plan, np.float32))
        assert run.backend._scratch(plan, np.float32)[0] is owned[-1][0]  # eager: the same
    other = []

    def eager_epoch():
        with gpu.open_run(np.float32) as run:
            other.append(run.backend._scratch(plan, np.float32))
            assert run.nbytes() > 0
        assert run.nbytes() == 0

    thread = threading.Thread(target=eager_epoch)
    thread.start()
    thread.join()
    owned += other
    workspaces = {id(workspace) for workspace, _ in owned}
    counters = {id(counter) for _, counter in owned}
    assert len(workspaces) == len(counters) == 3
