"""Drop-in details: scikit-learn's exception and warning classes, any array in, targets a
classifier cannot learn, partial_fit's classes, batch_size clipping, the initialisations."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

import gpumlp
from gpumlp import exceptions, validation
from gpumlp.init import glorot_layers, initial_parameters
from gpumlp.network import Network


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    return X, (X[:, 0] > 0).astype(int)


def small(cls=gpumlp.MLPClassifier, **params):
    options = dict(hidden_layer_sizes=(6,), backend="numpy", random_state=0, max_iter=5)
    options.update(params)
    return cls(**options)


# -------------------------------------------------------------- exceptions and warnings
def test_sklearn_classes_when_sklearn_is_installed(data):
    sklearn_exceptions = pytest.importorskip("sklearn.exceptions")
    assert gpumlp.NotFittedError is sklearn_exceptions.NotFittedError
    assert gpumlp.ConvergenceWarning is sklearn_exceptions.ConvergenceWarning
    X, y = data
    with pytest.raises(sklearn_exceptions.NotFittedError, match="not fitted yet"):
        small().predict(X)
    with pytest.raises(sklearn_exceptions.NotFittedError):
        gpumlp.Perceptron().decision_function(X)
    with warnings.catch_warnings():  # a filter written for scikit-learn silences gpumlp's
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=sklearn_exceptions.ConvergenceWarning)
        small(max_iter=1).fit(X, y)


def test_own_classes_without_sklearn(monkeypatch, data):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # import sklearn now fails
    monkeypatch.setattr(exceptions, "_resolved", {})
    assert "sklearn" not in exceptions.NotFittedError.__module__
    assert issubclass(exceptions.NotFittedError, ValueError)
    assert issubclass(exceptions.NotFittedError, AttributeError)
    assert issubclass(exceptions.ConvergenceWarning, UserWarning)
    X, y = data
    with pytest.raises(exceptions.NotFittedError):
        small().predict(X)
    assert not hasattr(small(), "coefs_")  # an AttributeError: hasattr says no
    with pytest.warns(exceptions.ConvergenceWarning):
        small(max_iter=1).fit(X, y)


def test_importing_gpumlp_does_not_import_sklearn():
    code = "import sys, gpumlp; gpumlp.MLPClassifier(); print('sklearn' in sys.modules)"
    import subprocess
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------------------------------------- targets
def test_classifiers_reject_continuous_targets(data):
    X, _ = data
    y = X[:, 1] * 3.7
    for model in (small(), gpumlp.Perceptron()):
        with pytest.raises(ValueError, match="Unknown label type: continuous"):
            model.fit(X, y)
    with pytest.raises(ValueError, match="Unknown label type: continuous"):
        small().partial_fit(X, y, classes=[0, 1])
    with pytest.raises(ValueError, match="Unknown label type"):
        small().fit(X, np.stack([y, y], axis=1))
    # whole numbers in a float array are labels
    assert list(small().fit(X, (X[:, 0] > 0).astype(float)).classes_) == [0.0, 1.0]


def test_partial_fit_with_different_classes_raises(data):
    X, y = data
    for model in (small(), gpumlp.Perceptron()):
        model.partial_fit(X, y, classes=[0, 1])
        model.partial_fit(X, y, classes=[1, 0])  # the same classes, in any order
        with pytest.raises(ValueError, match=r"classes=\[0, 1, 2\] is not the same.*\[0, 1\]"):
            model.partial_fit(X, y, classes=[0, 1, 2])


def test_batch_size_larger_than_the_data_warns_and_clips(data):
    X, y = data
    with pytest.warns(UserWarning, match="batch_size.*larger than sample size.*clipped"):
        model = small(batch_size=1000).fit(X, y)
    assert model._trainer_.step_count == model.n_iter_  # one step of all rows per epoch
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("ignore", gpumlp.ConvergenceWarning)
        small(batch_size=60).fit(X, y)  # equal to n: no warning


def test_column_vector_y_warns_as_sklearn(data):
    X, y = data
    with pytest.warns(gpumlp.DataConversionWarning, match="column-vector y"):
        small().fit(X, y[:, None])


# ----------------------------------------------------------------------------- any array
class DLPackOnly:
    """An array from "another library": only the DLPack protocol (CPU)."""

    def __init__(self, array):
        self._array = array
        self.shape = array.shape

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_dlpack_input_is_used_without_a_copy(data):
    X, y = data
    wrapped = validation.as_array_input(DLPackOnly(X))
    assert isinstance(wrapped, np.ndarray) and np.shares_memory(wrapped, X)
    model = small().fit(DLPackOnly(X), y)
    expected = small().fit(X, y)
    np.testing.assert_array_equal(model.predict_proba(DLPackOnly(X)), expected.predict_proba(X))
    regressor = small(gpumlp.MLPRegressor).fit(DLPackOnly(X), DLPackOnly(X[:, 0].copy()))
    assert isinstance(regressor.predict(DLPackOnly(X)), np.ndarray)


def test_cuda_arrays_go_to_cupy(monkeypatch):
    """__cuda_array_interface__ and CUDA DLPack objects are wrapped by CuPy (zero-copy)."""
    calls = []

    class FakeCupy:
        @staticmethod
        def asarray(x):
            calls.append(("asarray", x))
            return "cupy array"

        @staticmethod
        def from_dlpack(x):
            calls.append(("from_dlpack", x))
            return "cupy array"

    class CudaInterface:
        __cuda_array_interface__ = {"shape": (2, 2), "typestr": "<f4", "data": (0, False),
                                    "version": 3}

    class CudaDLPack:
        def __dlpack__(self, **kwargs):
            raise AssertionError("CuPy reads it, not NumPy")

        def __dlpack_device__(self):
            return (2, 0)  # kDLCUDA, device 0

    monkeypatch.setattr(validation, "_cupy_module", lambda name: FakeCupy)
    first, second = CudaInterface(), CudaDLPack()
    assert validation.as_array_input(first) == "cupy array"
    assert validation.as_array_input(second) == "cupy array"
    assert calls == [("asarray", first), ("from_dlpack", second)]


# -------------------------------------------------------------------------- initialisation
def test_glorot_is_sklearns_initialisation():
    sizes, seed = [5, 7, 3], 11
    for activation, factor in (("relu", 6.0), ("sigmoid", 2.0)):
        rng = np.random.RandomState(seed)  # scikit-learn's _init_coef, layer by layer
        expected = []
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            expected += [rng.uniform(-bound, bound, (fan_in, fan_out)).ravel(),
                         rng.uniform(-bound, bound, fan_out)]
        flat = initial_parameters("glorot", sizes, [activation], seed, np.float64)
        np.testing.assert_array_equal(flat, np.concatenate(expected))
        assert len(glorot_layers(sizes, activation, seed, np.float64)) == 2


def test_init_parameter_of_the_estimators(data):
    X, y = data
    he = small(init="he", max_iter=1, learning_rate_init=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpumlp.ConvergenceWarning)
        he.fit(X, y)
    reference = Network([3, 6, 1], activation="relu", loss="sigmoid_bce", seed=0,
                        backend="numpy")
    np.testing.assert_allclose(he.network_.get_flat_params(), reference.get_flat_params(),
                               atol=1e-6)  # He: the Network default, zero biases
    assert np.abs(he.intercepts_[0]).max() < 1e-6
    glorot = small(max_iter=1, learning_rate_init=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gpumlp.ConvergenceWarning)
        glorot.fit(X, y)
    assert np.abs(glorot.intercepts_[0]).max() > 0.05  # biases drawn too
    with pytest.raises(ValueError, match=r"init='xavier'.*glorot.*he"):
        small(init="xavier").fit(X, y)

