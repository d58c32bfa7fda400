"""Each backend operation alone, at the layer shapes of the protocol."""

import numpy as np
import pytest

from conftest import synced

SHAPES = [(784, 256), (256, 256), (256, 10), (784, 512), (512, 512), (512, 10)]


@pytest.fixture(params=SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def shape(request):
    return request.param


@pytest.fixture
def operands(backend, shape, batch):
    rng = np.random.default_rng(0)
    d_in, d_out = shape

    def arr(*dims):
        return backend.asarray(rng.normal(size=dims).astype(np.float32))

    return {"x": arr(batch, d_in), "w": arr(d_in, d_out), "b": arr(d_out),
            "h": arr(batch, d_out), "a": arr(batch, d_in), "out": arr(batch, d_out),
            "dx": arr(batch, d_in), "dw": arr(d_in, d_out), "db": arr(d_out)}


def test_affine_relu(benchmark, backend, operands):
    o = operands
    benchmark(synced(backend, lambda: backend.affine_act(o["x"], o["w"], o["b"], "relu",
                                                         o["out"])))


def test_backprop_hidden_relu(benchmark, backend, operands):
    o = operands
    benchmark(synced(backend, lambda: backend.backprop_hidden(o["h"], o["w"], o["a"], "relu",
                                                              o["dx"])))


def test_weight_grads(benchmark, backend, operands):
    o = operands
    benchmark(synced(backend, lambda: backend.weight_grads(o["x"], o["h"], o["dw"], o["db"])))


def test_softmax_xent(benchmark, backend, batch):
    rng = np.random.default_rng(0)
    z = backend.asarray(rng.normal(size=(batch, 10)).astype(np.float32))
    t = backend.asarray(np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)])
    h = backend.empty((batch, 10), np.float32)
    benchmark(synced(backend, lambda: backend.softmax_xent(z, t, h)))


@pytest.mark.parametrize("n_params", [269_322, 669_706], ids=["mlp-256", "mlp-512"])
def test_adam_update(benchmark, backend, n_params):
    rng = np.random.default_rng(0)
    p, g = (backend.asarray(rng.normal(size=n_params).astype(np.float32)) for _ in range(2))
    m, v = backend.zeros(n_params, np.float32), backend.zeros(n_params, np.float32)
    benchmark(synced(backend, lambda: backend.adam_step(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 1)))
