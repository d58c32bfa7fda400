"""save/load is exact whatever the parameters were set to after fit, and a parameter that the
fitted network would silently ignore is refused where it would be ignored (predict, a warm or
partial fit), in memory and after loading alike."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import gpumlp
from gpumlp import MLPClassifier, MLPRegressor

pytestmark = pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")

X = np.random.default_rng(0).normal(size=(60, 4))
Y = np.arange(60) % 3

#: Parameters that define the network, each with a value other than the fitted one.
NETWORK_PARAMS = {"hidden_layer_sizes": [(7,), (3, 2), 5], "activation": ["tanh", "logistic"],
                  "dtype": ["float64", np.float64], "precision": ["tf32"]}
#: Parameters that only steer training: any value set after fit is kept and applies.
TRAINING_PARAMS = {"alpha": [0.5], "max_iter": [7], "learning_rate_init": [0.01],
                   "batch_size": [16, "auto"], "random_state": [None, 9], "tol": [0.1],
                   "early_stopping": [True], "dropout": [0.25], "shuffle": [False],
                   "solver": ["sgd", "lbfgs"], "warm_start": [True], "init": ["he"]}


def fit(cls=MLPClassifier, **params):
    options = dict(hidden_layer_sizes=(4,), max_iter=3, backend="numpy", random_state=0)
    options.update(params)
    model = cls(**options)
    return model.fit(X, Y if cls is MLPClassifier else X[:, :2])


def changes():
    """Every single network or training parameter change, and pairs of network ones."""
    for name, values in {**NETWORK_PARAMS, **TRAINING_PARAMS}.items():
        for value in values:
            yield {name: value}
    for (a, va), (b, vb) in itertools.combinations(
            [(k, v[0]) for k, v in NETWORK_PARAMS.items()], 2):
        if {a, b} != {"dtype", "precision"}:  # tf32 with float64: refused, tested below
            yield {a: va, b: vb}


def outcome(call):
    """The call's result, or its error type and message: what must be the same twice."""
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - compared, not hidden
        return ("error", type(exc), str(exc))


def same(a, b):
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return a[1:] == b[1:]
    return np.array_equal(np.asarray(a[1]), np.asarray(b[1]))


def same_params(a, b):
    pa, pb = a.get_params(), b.get_params()
    assert pa.keys() == pb.keys()
    for key in pa:
        assert type(pa[key]) is type(pb[key]) and pa[key] == pb[key], (key, pa[key], pb[key])


@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
@pytest.mark.parametrize("change", list(changes()), ids=repr)
def test_set_params_after_fit_round_trips_exactly(tmp_path, cls, change):
    model = fit(cls)
    model.set_params(**change)
    model.save(tmp_path / "m.npz")  # never refused: the file holds what the model holds
    loaded = gpumlp.load(tmp_path / "m.npz")
    same_params(model, loaded)
    np.testing.assert_array_equal(loaded.network_.get_flat_params(),
                                  model.network_.get_flat_params())
    assert loaded.network_.structure() == model.network_.structure()
    for attr in ("n_iter_", "t_", "n_features_in_", "n_outputs_", "n_layers_",
                 "out_activation_", "loss_"):
        assert getattr(loaded, attr) == getattr(model, attr), attr
    if model.solver != "lbfgs":
        assert loaded.history_ == model.history_ and loaded.loss_curve_ == model.loss_curve_
    predicted = outcome(lambda: model.predict(X))
    assert same(predicted, outcome(lambda: loaded.predict(X))), predicted
    if cls is MLPClassifier:
        assert same(outcome(lambda: model.predict_proba(X)),
                    outcome(lambda: loaded.predict_proba(X)))


@pytest.mark.parametrize("name", NETWORK_PARAMS)
def test_a_network_parameter_set_after_fit_is_refused_by_predict(name):
    model = fit()
    model.set_params(**{name: NETWORK_PARAMS[name][0]})
    with pytest.raises(ValueError, match=rf"cannot predict: {name}=.* was set after fit and "
                                         r"does not match the fitted network"):
        model.predict(X)
    model.fit(X, Y)  # a new fit applies it
    assert model.predict(X).shape == (60,)


@pytest.mark.parametrize("name", NETWORK_PARAMS)
def test_warm_start_refit_never_keeps_a_network_of_other_parameters(name):
    model = fit(warm_start=True)
    model.set_params(**{name: NETWORK_PARAMS[name][0]})
    before = model.network_.get_flat_params()
    with pytest.raises(ValueError, match=rf"cannot continue training .*{name}=.*fitted network"):
        model.fit(X, Y)
    np.testing.assert_array_equal(model.network_.get_flat_params(), before)  # untouched
    with pytest.raises(ValueError, match=rf"cannot continue training .*{name}="):
        model.partial_fit(X, Y)
    model.set_params(warm_start=False).fit(X, Y)
    assert model.predict(X).shape == (60,)


def test_hidden_layer_sizes_after_warm_start_refit_are_the_networks():
    model = fit(warm_start=True)
    model.set_params(hidden_layer_sizes=(4,)).fit(X, Y)  # same value: continues
    assert model.network_.sizes == [4, 4, 3]


def test_training_parameters_set_after_fit_survive_a_round_trip_and_apply(tmp_path):
    model = fit(warm_start=True)
    model.set_params(max_iter=2, alpha=0.25)
    model.save(tmp_path / "m.npz")
    loaded = gpumlp.load(tmp_path / "m.npz")
    assert loaded.n_iter_ == model.n_iter_ == 3
    epochs = len(loaded.loss_curve_)
    loaded.fit(X, Y)  # warm start: two more epochs
    assert loaded.n_iter_ == 2 and len(loaded.loss_curve_) == epochs + 2
    assert loaded.alpha == 0.25


def test_epochs_of_the_last_call_survive_a_round_trip(tmp_path):
    model = fit(warm_start=True)
    model.set_params(max_iter=2).fit(X, Y)
    model.save(tmp_path / "m.npz")
    loaded = gpumlp.load(tmp_path / "m.npz")
    assert loaded.n_iter_ == model.n_iter_ == 2 and loaded.t_ == model.t_


def test_unsavable_random_state_is_refused_at_save(tmp_path):
    model = fit(random_state=np.random.RandomState(0))
    with pytest.raises(TypeError, match=r"random_state=RandomState.*cannot be saved.*int or "
                                        r"None"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_loaded_model_continues_with_partial_fit(tmp_path):
    model = fit(solver="sgd")
    model.save(tmp_path / "m.npz")
    loaded = gpumlp.load(tmp_path / "m.npz")
    assert loaded._trainer_.optimizer is None  # nothing for training until it trains
    loaded.partial_fit(X, Y)
    assert loaded.n_iter_ == 1 and len(loaded.loss_curve_) == len(model.loss_curve_) + 1
    assert not np.array_equal(loaded.network_.get_flat_params(),
                              model.network_.get_flat_params())


def test_parameters_no_fit_would_accept_are_refused_at_save(tmp_path):
    model = fit()
    model.set_params(dtype="float64", precision="tf32")  # tf32 needs float32
    with pytest.raises(ValueError, match=r"cannot save: .*precision"):
        model.save(tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()
