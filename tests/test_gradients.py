"""Finite-difference checks of the analytic gradients (float64, central differences)."""

import numpy as np
import pytest

from gpumlp.network import Network

HIDDEN = ["identity", "relu", "leaky_relu", "sigmoid", "tanh"]
LOSSES = {"softmax_xent": 3, "sigmoid_bce": 2, "squared_error": 2}


def targets(rng, loss, n, k):
    if loss == "softmax_xent":
        return np.eye(k)[rng.integers(0, k, n)]
    if loss == "sigmoid_bce":
        return rng.integers(0, 2, (n, k)).astype(float)
    return rng.normal(size=(n, k))


def randomize_biases(net, rng):
    """Zero biases put a relu unit fed by a dead layer exactly on its kink (z = 0)."""
    for b in net.biases:
        b[:] = rng.uniform(0.05, 0.3, size=b.shape)


def numeric_gradient(net, x, t, ws, decay, eps=1e-6):
    """Central differences of the full objective (data loss + decay/2 ||W||^2)."""
    p0 = net.params.copy()
    grad = np.empty_like(p0)

    def objective():
        loss = float(net.loss_and_gradients(x, t, ws))
        return loss + 0.5 * decay * net.l2_penalty()

    for i in range(p0.size):
        net.params[:] = p0
        net.params[i] += eps
        plus = objective()
        net.params[:] = p0
        net.params[i] -= eps
        grad[i] = (plus - objective()) / (2 * eps)
    net.params[:] = p0
    return grad


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("activation", HIDDEN)
def test_backprop_matches_finite_differences(activation, loss, depth):
    rng = np.random.default_rng(depth * 31 + len(activation) + len(loss))
    k = LOSSES[loss]
    sizes = [4] + [5, 3, 4][: depth - 1] + [k]
    net = Network(sizes, activation=activation, loss=loss, dtype=np.float64,
                  backend="numpy", seed=depth)
    randomize_biases(net, rng)
    x = rng.normal(size=(6, 4)) * 1.5
    t = targets(rng, loss, 6, k)
    ws = net.new_workspace(6)
    net.loss_and_gradients(x, t, ws)
    analytic = net.grads.copy()
    numeric = numeric_gradient(net, x, t, ws, decay=0.0)
    scale = max(np.abs(numeric).max(), 1e-8)
    assert np.abs(analytic - numeric).max() / scale < 1e-6


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_l2_decay_gradient(loss):
    rng = np.random.default_rng(7)
    k = LOSSES[loss]
    net = Network([3, 4, k], activation="tanh", loss=loss, dtype=np.float64,
                  backend="numpy", seed=1)
    x, t = rng.normal(size=(5, 3)), targets(rng, loss, 5, k)
    ws = net.new_workspace(5)
    decay = 0.3
    net.loss_and_gradients(x, t, ws, decay=decay)
    analytic = net.grads.copy()
    numeric = numeric_gradient(net, x, t, ws, decay=decay)
    assert np.abs(analytic - numeric).max() / np.abs(numeric).max() < 1e-6


def test_squared_error_with_nonlinear_output():
    rng = np.random.default_rng(3)
    net = Network([3, 4, 2], activation="relu", loss="squared_error",
                  output_activation="sigmoid", dtype=np.float64, backend="numpy", seed=2)
    x, t = rng.normal(size=(5, 3)), rng.uniform(size=(5, 2))
    ws = net.new_workspace(5)
    net.loss_and_gradients(x, t, ws)
    analytic = net.grads.copy()
    numeric = numeric_gradient(net, x, t, ws, decay=0.0)
    assert np.abs(analytic - numeric).max() / np.abs(numeric).max() < 1e-6


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "leaky_relu"])
def test_dropout_gradient_for_fixed_mask(activation):
    """With the mask fixed (same seed and step), dropout is a linear map: FD still applies."""
    rng = np.random.default_rng(11)
    net = Network([4, 6, 5, 3], activation=activation, loss="softmax_xent",
                  dtype=np.float64, backend="numpy", seed=4)
    randomize_biases(net, rng)
    x, t = rng.normal(size=(7, 4)), targets(rng, "softmax_xent", 7, 3)
    ws = net.new_workspace(7)
    kwargs = dict(dropout=0.4, seed=1234, step=5)
    net.loss_and_gradients(x, t, ws, **kwargs)
    analytic = net.grads.copy()
    p0, eps = net.params.copy(), 1e-6
    numeric = np.empty_like(p0)
    for i in range(p0.size):
        net.params[:] = p0
        net.params[i] += eps
        plus = float(net.loss_and_gradients(x, t, ws, **kwargs))
        net.params[:] = p0
        net.params[i] -= eps
        numeric[i] = (plus - float(net.loss_and_gradients(x, t, ws, **kwargs))) / (2 * eps)
    net.params[:] = p0
    assert np.abs(analytic - numeric).max() / np.abs(numeric).max() < 1e-6
    # Some hidden units really were dropped (their incoming-weight gradients vanish per row).
    assert np.count_nonzero(ws.a[1] == 0) > 0
