"""Input checks with bounded memory and clear errors: prediction on any number of rows
(a memory map, say) costs the output plus a fixed working set; finite inputs that overflow
the network are refused rather than given NaN probabilities; labels of mixed types are
refused by name."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from gpumlp import MLPClassifier, MLPRegressor, Perceptron
from gpumlp import validation

pytestmark = pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")

MiB = 2**20


def fitted(cls=MLPClassifier, d=64, **params):
    X = np.random.default_rng(0).normal(size=(50, d)).astype(np.float32)
    y = np.arange(50) % 3 if cls is MLPClassifier else X[:, 0]
    options = dict(hidden_layer_sizes=(16,), max_iter=2, backend="numpy", random_state=0)
    options.update(params)
    return cls(**options).fit(X, y)


def memmap_rows(path, n, d, dtype=np.float32):
    """A memory-mapped ``(n, d)`` array of a sparse file: no memory of ours holds it."""
    with open(path, "wb") as handle:
        handle.truncate(n * d * np.dtype(dtype).itemsize)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n, d))


def traced_peak(call):
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("method", ["predict", "predict_proba"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
def test_prediction_memory_is_the_output_plus_a_fixed_working_set(tmp_path, monkeypatch,
                                                                   method, dtype):
    """200,000 x 64 inputs (51 or 102 MB) with 1 MiB validation blocks: a whole-array
    temporary (a finiteness mask of 12.8 MB, a float32 copy of 51 MB) would show."""
    monkeypatch.setattr(validation, "CHUNK_BYTES", MiB)
    model = fitted()
    X = memmap_rows(tmp_path / "rows.bin", 200_000, 64, dtype)
    result, peak = traced_peak(lambda: getattr(model, method)(X))
    output = 200_000 * 3 * 4  # the float32 probabilities
    assert result.shape[0] == 200_000
    assert peak < output + 8 * MiB, (peak, output)


def test_predictions_by_blocks_equal_one_whole_call(monkeypatch):
    model = fitted(d=8)
    X = np.random.default_rng(1).normal(size=(10_000, 8)).astype(np.float32)
    whole = model.network_.predict_output(X)
    monkeypatch.setattr(validation, "CHUNK_BYTES", 1)  # the smallest blocks: 4096 rows
    np.testing.assert_array_equal(model.predict_proba(X), whole)


def test_fit_checks_finiteness_without_a_whole_array_mask(tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "CHUNK_BYTES", MiB)
    X = memmap_rows(tmp_path / "rows.bin", 200_000, 64)  # float32 already: no copy
    _, peak = traced_peak(lambda: validation.check_X(X, _numpy(), np.float32))
    assert peak < 2 * MiB


def _numpy():
    from gpumlp import get_backend

    return get_backend("numpy")


@pytest.mark.parametrize("value", [3e38, -3e38])
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_finite_inputs_that_overflow_the_network_are_refused(cls, value):
    model = fitted(cls, d=8)
    X = np.full((5, 8), value, dtype=np.float32)
    with pytest.raises(ValueError, match=r"X has values too large for this network: its "
                                         r"outputs overflow float32"):
        model.predict(X)


def test_large_inputs_the_network_handles_still_predict():
    model = fitted(d=8)
    X = np.full((5, 8), 1e3, dtype=np.float32)
    assert np.isfinite(model.predict_proba(X)).all()


def test_float64_values_beyond_float32_are_refused_by_name():
    model = fitted(d=8)
    X = np.full((5, 8), 1e300)
    with pytest.raises(ValueError, match=r"X has values beyond the range of float32"):
        model.predict(X)
    with pytest.raises(ValueError, match=r"X has values beyond the range of float32"):
        MLPClassifier((3,), backend="numpy").fit(X, np.arange(5) % 2)


MIXED = [[1, "a"], ["a", None], [1.5, "b"], ["x", b"y"], [True, 2], [np.nan, "a"]]


@pytest.mark.parametrize("labels", MIXED, ids=repr)
@pytest.mark.parametrize("cls", [MLPClassifier, Perceptron])
def test_labels_of_mixed_types_are_refused_by_name(cls, labels):
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.array(labels * 10, dtype=object)
    with pytest.raises(ValueError, match=r"y holds labels of types .*all strings or all "
                                         r"numbers"):
        cls(max_iter=1, **({"backend": "numpy"} if cls is MLPClassifier else {})).fit(X, y)


def test_partial_fit_classes_of_mixed_types_are_refused_by_name():
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match=r"classes holds labels of types \['int', 'str'\]"):
        MLPClassifier(backend="numpy").partial_fit(X, np.arange(20) % 2,
                                                   classes=np.array([0, 1, "a"], dtype=object))


@pytest.mark.parametrize("labels", [["a", "b"], [1, 2], [1.0, 2], [np.int64(1), 2]])
def test_object_labels_of_one_kind_still_fit(labels):
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.array(labels * 10, dtype=object)
    model = MLPClassifier((3,), max_iter=1, backend="numpy").fit(X, y)
    assert len(model.classes_) == 2
