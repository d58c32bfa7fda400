"""gpumlp.Perceptron as a drop-in for scikit-learn's: the same parameters and defaults, the
same fits (coefficients, ``n_iter_``, ``t_``) for every option whose randomness is shared,
and the same accuracy where it is not (the early-stopping split)."""

from __future__ import annotations

import contextlib
import inspect
import pickle
import warnings

import numpy as np
import pytest

import gpumlp
from gpumlp import ConvergenceWarning, Perceptron, linear_sgd

sklearn_linear = pytest.importorskip("sklearn.linear_model")
datasets = pytest.importorskip("sklearn.datasets")
sparse = pytest.importorskip("scipy.sparse")
model_selection = pytest.importorskip("sklearn.model_selection")
SklearnPerceptron = sklearn_linear.Perceptron


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits(return_X_y=True)


@pytest.fixture(scope="module")
def iris():
    return datasets.load_iris(return_X_y=True)


def assert_same_fit(ours, theirs):
    np.testing.assert_allclose(ours.coef_, theirs.coef_, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.intercept_, theirs.intercept_, rtol=1e-12, atol=1e-12)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.t_ == theirs.t_
    np.testing.assert_array_equal(ours.classes_, theirs.classes_)
    assert ours.n_features_in_ == theirs.n_features_in_
    assert ours.coef_.shape == theirs.coef_.shape
    assert ours.intercept_.shape == theirs.intercept_.shape


# ------------------------------------------------------------------------- parameters
def test_parameters_and_defaults_are_scikit_learns():
    ours, theirs = Perceptron().get_params(), SklearnPerceptron().get_params()
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        assert ours[name] == value and type(ours[name]) is type(value), name
    # keyword-only, as scikit-learn's
    kinds = {p.kind for name, p in inspect.signature(Perceptron).parameters.items()}
    assert kinds == {inspect.Parameter.KEYWORD_ONLY}


def test_set_params_and_clone_round_trip():
    base = pytest.importorskip("sklearn.base")
    model = Perceptron(penalty="elasticnet", class_weight={0: 2.0}, warm_start=True)
    assert base.clone(model).get_params() == model.get_params()


@pytest.mark.parametrize("name, value, message", [
    ("penalty", "l3", "penalty='l3' is not valid"),
    ("alpha", -1.0, r"alpha=-1.0 is out of range"),
    ("l1_ratio", 1.5, r"l1_ratio=1.5 is out of range"),
    ("max_iter", 0, "max_iter=0 must be an integer >= 1"),
    ("tol", -0.1, r"tol=-0.1 is out of range"),
    ("eta0", 0.0, r"eta0=0.0 is out of range"),
    ("validation_fraction", 1.0, r"validation_fraction=1.0 is out of range"),
    ("n_iter_no_change", 0, "n_iter_no_change=0 must be an integer >= 1"),
    ("n_jobs", 0, "n_jobs=0 is not valid"),
    ("class_weight", "even", "class_weight='even' is not valid"),
])
def test_bad_hyperparameters_name_the_argument(iris, name, value, message):
    X, y = iris
    with pytest.raises(ValueError, match=message):
        Perceptron(**{name: value}).fit(X, y)


def test_bad_types_and_class_weight_labels(iris):
    X, y = iris
    with pytest.raises(TypeError, match="shuffle must be True or False"):
        Perceptron(shuffle="yes").fit(X, y)
    with pytest.raises(TypeError, match="random_state"):
        Perceptron(random_state="seed").fit(X, y)
    with pytest.raises(ValueError, match="class_weight has label 7"):
        Perceptron(class_weight={7: 2.0}).fit(X, y)
    with pytest.raises(ValueError, match="early_stopping=True is not supported by partial_fit"):
        Perceptron(early_stopping=True).partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match="'balanced' is not supported by partial_fit"):
        Perceptron(class_weight="balanced").partial_fit(X, y, classes=[0, 1, 2])
    with pytest.raises(ValueError, match=r"coef_init has shape \(2, 4\)"):
        Perceptron().fit(X, y, coef_init=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"validation_fraction \(early_stopping\)=0.1 cannot "
                                         "hold out a stratified 1 of 4 samples"):
        Perceptron(early_stopping=True).fit(X[:4], [0, 0, 1, 1])


# ------------------------------------------------------- identical fits to scikit-learn
OPTIONS = [
    {},
    {"penalty": "l2"},
    {"penalty": "l1", "alpha": 1e-3},
    {"penalty": "elasticnet", "alpha": 1e-3, "l1_ratio": 0.5},
    {"penalty": "l2", "alpha": 0.2},  # the weight scale shrinks below 1e-9 and is folded in
    {"class_weight": "balanced"},
    {"class_weight": {1: 3.0, 2: 0.5}},
    {"shuffle": False},
    {"fit_intercept": False},
    {"tol": None, "max_iter": 7},
    {"random_state": 3, "n_iter_no_change": 2, "eta0": 0.1},
    {"n_jobs": 2},
    {"early_stopping": True},
    {"early_stopping": True, "validation_fraction": 0.3, "n_iter_no_change": 2, "tol": 0.01},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: repr(o) if o else "defaults")
