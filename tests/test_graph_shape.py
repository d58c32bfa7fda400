"""The shape of a captured training step: node count, critical path and parallel branches
(gpumlp/backends/cuda/graphs.py with gpumlp/backends/cuda/routes.py), on the emulated CuPy, which records
multi-stream captures as CUDA does and refuses data races between parallel branches."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from gpumlp.backends.cuda import kernels, plan as gemm_plan
from gpumlp.backends.cuda.run import DeviceRun
from gpumlp.backends.cuda.cublas import DirectBlas
from gpumlp.network import Network
from gpumlp.optim import Adam
from gpumlp.training import Trainer

from conftest import load_support

emulated = load_support("emulated_cupy")
emulated_cublas = load_support("emulated_cublas")


def captured_step(cp, rows=64):
    from gpumlp.backends.cuda.backend import CupyBackend

    backend = CupyBackend(gemm_path="fused")
    net = Network([12, 16, 8, 3], activation="relu", backend=backend, seed=0,
                  dtype=np.float64)
    trainer = Trainer(net, Adam(backend, net.params, 1e-2), batch_size=16, alpha=1e-3,
                      dropout=0.25, seed=0, cuda_graph="on")
    rng = np.random.default_rng(6)
    X, T = rng.normal(size=(rows, 12)), np.eye(3)[rng.integers(0, 3, rows)]
    trainer.run_epoch(cp.asarray(X), cp.asarray(T))
    return trainer.step_graphs


@pytest.mark.kernels
def test_weight_gradients_run_beside_the_backward_chain(cp, monkeypatch):
    # A 3-layer step: one gather of the batch (which also moves the step state on), one L2
    # term over every layer's weights (alpha > 0), 2 forward GEMMs, the output layer's GEMM
    # with softmax + cross-entropy in its epilogue (3 classes: a block holds whole rows),
    # 2 backward and 3 weight-gradient GEMMs and the optimizer: 11 nodes.  The L2 term and
    # the weight gradients form a branch beside the forward and backward chain, so only the
    # first layer's weight gradient lies on the critical path:
    # gather + forward 3 (the loss fused) + backward 2 + first weight gradient + Adam = 8.
    runner = captured_step(cp)
    one = runner.graph_one
    assert len(one.launches) == 11
    assert one.critical_path() == 8
    assert len(runner.graph_many.launches) == 11 * runner.steps_per_graph
    assert runner.graph_many.critical_path() == 8 * runner.steps_per_graph
    names = [node[0].name for node in one.launches]
    deps = one.launches.deps
    for i, name in enumerate(names):
        if name == "gemm_weight_grads" and names[i + 1] == "gemm_backprop_act":
            assert i not in one.launches.ancestors(deps[i + 1])  # truly parallel
    assert names.count("gemm_softmax_xent") == 1 and "softmax_xent" not in names
    # The L2 term: one node, after the gather, parallel to the forward GEMMs and the loss
    # (which adds into the same accumulator, atomically), before the optimizer.
    assert names.count("add_weights_l2_loss") == 1
    l2 = names.index("add_weights_l2_loss")
    assert deps[l2] == frozenset({names.index("gather_batch")})
    for i, name in enumerate(names):
        if name in ("gemm_bias_act", "gemm_softmax_xent", "gemm_backprop_act"):
            assert l2 not in one.launches.ancestors(frozenset({i}))
            assert i not in one.launches.ancestors(frozenset({l2}))
    assert l2 in one.launches.ancestors(frozenset({names.index("adam_step")}))
    # The same step captured on one stream is a chain: every node on the critical path.
    monkeypatch.setattr(DeviceRun, "weight_grads_beside",
                        lambda run, main, side: contextlib.nullcontext())
    chain = captured_step(cp).graph_one
    assert len(chain.launches) == 11 and chain.critical_path() == 11


@pytest.mark.kernels
def test_parallel_step_trains_like_the_eager_step(cp):
    from gpumlp.backends.cuda.backend import CupyBackend

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


# ------------------------------------------------------------------- the step's L2 term
def l2_buffers(cp, dtype):
    """A 12-16-8-3 network's flat parameters and weight spans (biases set to NaN: a kernel
    that read one would show), with a NumPy copy."""
    net = Network([12, 16, 8, 3], seed=3, dtype=dtype, backend="numpy")
    for bias in net.biases:
        bias[...] = np.nan
    host = net.params.copy()
    return cp.asarray(host), host, net.weight_spans()


@pytest.mark.kernels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weights_l2_loss_adds_every_layers_squared_norm_once(cp, dtype):
    from gpumlp.backends import get_backend
    from gpumlp.backends.cuda.backend import CupyBackend
    from gpumlp.backends.cuda.selftest import atomic_sum_tolerance

    params, host, spans = l2_buffers(cp, dtype)
    assert len(spans) == 3 and sum(size for _, size in spans) == 12 * 16 + 16 * 8 + 8 * 3
    scale = 0.5 * 1e-3 / 16
    acc = cp.asarray(np.array(0.25, dtype))
    CupyBackend(gemm_path="fused").add_weights_l2_loss(params, spans, scale, acc)
    want = get_backend("numpy").add_weights_l2_loss(host, spans, scale,
                                                    np.array(0.25, dtype))
    weights = np.concatenate([host[o:o + s] for o, s in spans]).astype(np.float64)
    assert np.isfinite(want) and float(want) == pytest.approx(
        0.25 + scale * float(weights @ weights), rel=1e-6 if dtype == np.float32 else 1e-14)
    rel = atomic_sum_tolerance(dtype, "add_weights_l2_loss", (344,))
    assert float(acc) == pytest.approx(float(want), rel=rel)


def test_weights_l2_loss_refuses_spans_outside_the_parameters(cp):
    from gpumlp.backends import get_backend
    from gpumlp.backends.cuda.backend import CupyBackend

    params, host, spans = l2_buffers(cp, np.float64)
    for backend, p in ((CupyBackend(gemm_path="fused"), params),
                       (get_backend("numpy"), host)):
        acc = backend.zeros((), np.float64)
        with pytest.raises(ValueError, match=r"add_weights_l2_loss: span \(offset=360, "
                                             r"size=30\) does not lie inside the 371"):
            backend.add_weights_l2_loss(p, [*spans, (360, 30)], 0.1, acc)
        with pytest.raises(TypeError, match="spans must be a sequence of .offset, size."):
            backend.add_weights_l2_loss(p, [(0.5, 3)], 0.1, acc)


@pytest.mark.kernels
def test_weights_l2_loss_table_is_made_before_a_capture(cp):
    """The device span table is made outside capture (the warm-up); a capture that would
    have to make it says so instead of allocating inside the graph."""
    from gpumlp.backends.cuda.backend import CupyBackend

    params, _, spans = l2_buffers(cp, np.float64)
    run = CupyBackend(gemm_path="fused").open_run(np.float64)
    backend, acc = run.backend, cp.zeros((), np.float64)
    stream = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()
    with stream, run.recording(acc):
        stream.begin_capture()
        with pytest.raises(RuntimeError, match="span table .* not made before the capture"):
            backend.add_weights_l2_loss(params, spans, 0.1, acc)
        stream.end_capture()
        backend.add_weights_l2_loss(params, spans, 0.1, acc)  # the warm-up makes it
        stream.begin_capture()
        backend.add_weights_l2_loss(params, spans, 0.1, acc)
        assert len(stream.end_capture().launches) == 1


@pytest.mark.kernels
@pytest.mark.parametrize("captured", [False, True])
def test_parallel_atomic_adds_into_one_accumulator_are_not_a_race(cp, captured):
    """Two kernels that only atomicAdd into one accumulator may run at the same time on a
    GPU (the L2 term beside the loss kernel): neither the stream-order check nor the graph's
    branch check refuses them, and both sums arrive."""
    params, host, spans = l2_buffers(cp, np.float64)
    table = cp.asarray(np.asarray(spans, np.int64).reshape(-1))
    acc = cp.zeros((), np.float64)
    fn = kernels.get_kernel("add_weights_l2_loss", np.float64)
    grid, block = kernels.launch_config("add_weights_l2_loss", 344)
    main, side = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()
    with main:
        if captured:
            main.begin_capture()
        side.wait_event(main.record())
        for stream, scale in ((side, 1.0), (main, 2.0)):
            fn(grid, block, (acc, params, table, np.int64(3), np.float64(scale)),
               stream=stream)
        main.wait_event(side.record())
        if captured:
            graph = main.end_capture()
            assert graph.critical_path() == 1  # two parallel nodes
            graph.launch(main)
        weights = np.concatenate([host[o:o + s] for o, s in spans])
        assert float(acc) == pytest.approx(3 * float(weights @ weights), rel=1e-13)


@pytest.mark.kernels
@pytest.mark.parametrize("captured", [False, True])
def test_an_atomic_add_beside_a_plain_read_of_it_is_a_race(cp, captured):
    """An atomicAdd into memory that a parallel kernel reads plainly (here Adam reading the
    accumulator as its learning rate) is a race on a GPU: refused in both checks."""
    params, _, spans = l2_buffers(cp, np.float64)
    table = cp.asarray(np.asarray(spans, np.int64).reshape(-1))
    acc, step = cp.zeros((), np.float64), cp.ones((), np.int32)
    grads, m, v = (cp.zeros(params.shape, np.float64) for _ in range(3))
    l2 = kernels.get_kernel("add_weights_l2_loss", np.float64)
    adam = kernels.get_kernel("adam_step", np.float64)
    main, side = cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()
    with main:
        if captured:
            main.begin_capture()
        side.wait_event(main.record())
        l2(*kernels.launch_config("add_weights_l2_loss", 344),
           (acc, params, table, np.int64(3), np.float64(1.0)), stream=side)
        launch_adam = lambda: adam(*kernels.launch_config("adam_step", params.size),
                                   (grads, m, v, grads, np.int64(params.size), acc, step,
                                    np.float64(0.9), np.float64(0.999), np.float64(1e-8)))
        if not captured:
            with pytest.raises(emulated.StreamOrderViolation, match="updates atomically"):
                launch_adam()
            main.wait_event(side.record())
            return
        launch_adam()
        main.wait_event(side.record())
        with pytest.raises(emulated.CaptureViolation,
                           match="add_weights_l2_loss .* adam_step .* parallel branches"):
            main.end_capture()


def test_atomic_parameters_are_only_ever_atomically_added_to():
    """KernelSpec.atomic is a promise the emulation relies on: in each kernel's source, a
    parameter named there appears only as the address of an atomicAdd."""
    import re

    from gpumlp.backends.cuda.kernels import KERNELS, kernel_dir

    marked = {name: spec for name, spec in KERNELS.items() if spec.atomic}
    assert {"softmax_xent", "sigmoid_bce", "squared_error", "add_weights_l2_loss",
            "gemm_softmax_xent"} <= set(marked)
    for name, spec in marked.items():
        source = kernel_dir().joinpath(spec.source).read_text()
        head = re.search(rf"__global__ void\s+(?:__launch_bounds__\([^)]*\)\s+)?{name}\(",
                         source)
        body = source[head.start():]
        body = body[:body.index("\n}\n")]
        for param in spec.atomic:
            uses = re.findall(rf"[^\w]{param}\b", body)
            atomics = re.findall(rf"atomicAdd\({param},", body)
            assert len(uses) == len(atomics) + 1, (name, param)  # + its declaration


# ------------------------------------------- the output layer with its softmax + cross-entropy
@pytest.mark.kernels
@pytest.mark.parametrize("path", ["fused", "cublas", "auto"])
@pytest.mark.parametrize("n,k,m", [(37, 12, 10), (20, 9, 70), (20, 9, 130)])
def test_output_layer_fuses_softmax_xent_where_a_block_holds_its_rows(cp, path, n, k, m):
    """Eager affine_softmax_xent on the emulated GPU (2 SMs) against the NumPy backend: one
    gemm_softmax_xent launch for 10 classes and for 70 (a tile whose block holds whole rows,
    which the plan finds no slower here), the GEMM and the loss kernel for 130 (no tile holds
    a row).  Timing the two variants (``auto``) must not add the loss more than once."""
    from gpumlp.backends import get_backend
    from gpumlp.backends.cuda.backend import CupyBackend
    from gpumlp.backends.cuda.selftest import atomic_sum_tolerance

    rng = np.random.default_rng(13)
    x, w = rng.normal(size=(n, k)).astype(np.float32), rng.normal(size=(k, m)).astype(
        np.float32)
    b, t = rng.normal(size=m).astype(np.float32), np.eye(m, dtype=np.float32)[
        rng.integers(0, m, n)]
    h, z = np.empty((n, m), np.float32), np.empty((n, m), np.float32)
    want = float(get_backend("numpy").affine_softmax_xent(x, w, b, t, z, h))
    backend = CupyBackend(gemm_path=path)
    plan = gemm_plan.softmax_xent_plan(np.float32, n, k, m, 2)
    assert (plan is None) == (m == 130)  # no float32 tile holds 130 columns
    assert plan is None or kernels.GEMM_TILES[plan.tile][1] >= m  # whole rows per block
    fused = [kernels.get_kernel("gemm_softmax_xent", np.float32, tile=tile)
             for tile in kernels.gemm_tiles("gemm_softmax_xent", np.float32)]
    before = sum(kernel.launches for kernel in fused)
    h_d = cp.full((n, m), np.nan, np.float32)
    got = backend.affine_softmax_xent(*map(cp.asarray, (x, w, b, t)),
                                      cp.empty((n, m), np.float32), h_d)
    ran_fused = sum(kernel.launches for kernel in fused) > before
    assert ran_fused == (plan is not None and path != "cublas")
    rel = max(2e-5, atomic_sum_tolerance(np.float32, "softmax_xent", (n, m)))
    assert float(got) == pytest.approx(want, rel=rel)
    np.testing.assert_allclose(h_d.get(), h, rtol=2e-5, atol=2e-5 * np.abs(h).max())
