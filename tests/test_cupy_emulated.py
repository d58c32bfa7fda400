"""The CuPy backend and the CUDA-graph path, run where there is no GPU.

CuPy is replaced by ``tests/kernels/emulated_cupy.py``: NumPy memory, kernels executed by the
CPU build of the same CUDA sources, and stream capture recorded and replayed.  This checks
what the real GPU run relies on — argument order and types of every launch, launch
geometry, the fused and cuBLAS paths, the fallback, and the graph path's device-side step
state — against the NumPy backend.  Device speed and CUDA's own behaviour still need a GPU
(``tests/test_gpu_*.py``).
"""

from __future__ import annotations

import numpy as np
import pytest

from gpumlp import config
from gpumlp.backends import get_backend
from gpumlp.dropout import Dropout
from gpumlp.network import Network
from gpumlp.optim import SGD, Adam
from gpumlp.training import Trainer

from conftest import load_support

pytestmark = pytest.mark.kernels

emulated = load_support("emulated_cupy")
CPU = get_backend("numpy")


def gpu_backend(path: str):
    from gpumlp.backends.cuda.backend import CupyBackend

    return CupyBackend(gemm_path=path)


def close(got, want, dtype):
    tol = 2e-5 if dtype == np.float32 else 1e-12
    got = np.asarray(got)
    assert np.isfinite(got).all(), "an output element was not written"
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(1.0, np.abs(want).max()))


ACTS = ["relu", "tanh", "leaky_relu", "sigmoid", "identity"]
DROPS = [None, Dropout(keep=0.8, seed=5, counter=9)]
# Every activation on the fused path in both dtypes; the cuBLAS and measured ("auto") paths
# share the epilogue kernels, so two activations cover their own code.
CASES = ([("fused", dtype, act, drop) for dtype in (np.float32, np.float64) for act in ACTS
          for drop in DROPS]
         + [(path, np.float32, act, drop) for path in ("cublas", "auto")
            for act in ("relu", "tanh") for drop in DROPS])


@pytest.mark.parametrize("path, dtype, act, drop", CASES)
def test_backend_operations_match_numpy(cp, path, dtype, act, drop):
    gpu = gpu_backend(path)
    rng = np.random.default_rng(1)
    n, k, m = 37, 19, 23
    x, w, b = (rng.normal(size=s).astype(dtype) for s in ((n, k), (k, m), (m,)))
    a = CPU.affine_act(x, w, b, act, np.empty((n, m), dtype), drop)
    a_d = gpu.affine_act(cp.asarray(x), cp.asarray(w), cp.asarray(b), act,
                         cp.full((n, m), np.nan, dtype), drop)
    close(a_d, a, dtype)
    h_next, w_next = rng.normal(size=(n, 7)).astype(dtype), rng.normal(size=(m, 7)).astype(dtype)
    h = CPU.backprop_hidden(h_next, w_next, a, act, np.empty((n, m), dtype), drop)
    h_d = gpu.backprop_hidden(cp.asarray(h_next), cp.asarray(w_next), cp.asarray(a), act,
                              cp.full((n, m), np.nan, dtype), drop)
    close(h_d, h, dtype)
    dw, db = np.empty((k, m), dtype), np.empty(m, dtype)
    CPU.weight_grads(x, h, dw, db, w, 0.01)
    dw_d, db_d = cp.full((k, m), np.nan, dtype), cp.full(m, np.nan, dtype)
    gpu.weight_grads(cp.asarray(x), cp.asarray(h), dw_d, db_d, cp.asarray(w), 0.01)
    close(dw_d, dw, dtype)
    close(db_d, db, dtype)


