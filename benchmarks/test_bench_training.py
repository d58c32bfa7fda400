"""Throughput of a whole training step and of inference at the protocol's shapes."""

import numpy as np

from conftest import random_batch, synced
from gpumlp.network import Network
from gpumlp.optim import Adam


def test_training_step(benchmark, backend, sizes, batch):
    net = Network(sizes, "relu", "softmax_xent", dtype=np.float32, backend=backend, seed=0)
    optimizer = Adam(backend, net.params, 1e-3)
    x, t = random_batch(backend, batch, sizes)
    ws = net.new_workspace(batch)

    def step():
        net.loss_and_gradients(x, t, ws)
        optimizer.step(net.params, net.grads)

    benchmark.extra_info["samples_per_call"] = batch
    benchmark(synced(backend, step))


def test_inference(benchmark, backend, sizes, batch):
    net = Network(sizes, "relu", "softmax_xent", dtype=np.float32, backend=backend, seed=0)
    x, _ = random_batch(backend, batch, sizes)
    ws = net.new_workspace(batch)
    probabilities = backend.empty((batch, sizes[-1]), np.float32)
    benchmark.extra_info["samples_per_call"] = batch
    benchmark(synced(backend, lambda: backend.softmax(net.forward(x, ws), probabilities)))