@pytest.mark.parametrize("layout", ["dense", "sparse"])
def test_fit_equals_scikit_learns_multiclass(digits, options, layout):
    X, y = digits
    X, y = X[:600], y[:600]
    if layout == "sparse":
        X = sparse.csr_matrix(X)
    with _no_warning_check():
        ours = Perceptron(**options).fit(X, y)
        theirs = SklearnPerceptron(**options).fit(X, y)
    assert_same_fit(ours, theirs)
    np.testing.assert_array_equal(ours.predict(X), theirs.predict(X))


@pytest.mark.parametrize("options", OPTIONS[:8], ids=lambda o: repr(o) if o else "defaults")
def test_fit_equals_scikit_learns_binary(iris, options):
    X, y = iris
    labels = np.where(y == 2, "virginica", "other")
    options = {k: v for k, v in options.items() if k != "class_weight"} | (
        {"class_weight": {"virginica": 2.0}} if "class_weight" in options else {})
    with _no_warning_check():
        ours = Perceptron(**options).fit(X, labels)
        theirs = SklearnPerceptron(**options).fit(X, labels)
    assert_same_fit(ours, theirs)
    np.testing.assert_allclose(ours.decision_function(X), theirs.decision_function(X))


def test_sample_weight_warm_start_init_and_random_states_as_scikit_learn(digits):
    X, y = digits[0][:500], digits[1][:500]
    weights = np.random.default_rng(0).random(len(y))
    assert_same_fit(Perceptron().fit(X, y, sample_weight=weights),
                    SklearnPerceptron().fit(X, y, sample_weight=weights))
    ours, theirs = Perceptron(warm_start=True, max_iter=3, tol=None), SklearnPerceptron(
        warm_start=True, max_iter=3, tol=None)
    for _ in range(2):
        ours.fit(X, y)
        theirs.fit(X, y)
    assert_same_fit(ours, theirs)
    start = np.random.default_rng(1).normal(size=(10, X.shape[1]))
    assert_same_fit(Perceptron().fit(X, y, coef_init=start, intercept_init=np.ones(10)),
                    SklearnPerceptron().fit(X, y, coef_init=start, intercept_init=np.ones(10)))
    assert_same_fit(Perceptron(random_state=np.random.RandomState(5)).fit(X, y),
                    SklearnPerceptron(random_state=np.random.RandomState(5)).fit(X, y))
    np.random.seed(11)
    ours = Perceptron(random_state=None).fit(X, y)
    np.random.seed(11)
    assert_same_fit(ours, SklearnPerceptron(random_state=None).fit(X, y))


def test_partial_fit_counts_as_scikit_learn(digits):
    X, y = digits
    ours, theirs = Perceptron(), SklearnPerceptron()
    for chunk in np.array_split(np.arange(len(y)), 100):
        ours.partial_fit(X[chunk], y[chunk], classes=np.arange(10))
        theirs.partial_fit(X[chunk], y[chunk], classes=np.arange(10))
    assert ours.n_iter_ == theirs.n_iter_ == 1
    assert_same_fit(ours, theirs)


@pytest.mark.parametrize("cls", ["MLPClassifier", "MLPRegressor"])
def test_mlp_n_iter_after_partial_fit_as_scikit_learn(cls, iris):
    neural = pytest.importorskip("sklearn.neural_network")
    X, y = iris
    target = X[:, 0] if cls == "MLPRegressor" else y
    ours = getattr(gpumlp, cls)(hidden_layer_sizes=(4,), backend="numpy")
    theirs = getattr(neural, cls)(hidden_layer_sizes=(4,))
    extra = {} if cls == "MLPRegressor" else {"classes": [0, 1, 2]}
    for _ in range(100):
        ours.partial_fit(X, target, **extra)
        theirs.partial_fit(X, target, **extra)
    assert ours.n_iter_ == theirs.n_iter_ == 1
    assert ours.t_ == theirs.t_ == 100 * len(X)
    assert len(ours.loss_curve_) == len(theirs.loss_curve_) == 100


def test_stopping_rule_and_convergence_warning(digits):
    X, y = digits
    model = Perceptron(max_iter=1000).fit(X, y)
    assert model.converged_ and 5 < model.n_iter_ < 1000
    with pytest.warns(ConvergenceWarning, match="Maximum number of iteration"):
        capped = Perceptron(max_iter=3).fit(X, y)
    assert capped.n_iter_ == 3 and not capped.converged_
    assert capped.t_ == 1 + 3 * len(y)