@pytest.mark.parametrize("loss", ["softmax_xent", "sigmoid_bce", "squared_error"])
def test_losses_accumulate_on_the_device(cp, loss):
    gpu = gpu_backend("fused")
    rng = np.random.default_rng(2)
    z = rng.normal(size=(29, 10)).astype(np.float32) * 3
    t = (np.eye(10)[rng.integers(0, 10, 29)] if loss == "softmax_xent"
         else rng.uniform(size=(29, 10))).astype(np.float32)
    h = np.empty_like(z)
    want = float(getattr(CPU, loss)(z, t, h))
    h_d = cp.full(z.shape, np.nan, np.float32)
    got = getattr(gpu, loss)(cp.asarray(z), cp.asarray(t), h_d)
    assert float(got) == pytest.approx(want, rel=1e-5)
    close(h_d, h, np.float32)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
def test_optimizer_steps_match_numpy(cp, solver):
    gpu = gpu_backend("fused")
    rng = np.random.default_rng(3)
    p, g = rng.normal(size=1001), rng.normal(size=1001)
    state = [np.zeros(1001), np.zeros(1001)]
    p_d, g_d = cp.asarray(p), cp.asarray(g)
    state_d = [cp.zeros(1001), cp.zeros(1001)]
    for step in (1, 2, 3):
        if solver == "adam":
            CPU.adam_step(p, g, *state, 0.01, 0.9, 0.999, 1e-8, step)
            gpu.adam_step(p_d, g_d, *state_d, 0.01, 0.9, 0.999, 1e-8, step)
        else:
            CPU.sgd_step(p, g, state[0], 0.01, 0.9, True)
            gpu.sgd_step(p_d, g_d, state_d[0], 0.01, 0.9, True)
    close(p_d, p, np.float64)


def test_disabled_kernels_fall_back_to_generic_code(cp, monkeypatch):
    monkeypatch.setenv("GPUMLP_KERNELS", "off")
    config.reset()
    gpu = gpu_backend("auto")
    assert not gpu.use_kernels
    rng = np.random.default_rng(4)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in ((9, 4), (4, 3), (3,)))
    out = gpu.affine_act(cp.asarray(x), cp.asarray(w), cp.asarray(b), "tanh",
                         cp.empty((9, 3), np.float32))
    close(out, CPU.affine_act(x, w, b, "tanh", np.empty((9, 3), np.float32)), np.float32)


def make_trainer(backend, cuda_graph, solver, dropout):
    net = Network([12, 16, 8, 3], activation="relu", backend=backend, seed=0,
                  dtype=np.float64)
    optimizer = (Adam(backend, net.params, 1e-2) if solver == "adam"
                 else SGD(backend, net.params, 0.05, momentum=0.9))
    return Trainer(net, optimizer, batch_size=16, alpha=1e-3, dropout=dropout, seed=0,
                   cuda_graph=cuda_graph)


