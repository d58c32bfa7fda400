"""Device state is owned by the run that made it and given back: after many fits of
different shapes (captured and eager) with predictions, and ``gpumlp.graph_pool.clear()``,
the device pool holds exactly the bytes, and exactly the cuBLAS/cuBLASLt handles live, that
it held before (emulated CuPy and cuBLAS).  Nothing is kept on the shared backend: no
per-thread eager scalars, split-K scratch or span tables."""

from __future__ import annotations

import gc

import numpy as np
import pytest

import gpumlp
from gpumlp.backends.cuda import graph_auto, routes
from gpumlp.backends.cuda.backend import CupyBackend
from gpumlp.network import Network
from gpumlp.optim import Adam
from gpumlp.training import Trainer

from conftest import load_support

emulated = load_support("emulated_cupy")
emulated_cublas = load_support("emulated_cublas")


@pytest.fixture
def blas_api(cp, monkeypatch):
    api = emulated_cublas.EmulatedBlas(emulated)
    monkeypatch.setattr(routes, "new_api", lambda: api)
    monkeypatch.setattr(graph_auto, "VERDICTS", graph_auto.GraphVerdicts())
    return api


def one_fit(cp, backend, shape, seed, cuda_graph):
    rows, hidden = shape
    rng = np.random.default_rng(seed)
    X = cp.asarray(rng.normal(size=(rows, 6)))
    T = cp.asarray(np.eye(3)[rng.integers(0, 3, rows)])
    net = Network([6, hidden, 3], backend=backend, seed=seed, dtype=np.float64)
    trainer = Trainer(net, Adam(backend, net.params, 1e-2), batch_size=8, alpha=1e-3,
                      dropout=0.1, seed=seed, cuda_graph=cuda_graph)
    trainer.fit(X, T, 2)
    for _ in range(2):  # the second prediction replays a captured forward
        net.predict_output(X)
    net.predict_output(X[: rows // 2])  # a slice: predicted eagerly, never captured


@pytest.mark.kernels
@pytest.mark.parametrize("cuda_graph, gemm_path", [
    ("on", "cublas"),  # captured GEMMs on cuBLAS(Lt): handles and workspaces made per run
    ("off", "fused"),  # eager steps on the fused GEMMs: split-K scratch, span tables, scalars
])
def test_twenty_fits_give_back_their_device_memory_and_handles(cp, blas_api, cuda_graph,
                                                               gemm_path):
    backend = CupyBackend(gemm_path=gemm_path)
    pool = cp.get_default_memory_pool()
    gc.collect()
    before = pool.used_bytes(), blas_api.live_handles()
    shapes = [(24 + 4 * (i % 5), 8 + 2 * (i % 4)) for i in range(20)]
    for i, shape in enumerate(shapes):
        one_fit(cp, backend, shape, i, cuda_graph)
    gc.collect()  # models of past fits: their captured forwards are collected
    gpumlp.graph_pool.clear()
    after = pool.used_bytes(), blas_api.live_handles()
    assert after == before, (
        f"device pool bytes {before[0]} -> {after[0]}, live cuBLAS handles {before[1]} -> "
        f"{after[1]} after 20 fits (cuda_graph={cuda_graph!r}, gemm_path={gemm_path!r})")


@pytest.mark.kernels
def test_operations_on_the_shared_backend_keep_nothing_on_it(cp):
    """An operation called on the shared backend itself (no run) runs in a run of its own,
    closed after the call: the step scalars and split-K scratch it needed are given back;
    a run keeps them until it closes."""
    backend = CupyBackend(gemm_path="fused")
    rng = np.random.default_rng(0)
    x, w, b = (cp.asarray(rng.normal(size=s)) for s in [(8, 512), (512, 8), (8,)])
    out = cp.empty((8, 8))
    p, g, m, v = (cp.asarray(rng.normal(size=100)) for _ in range(4))
    pool = cp.get_default_memory_pool()

    def operations(ops):
        ops.affine_act(x, w, b, "relu", out)  # K = 512 over one 8 x 8 tile: split-K
        ops.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 1)

    gc.collect()
    before = pool.used_bytes()
    operations(backend)
    assert pool.used_bytes() == before, (
        f"device pool bytes {before} -> {pool.used_bytes()} after two operations on the "
        "shared backend")
    with backend.open_run(np.float64) as run:
        operations(run.backend)
        assert run.nbytes() > 0 and pool.used_bytes() == before + run.nbytes()
    assert pool.used_bytes() == before


@pytest.mark.kernels
def test_a_run_collected_unclosed_gives_its_handles_back_outside_any_capture(cp, blas_api):
    """The finalizer is a safety net: a run nobody closed, collected while another stream
    captures (where destroying a handle is not allowed), destroys its handles at the next
    point outside a capture (another run's close, or graph_pool.clear())."""
    backend = CupyBackend(gemm_path="cublas")
    pool = cp.get_default_memory_pool()
    gc.collect()
    before = pool.used_bytes()
    run = backend.open_run(np.float64, streams=1)
    with run.streams[0]:
        assert run.library.blas(run.streams[0]) is not None  # handles bound, workspaces made
    assert blas_api.live_handles() == 2
    capturing = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()
    with capturing:
        capturing.begin_capture()
        del run
        gc.collect()  # the finalizer runs here, inside the capture: it only queues
        capturing.end_capture()
    assert blas_api.live_handles() == 2
    backend.open_run().close()
    assert (blas_api.live_handles(), pool.used_bytes()) == (0, before)


class _Stop(Exception):
    """Raised by a callback: the fit ends by an exception."""


@pytest.mark.kernels
@pytest.mark.parametrize("ending", ["max_iter", "callback", "exception", "interrupt"])
def test_an_eager_fit_opens_one_run_for_all_its_epochs_and_closes_it(cp, monkeypatch, ending):
    """The eager epochs of one fit share one run (its step scalars and split-K scratch are
    made once, not per epoch), closed however the fit ends: all its epochs, a callback that
    stops it, an exception or a KeyboardInterrupt from a callback."""
    backend = CupyBackend(gemm_path="fused")
    rng = np.random.default_rng(0)
    X = cp.asarray(rng.normal(size=(40, 6)))
    T = cp.asarray(np.eye(3)[rng.integers(0, 3, 40)])
    net = Network([6, 8, 3], backend=backend, seed=0, dtype=np.float64)
    epochs = 4

    def callback(epoch, history):
        if epoch == 2 and ending in ("exception", "interrupt"):
            raise _Stop if ending == "exception" else KeyboardInterrupt
        return ending == "callback" and epoch == 2

    trainer = Trainer(net, Adam(backend, net.params, 1e-2), batch_size=16, alpha=1e-3,
                      dropout=0.1, cuda_graph="off", callbacks=[callback])
    opened = []
    open_run = CupyBackend.open_run

    def counted_open_run(self, *args, **kwargs):
        opened.append(open_run(self, *args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(CupyBackend, "open_run", counted_open_run)
    if ending in ("exception", "interrupt"):
        with pytest.raises(_Stop if ending == "exception" else KeyboardInterrupt):
            trainer.fit(X, T, epochs)
    else:
        trainer.fit(X, T, epochs)
    assert trainer.history.n_iter == (epochs if ending == "max_iter" else 2)
    assert len(opened) == 1, (f"{len(opened)} runs opened by one fit of "
                              f"{trainer.history.n_iter} epochs; one fit has one run")
    assert opened[0].closed, f"the fit's run was left open (the fit ended by {ending})"
