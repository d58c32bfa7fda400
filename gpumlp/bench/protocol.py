"""The benchmark protocol: configurations, batch sizes and operation counts."""

from __future__ import annotations

#: Network shapes: 784 inputs (MNIST-sized), ReLU hidden layers, 10 classes.
CONFIGS: dict[str, list[int]] = {
    "mlp-256": [784, 256, 256, 10],
    "mlp-512": [784, 512, 512, 10],
}
FULL_BATCHES = (64, 256, 1024, 8192)
QUICK_BATCHES = (256, 1024)
#: Samples in the synthetic data pool; an epoch of the protocol is 60,000 samples.
POOL_SIZE = 60000
EPOCH_SAMPLES = 60000


def train_flops_per_sample(sizes: list[int]) -> int:
    """Multiply-adds x 2 of one training step per sample.

    Forward ``2 d_in d_out`` per layer, the weight gradient the same again, and the input
    gradient ``H W^T`` for every layer but the first (the data needs no gradient).
    """
    layers = list(zip(sizes[:-1], sizes[1:]))
    forward = sum(2 * a * b for a, b in layers)
    return 2 * forward + forward - 2 * layers[0][0] * layers[0][1]


def inference_flops_per_sample(sizes: list[int]) -> int:
    return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))
