"""``solver="lbfgs"``: SciPy's L-BFGS-B over the flat parameter buffer, as scikit-learn."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import gpumlp
from gpumlp.lbfgs import minimize_lbfgs
from gpumlp.network import Network

scipy_optimize = pytest.importorskip("scipy.optimize")


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 4))
    y = (X[:, 0] * X[:, 1] > 0).astype(int)
    return X, y


def lbfgs(cls=gpumlp.MLPClassifier, **params):
    options = dict(hidden_layer_sizes=(16,), solver="lbfgs", backend="numpy", random_state=0,
                   dtype="float64", max_iter=300)
    options.update(params)
    return cls(**options)


def test_lbfgs_learns_a_nonlinear_boundary(data):
    X, y = data
    model = lbfgs().fit(X, y)
    assert model.score(X, y) > 0.95
    assert 0 < model.n_iter_ <= 300 and np.isfinite(model.loss_)
    regressor = lbfgs(gpumlp.MLPRegressor, max_iter=2000).fit(X, X[:, 0] * X[:, 1])
    assert regressor.score(X, X[:, 0] * X[:, 1]) > 0.9


def test_objective_handed_to_scipy_is_the_regularised_loss_and_its_gradient(data, monkeypatch):
    X, y = data
    net = Network([4, 5, 1], activation="tanh", loss="sigmoid_bce", dtype=np.float64,
                  backend="numpy", seed=1)
    T = y[:, None].astype(float)
    seen = {}

    def record(fun, x0, **kwargs):  # keep the objective, take no step
        seen["fun"], seen["options"] = fun, kwargs["options"]
        value, _ = fun(x0)
        return scipy_optimize.OptimizeResult(x=x0, fun=value, nit=0, nfev=1, status=0,
                                             message="recorded")

    monkeypatch.setattr(scipy_optimize, "minimize", record)
    minimize_lbfgs(net, X, T, alpha=0.5, max_iter=7, max_fun=11, tol=1e-3)
    assert seen["options"] == {"maxfun": 11, "maxiter": 7, "gtol": 1e-3}
    theta = net.get_flat_params()
    value, grad = seen["fun"](theta.copy())
    p = net.predict_output(X)  # probabilities
    data_loss = -np.mean(T * np.log(p) + (1 - T) * np.log(1 - p))
    l2 = 0.5 * 0.5 * sum(float((w ** 2).sum()) for w in net.weights) / len(X)
    assert value == pytest.approx(data_loss + l2, rel=1e-10)
    eps = 1e-6
    numeric = np.array([(seen["fun"](theta + eps * e)[0] - seen["fun"](theta - eps * e)[0])
                        / (2 * eps) for e in np.eye(theta.size)])
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-8)


def test_max_fun_bounds_the_evaluations_and_warns(data):
    X, y = data
    with pytest.warns(gpumlp.ConvergenceWarning, match="lbfgs failed to converge"):
        model = lbfgs(max_fun=5).fit(X, y)
    assert model.n_iter_ <= 5
    with pytest.warns(gpumlp.ConvergenceWarning, match="lbfgs failed to converge"):
        lbfgs(max_iter=2).fit(X, y)


def test_lbfgs_has_no_partial_fit_nor_loss_curve(data):
    X, y = data
    model = lbfgs()
    assert not hasattr(model, "partial_fit")
    model.fit(X, y)
    assert not hasattr(model, "loss_curve_")
    assert hasattr(lbfgs(solver="adam"), "partial_fit")


def test_lbfgs_warm_start_continues(data):
    X, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpumlp.ConvergenceWarning)
        model = lbfgs(max_iter=5, warm_start=True).fit(X, y)
        first = model.loss_
        model.fit(X, y)
    assert model.loss_ < first
    assert model.n_iter_ == 5  # this fit's iterations, as scikit-learn counts them


def test_lbfgs_model_saves_and_loads(data, tmp_path):
    X, y = data
    model = lbfgs(max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpumlp.ConvergenceWarning)
        model.fit(X, y)
    model.save(tmp_path / "lbfgs.npz")
    loaded = gpumlp.load(tmp_path / "lbfgs.npz")
    np.testing.assert_array_equal(loaded.predict_proba(X), model.predict_proba(X))
    assert loaded.n_iter_ == model.n_iter_ and loaded.loss_ == model.loss_


def test_non_finite_solution_leaves_the_model_unfitted(data):
    X, y = data
    model = lbfgs(alpha=0.0)
    with pytest.raises(gpumlp.DivergenceError):
        model.fit(X * 1e300, y)
    assert not hasattr(model, "network_")