def test_overflow_is_reported_with_its_epoch():
    X = np.array([[10.0], [-10.0]])
    with pytest.raises(ValueError, match=r"overflow occurred at epoch #1"):
        Perceptron(eta0=1e308).fit(X, [0, 1])


def test_verbose_prints_each_epoch(iris, capsys):
    X, y = iris
    Perceptron(verbose=1, max_iter=2, tol=None).fit(X, y == 2)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "-- Epoch 1" and out[3] == "-- Epoch 2"
    assert out[1].startswith("Norm: ") and ", T: 150, Avg. loss: " in out[1]
    assert ", T: 300, " in out[4]


# ---------------------------------------------------------------------- early stopping
def test_early_stopping_holds_out_a_stratified_set(digits):
    X, y = digits
    model = Perceptron(early_stopping=True, validation_fraction=0.2)
    mask = model._held_out(y, np.ones(len(y)))
    assert mask.sum() == int(np.ceil(0.2 * len(y)))
    share = np.bincount(y[mask], minlength=10) / np.bincount(y, minlength=10)
    assert np.all(np.abs(share - 0.2) < 0.02)
    fitted = model.fit(X, y)
    assert fitted.n_iter_ < 1000 and fitted.converged_
    # the held-out rows are never trained on: changing them changes nothing
    changed = X.copy()
    changed[mask] = np.random.default_rng(0).normal(size=changed[mask].shape) * 100
    one = Perceptron(early_stopping=True, validation_fraction=0.2, tol=None, max_iter=4)
    two = Perceptron(early_stopping=True, validation_fraction=0.2, tol=None, max_iter=4)
    np.testing.assert_array_equal(one.fit(X, y).coef_, two.fit(changed, y).coef_)


# ---------------------------------------------------------- accuracy and compiled epoch
@pytest.mark.parametrize("dataset", ["digits", "iris"])
@pytest.mark.parametrize("early_stopping", [False, True])
def test_accuracy_within_one_point_of_scikit_learn_over_five_seeds(request, dataset,
                                                                   early_stopping):
    X, y = request.getfixturevalue(dataset)
    ours, theirs = [], []
    for seed in range(5):
        split = model_selection.train_test_split(X, y, test_size=0.25, random_state=seed,
                                                 stratify=y)
        X_train, X_test, y_train, y_test = split
        options = dict(random_state=seed, early_stopping=early_stopping)
        with _no_warning_check():
            ours.append(Perceptron(**options).fit(X_train, y_train).score(X_test, y_test))
            theirs.append(SklearnPerceptron(**options).fit(X_train, y_train)
                          .score(X_test, y_test))
    assert abs(np.mean(ours) - np.mean(theirs)) <= 0.01, (ours, theirs)
    assert ours == theirs  # the same shuffles and split: the same models


def test_compiled_epoch_equals_the_python_reference():
    pytest.importorskip("numba")
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 7)) * (rng.random((40, 7)) < 0.6)
    y = np.where(rng.random(40) < 0.5, 1.0, -1.0)
    weights = rng.random(40)
    for layout in (X, sparse.csr_matrix(X)):
        rows = linear_sgd.RowData(layout, sparse.issparse(layout))
        results = []
        for epoch in (linear_sgd.epoch_function(), linear_sgd.run_epoch_python):
            w, q = np.zeros(7), np.zeros(7)
            state = linear_sgd.new_state(w, 0.0, 1.0)
            order = np.arange(40, dtype=np.int64)
            for _ in range(3):
                # elastic net (both penalty parts), class weights 1 and 2, the intercept
                epoch(rows.data, rows.indices, rows.indptr, rows.dense, y, weights, order,
                      12345, np.zeros(40, np.bool_), w, q, state, 3, 0.01, 0.3, 0.5, 1.0,
                      2.0, True, rows.intercept_decay, True)
            results.append((w, q, state, order))
        for compiled, python in zip(*results):
            np.testing.assert_array_equal(compiled, python)
    assert hasattr(linear_sgd.epoch_function(), "py_func")  # Numba compiled it


def test_saved_perceptron_keeps_t_and_a_class_weight_dict(tmp_path, iris):
    X, y = iris
    model = Perceptron(class_weight={0: 2.0, 2: 0.5}).fit(X, y)
    model.save(tmp_path / "p.npz")
    loaded = gpumlp.load(tmp_path / "p.npz")
    assert loaded.get_params() == model.get_params()
    assert loaded.t_ == model.t_ and loaded.n_iter_ == model.n_iter_
    np.testing.assert_array_equal(loaded.predict(X), model.predict(X))
    twin = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(twin.coef_, model.coef_)


@contextlib.contextmanager
def _no_warning_check():
    """Both libraries warn alike when max_iter caps a fit; that is not under test here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield
