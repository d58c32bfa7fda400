"""The worked examples of the course material the project grew from."""

import numpy as np
import pytest

from gpumlp import MLPClassifier, Perceptron
from gpumlp.network import Network
from gpumlp.optim import SGD

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
XOR_Y = np.array([0, 1, 1, 0])


def hard_limit_network(w1, b1, w2, b2):
    net = Network([2, 2, 1], activation="hard_limit", loss="squared_error",
                  output_activation="hard_limit", dtype=np.float64, backend="numpy")
    net.weights[0][...] = w1
    net.biases[0][...] = b1
    net.weights[1][...] = w2
    net.biases[1][...] = b2
    return net


def test_xor_with_bias_input_weights():
    # Rows are units, columns (bias input, x1, x2): W^h and W^o as the material gives them.
    w_hidden = np.array([[-0.5, -1, 1], [0.5, -1, 1]])
    w_out = np.array([0.5, 1, -1])
    net = hard_limit_network(w_hidden[:, 1:].T, w_hidden[:, 0], w_out[1:, None], w_out[0])
    assert net.predict_output(XOR_X).ravel().tolist() == XOR_Y.tolist()


def test_xor_with_separate_biases():
    net = hard_limit_network(np.array([[1, -1], [-1, 1]]), [-0.5, -0.5],
                             np.array([[1], [1]]), -0.5)
    assert net.predict_output(XOR_X).ravel().tolist() == XOR_Y.tolist()


def test_one_sgd_step_of_the_backprop_example():
    """x = [1, 1], y = 0, relu hidden, linear output, loss (y - a)^2, eta = 0.1."""
    net = Network([2, 2, 1], activation="relu", loss="squared_error", dtype=np.float64,
                  backend="numpy")
    net.weights[0][...] = np.ones((2, 2))
    net.biases[0][...] = 0
    net.weights[1][...] = np.ones((2, 1))
    net.biases[1][...] = 0
    x, y = np.array([[1.0, 1.0]]), np.array([[0.0]])
    net.loss_and_gradients(x, y, net.new_workspace(1))
    # Our squared error is (a - y)^2 / 2; the example's loss (y - a)^2 has twice its gradient.
    net.grads *= 2
    SGD(net.backend, net.params, learning_rate_init=0.1, momentum=0.0).step(net.params,
                                                                            net.grads)
    np.testing.assert_allclose(net.weights[0], 0.2 * np.ones((2, 2)))
    np.testing.assert_allclose(net.biases[0], [-0.8, -0.8])
    np.testing.assert_allclose(net.weights[1], [[-0.6], [-0.6]])
    np.testing.assert_allclose(net.biases[1], [-0.8])


@pytest.mark.parametrize("name, y", [("AND", [0, 0, 0, 1]), ("OR", [0, 1, 1, 1])])
def test_perceptron_learns_linearly_separable_gates(name, y):
    clf = Perceptron(random_state=0).fit(XOR_X, y)
    assert clf.converged_
    assert clf.predict(XOR_X).tolist() == y


@pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")  # fixed epoch budget
def test_perceptron_cannot_learn_xor_but_an_mlp_can():
    perceptron = Perceptron(max_iter=200, tol=None).fit(XOR_X, XOR_Y)
    assert not perceptron.converged_
    assert perceptron.score(XOR_X, XOR_Y) <= 0.75  # no line separates XOR
    X = np.tile(XOR_X, (25, 1))
    y = np.tile(XOR_Y, 25)
    mlp = MLPClassifier((8,), activation="tanh", learning_rate_init=0.05, max_iter=500,
                        random_state=0, backend="numpy", tol=0).fit(X, y)
    assert mlp.predict(XOR_X).tolist() == XOR_Y.tolist()


def planar_flower(m=400, seed=1):
    """The course's 400-point, two-class 'flower' set: petals of alternating labels."""
    rng = np.random.default_rng(seed)
    n = m // 2
    X = np.zeros((m, 2))
    y = np.zeros(m, dtype=int)
    for label in range(2):
        rows = slice(n * label, n * (label + 1))
        theta = np.linspace(label * 3.12, (label + 1) * 3.12, n) + rng.normal(size=n) * 0.2
        radius = 4 * np.sin(4 * theta) + rng.normal(size=n) * 0.2
        X[rows] = np.c_[radius * np.sin(theta), radius * np.cos(theta)]
        y[rows] = label
    return X, y


@pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")  # fixed epoch budget
def test_two_layer_tanh_sigmoid_classifier_on_planar_data():
    X, y = planar_flower()
    common = dict(solver="adam", learning_rate_init=0.05, max_iter=600, batch_size=400,
                  random_state=3, backend="numpy", dtype="float64", tol=0,
                  n_iter_no_change=600)
    mlp = MLPClassifier((4,), activation="tanh", **common).fit(X, y)
    assert mlp.out_activation_ == "logistic"
    assert mlp.score(X, y) >= 0.9  # the material reports about 90 %
    # A linear model (identity hidden layer) cannot separate the petals.
    linear = MLPClassifier((4,), activation="identity", **common).fit(X, y)
    assert linear.score(X, y) < 0.7