def summed_loss_tolerance(dtype, batches, batch, classes):
    """Relative tolerance of an epoch loss summed on the device by ``atomicAdd``.

    Each batch adds its data loss and its L2 term into the accumulator block by block, in
    another order than the eager path's sum (in a graph the two kernels even run at the same
    time): each batch's share is off by at most :func:`~gpumlp.selftest.atomic_sum_tolerance`
    (the data-loss kernel's blocks dominate; the one L2 kernel's single block over these
    344 small weights adds no more), and the epoch mean sums ``batches`` such shares."""
    from gpumlp.backends.cuda.selftest import atomic_sum_tolerance

    return batches * atomic_sum_tolerance(dtype, "softmax_xent", (batch, classes))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_graph_epoch_loss_adds_each_batch_l2_as_eager(cp, dtype):
    """With alpha > 0, a batch's loss carries 0.5 alpha sum ||W||^2 / rows from the weights it
    starts with (scikit-learn's loss_curve_): the graph path must report what eager does."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(70, 12))  # 4 full batches of 16 and a partial one of 6
    T = np.eye(3)[rng.integers(0, 3, 70)]

    def trainer(backend, cuda_graph):
        net = Network([12, 16, 8, 3], activation="relu", backend=backend, seed=1, dtype=dtype)
        return Trainer(net, SGD(backend, net.params, 0.2, momentum=0.9), batch_size=16,
                       alpha=0.5, seed=0, cuda_graph=cuda_graph)

    eager, graph = trainer(gpu_backend("fused"), "off"), trainer(gpu_backend("fused"), "on")
    reference = trainer(CPU, "off")
    for _ in range(3):
        eager.run_epoch(cp.asarray(X, dtype), cp.asarray(T, dtype))
        graph.run_epoch(cp.asarray(X, dtype), cp.asarray(T, dtype))
        reference.run_epoch(X.astype(dtype), T.astype(dtype))
    assert graph.step_graphs is not None  # the epochs were replayed, not run eagerly
    # The weights move a lot per step here (alpha 0.5, lr 0.2), so end-of-epoch weights would
    # give an L2 term far outside this tolerance.
    rel = summed_loss_tolerance(dtype, batches=5, batch=16, classes=3)
    assert graph.history.loss == pytest.approx(eager.history.loss, rel=rel)
    assert reference.history.loss == pytest.approx(eager.history.loss, rel=max(rel, 1e-5)
                                                    if dtype == np.float32 else rel)


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_graph_epochs_equal_eager_epochs(cp, solver, dropout):
    rng = np.random.default_rng(5)
    X = rng.normal(size=(70, 12))  # 4 full batches of 16 and a partial one of 6
    T = np.eye(3)[rng.integers(0, 3, 70)]
    eager = make_trainer(gpu_backend("fused"), "off", solver, dropout)
    graph = make_trainer(gpu_backend("fused"), "on", solver, dropout)
    reference = make_trainer(CPU, "off", solver, dropout)
    for _ in range(2):
        for t in (eager, graph, reference):
            assert t.run_epoch(cp.asarray(X) if t is not reference else X,
                               cp.asarray(T) if t is not reference else T)
    # The epoch losses (data loss plus each batch's L2 term), not run_epoch's "go on" flags.
    rel = summed_loss_tolerance(np.float64, batches=5, batch=16, classes=3)
    assert graph.history.loss == pytest.approx(eager.history.loss, rel=rel)
    assert reference.history.loss == pytest.approx(eager.history.loss, rel=rel)
    runner = graph.step_graphs
    assert (runner.full_steps, runner.rest, runner.steps_per_graph) == (4, 6, 4)
    for other in (eager, reference):
        np.testing.assert_allclose(graph.network.get_flat_params(),
                                   other.network.get_flat_params(), rtol=1e-10, atol=1e-12)
    assert graph.step_count == eager.step_count == 10
    if solver == "adam":
        assert graph.optimizer.t == eager.optimizer.t == 10


def test_graph_replays_launch_only_recorded_kernels(cp):
    trainer = make_trainer(gpu_backend("fused"), "on", "adam", 0.1)
    rng = np.random.default_rng(6)
    X, T = cp.asarray(rng.normal(size=(64, 12))), cp.asarray(np.eye(3)[rng.integers(0, 3, 64)])
    trainer.run_epoch(X, T)
    runner = trainer.step_graphs
    # One step: the batch gather (which also moves the step state on), one L2 term over the
    # 3 layers' weights (alpha > 0, from the weights before the update), 3 forward GEMMs (the
    # output layer's with the loss in its epilogue), 3 weight-gradient and 2 backward GEMMs
    # and the optimizer: 11 launches, nothing else.
    assert len(runner.graph_one.launches) == 11
    assert len(runner.graph_many.launches) == 11 * runner.steps_per_graph
    names = [kernel.name for kernel, *_ in runner.graph_one.launches]
    assert names[0] == "gather_batch" and names[-1] == "adam_step"
    assert names[1] == "add_weights_l2_loss" and names.count("add_weights_l2_loss") == 1
    assert names.count("gemm_softmax_xent") == 1 and "softmax_xent" not in names


def test_capture_refuses_what_a_graph_cannot_hold(cp):
    gpu = gpu_backend("auto")
    stream = cp.cuda.Stream()
    with stream:
        stream.begin_capture()
        try:
            with pytest.raises(emulated.CaptureViolation, match="cuBLAS"):
                cp.matmul(np.ones((2, 2)), np.ones((2, 2)))
            with pytest.raises(emulated.CaptureViolation, match="allocation"):
                gpu.xp.zeros(3)
        finally:
            with pytest.raises(emulated.CaptureViolation, match="allocation"):
                stream.end_capture()  # the capture is invalidated, as CUDA invalidates it


@pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")  # fixed epoch budget
def test_estimator_on_the_emulated_gpu_uses_graphs(cp, monkeypatch):
    from gpumlp import MLPClassifier
    from gpumlp.backends.cuda.graphs import GraphStepRunner

    replayed = []
    run_epoch = GraphStepRunner.run_epoch
    monkeypatch.setattr(GraphStepRunner, "run_epoch",
                        lambda self, order: replayed.append(1) or run_epoch(self, order))

    rng = np.random.default_rng(7)
    X = rng.normal(size=(120, 6)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    clf = MLPClassifier((16,), max_iter=8, batch_size=40, learning_rate_init=0.05,
                        random_state=0, backend=gpu_backend("fused"), cuda_graph="on")
    clf.fit(cp.asarray(X), y)
    assert len(replayed) == clf.n_iter_ == 8
    assert clf._trainer_.step_graphs is None  # captured graphs are released with the buffers
    assert clf.score(X, y) > 0.9
    assert isinstance(clf.predict_proba(cp.asarray(X)), cp.ndarray)


def test_kernel_benchmark_times_every_variant(cp):
    from gpumlp.backends.cuda.kernel_bench import markdown, run_kernel_bench, speedups

    results = run_kernel_bench(shapes=((5, 3),), batches=(4,), repeats=2, min_ms=0.0)
    assert {(r["operation"], r["variant"]) for r in results} == {
        (op, v) for op in ("forward", "backward", "weight_grads")
        for v in ("fused", "cublas", "cupy")}
    rows = speedups(results)
    assert len(rows) == 3 and all(r["fused_vs_cupy"] > 0 for r in rows)
    assert "| forward | 5→3 | 4 |" in markdown(rows, results)


@pytest.mark.parametrize("cuda_graph", ["auto", "on", "off"])
def test_warm_up_compiles_every_source_a_default_fit_launches_from(cp, monkeypatch, cuda_graph):
    """``CupyBackend.warm_up()`` (called by the benchmark subjects before any timing) loads
    each kernel source once, and the sources it loads hold every kernel that a fit of the
    default recipe (ReLU, Adam, L2, dropout, softmax) and a prediction then launch: no
    compile is left for a timed repeat."""
    from gpumlp.backends.cuda import graph_auto, kernels

    monkeypatch.setattr(graph_auto, "VERDICTS", graph_auto.GraphVerdicts())
    loaded = []
    monkeypatch.setattr(kernels, "load_module", loaded.append)
    backend = gpu_backend("auto")
    backend.warm_up()
    assert len(loaded) == len(set(loaded)), f"a source compiled twice: {loaded}"
    launched = set()
    get_kernel = kernels.get_kernel

    def noted(kernel, *args, **kwargs):
        launched.add(kernels.KERNELS[kernel].source)
        return get_kernel(kernel, *args, **kwargs)

    monkeypatch.setattr(kernels, "get_kernel", noted)
    rng = np.random.default_rng(0)
    X = cp.asarray(rng.normal(size=(40, 6)).astype(np.float32))
    T = cp.asarray(np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)])
    net = Network([6, 16, 16, 3], activation="relu", backend=backend, seed=0)
    Trainer(net, Adam(backend, net.params, 1e-3), batch_size=16, alpha=1e-4, dropout=0.2,
            cuda_graph=cuda_graph).fit(X, T, 2)
    for _ in range(2):  # the second prediction is captured
        net.predict_output(X)
    assert launched and launched <= set(loaded), (
        f"sources launched from but not compiled by warm_up(): {sorted(launched - set(loaded))}")
