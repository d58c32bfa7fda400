"""The shape of a captured training step: node count, critical path and parallel branches
(gpumlp/graph.py with gpumlp/backends/capture_paths.py), on the emulated CuPy, which records
multi-stream captures as CUDA does and refuses data races between parallel branches."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from gpumlp import kernels
from gpumlp.backends import capture_paths
from gpumlp.backends.cublas_direct import DirectBlas
from gpumlp.network import Network
from gpumlp.optim import Adam
from gpumlp.training import Trainer

from conftest import load_support

emulated = load_support("emulated_cupy")
emulated_cublas = load_support("emulated_cublas")


def captured_step(cp, rows=64):
    from gpumlp.backends.cupy_backend import CupyBackend

    backend = CupyBackend(gemm_path="fused")
    net = Network([12, 16, 8, 3], activation="relu", backend=backend, seed=0,
                  dtype=np.float64)
    trainer = Trainer(net, Adam(backend, net.params, 1e-2), batch_size=16, alpha=1e-3,
                      dropout=0.25, seed=0, cuda_graph="on")
    rng = np.random.default_rng(6)
    X, T = rng.normal(size=(rows, 12)), np.eye(3)[rng.integers(0, 3, rows)]
    trainer.run_epoch(cp.asarray(X), cp.asarray(T))
    return trainer._graph_runner[1]


@pytest.mark.kernels
def test_weight_gradients_run_beside_the_backward_chain(cp, monkeypatch):
    # A 3-layer step: one gather of the batch (which also moves the step state on), the L2
    # term of each of the 3 layers (alpha > 0), 3 forward GEMMs, the loss, 2 backward and 3
    # weight-gradient GEMMs and the optimizer: 14 nodes.  The weight gradients form a branch
    # beside the backward chain, so only the first layer's lies on the critical path:
    # gather + L2 3 + forward 3 + loss + backward 2 + first weight gradient + Adam = 12.
    runner = captured_step(cp)
    one = runner.graph_one
    assert len(one.launches) == 14
    assert one.critical_path() == 12
    assert len(runner.graph_many.launches) == 14 * runner.steps_per_graph
    assert runner.graph_many.critical_path() == 12 * runner.steps_per_graph
    names = [node[0].name for node in one.launches]
    deps = one.launches.deps
    for i, name in enumerate(names):
        if name == "gemm_weight_grads" and names[i + 1] == "gemm_backprop_act":
            assert i not in one.launches.ancestors(deps[i + 1])  # truly parallel
    # The same step captured on one stream is a chain: every node on the critical path.
    monkeypatch.setattr(capture_paths, "weight_grads_beside",
                        lambda main, side: contextlib.nullcontext())
    chain = captured_step(cp).graph_one
    assert len(chain.launches) == 14 and chain.critical_path() == 14


@pytest.mark.kernels
def test_parallel_step_trains_like_the_eager_step(cp):
    from gpumlp.backends.cupy_backend import CupyBackend

    rng = np.random.default_rng(7)
    X, T = rng.normal(size=(70, 12)), np.eye(3)[rng.integers(0, 3, 70)]
    trainers = []
    for mode in ("on", "off"):
        backend = CupyBackend(gemm_path="fused")
        net = Network([12, 16, 8, 3], backend=backend, seed=0, dtype=np.float64)
        trainer = Trainer(net, Adam(backend, net.params, 1e-2), batch_size=16, alpha=1e-3,
                          dropout=0.25, seed=0, cuda_graph=mode)
        for _ in range(2):
            trainer.run_epoch(cp.asarray(X), cp.asarray(T))
        trainers.append(trainer)
    np.testing.assert_allclose(trainers[0].network.get_flat_params(),
                               trainers[1].network.get_flat_params(), rtol=1e-10, atol=1e-12)


@pytest.fixture
def blas(cp):
    return DirectBlas(cp, emulated_cublas.EmulatedBlas(emulated), workspace_bytes=1 << 12)


def test_a_race_between_parallel_branches_is_refused(cp, blas):
    main, side = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    x, mid, out = cp.ones((4, 4), np.float32), cp.empty((4, 4), np.float32), cp.empty(
        (4, 4), np.float32)
    for stream in (main, side):
        blas.prepare(stream)
    cp.cuda.Device().synchronize()
    with main:
        main.begin_capture()
        side.wait_event(main.record())  # fork before main writes `mid`
        blas.matmul(x, x, mid, main)
        with side:
            blas.matmul(mid, x, out, side)  # reads `mid` with nothing ordering the two
        main.wait_event(side.record())
        with pytest.raises(emulated.CaptureViolation, match="parallel branches"):
            main.end_capture()


def test_fork_that_is_not_joined_back_is_refused(cp, blas):
    main, side = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    x, out = cp.ones((4, 4), np.float32), cp.empty((4, 4), np.float32)
    for stream in (main, side):
        blas.prepare(stream)
    cp.cuda.Device().synchronize()
    with main:
        main.begin_capture()
        side.wait_event(main.record())
        with side:
            blas.matmul(x, x, out, side)
        with pytest.raises(emulated.CaptureViolation, match="not joined back"):
            main.end_capture()
    assert not side.is_capturing()


def test_joined_fork_replays_in_dependency_order(cp, blas):
    main, side = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    x = cp.asarray(np.arange(16, dtype=np.float32).reshape(4, 4) / 10)
    mid, left, out = (cp.empty((4, 4), np.float32) for _ in range(3))
    for stream in (main, side):
        blas.prepare(stream)
    cp.cuda.Device().synchronize()
    with main:
        main.begin_capture()
        blas.matmul(x, x, mid, main)
        side.wait_event(main.record())  # fork after `mid` is written
        with side:
            blas.matmul(mid, x, left, side)
        blas.matmul(mid, mid, out, main)  # parallel to the side branch: reads only
        main.wait_event(side.record())
        blas.matmul(left, out, mid, main)  # after the join: may overwrite `mid`
        graph = main.end_capture()
        assert len(graph.launches) == 4 and graph.critical_path() == 3
        graph.launch(main)
        main.synchronize()
    h = np.arange(16, dtype=np.float32).reshape(4, 4) / 10
    m = h @ h
    np.testing.assert_allclose(mid.get(), (m @ h) @ (m @ m), rtol=1e-5)


@pytest.mark.kernels
def test_gather_batch_gathers_both_arrays_then_moves_the_step_on(host):
    """On the CPU build of the kernel, with several blocks (the last one advances)."""
    rng = np.random.default_rng(9)
    X, T = rng.normal(size=(50, 12)), rng.normal(size=(50, 3))
    perm = rng.permutation(50).astype(np.int64)
    start, base = np.array(4, np.int64), np.array(30, np.int64)
    step, done = np.array(7, np.int32), np.array(0, np.int32)
    rows = 40
    grid, block = kernels.launch_config("gather_batch", rows * (12 + 3))
    assert grid[0] > 1
    for launch in range(2):
        first = int(start)
        xb, tb = np.full((rows, 12), np.nan), np.full((rows, 3), np.nan)
        if launch == 1:
            perm[:] = np.roll(perm, 1)
            start[...] = 0
            first = 0
        host.launch("gather_batch", np.float64, grid, block, xb=xb, tb=tb, x=X, t=T,
                    perm=perm, start=start, rows=np.int64(rows), x_cols=np.int64(12),
                    t_cols=np.int64(3), counter_base=base,
                    counters_per_step=np.int64(3), step=step, blocks_done=done)
        np.testing.assert_array_equal(xb, X[perm[first:first + rows]])
        np.testing.assert_array_equal(tb, T[perm[first:first + rows]])
        assert int(start) == first + rows and int(done) == 0
    assert int(base) == 36 and int(step) == 9
