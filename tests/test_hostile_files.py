"""Hostile and damaged files: model files and IDX files that declare more than they hold, or
hold values that disagree with each other, are rejected with a message naming the field,
before anything of the declared size is allocated. Peak memory is measured, not assumed."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

import gpumlp
from gpumlp import MLPClassifier, MLPRegressor, Perceptron
from gpumlp import io as gio
from gpumlp.data.idx import read_idx

pytestmark = pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")

MiB = 2**20
#: What loading a rejected file may cost, at most; the hostile declarations below are
#: 3.4 GiB to 37 GiB, and a 300 MB gzip stream.
PEAK_LIMIT = 50 * MiB
ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter so that the peak belongs to this one load alone. The address
# space is capped as a backstop: a regression then fails with MemoryError instead of
# taking the memory of the machine. The resident peak is the child's own: VmHWM of its
# process (not ru_maxrss, which a child inherits from a large parent), reset after the
# imports where the kernel allows it (clear_refs), measured from the resident size then.
MEASURE = textwrap.dedent("""
    import json, resource, sys, tracemalloc
    import gpumlp
    from gpumlp.data.idx import read_idx
    path, kind = sys.argv[1], sys.argv[2]

    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines
                        if line.startswith(field + ":"))

    resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + 2 * 2**30,
                                            resource.RLIM_INFINITY))
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # VmHWM := VmRSS now
    except OSError:
        pass  # VmHWM then includes the imports' peak: the growth only looks larger
    rss_before = status("VmRSS")
    tracemalloc.start()
    try:
        result = (read_idx if kind == "idx" else gpumlp.load)(path)
        error = None
    except Exception as exc:
        error = [type(exc).__name__, str(exc)]
    peak = tracemalloc.get_traced_memory()[1]
    rss_growth = status("VmHWM") - rss_before
    print(json.dumps({"peak": peak, "rss_growth": rss_growth, "error": error}))
""")


def measure_load(path: Path, kind: str = "model") -> dict:
    """Load ``path`` in a fresh interpreter; its traced peak, RSS growth and error."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the memory measurement reads /proc and sets RLIMIT_AS (Linux)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    result = subprocess.run([sys.executable, "-c", MEASURE, str(path), kind], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def fitted(cls=MLPClassifier, **params):
    options = dict(hidden_layer_sizes=(4,), backend="numpy", random_state=0, max_iter=3)
    options.update(params)
    return cls(**options)


def data(n_classes=3, n=60, d=5):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    return X, np.arange(n) % n_classes


def saved_parts(path, model, X, y):
    """Save ``model`` fitted on ``X, y``; return its arrays and metadata for editing."""
    model.fit(X, y).save(path)
    with np.load(path, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    return arrays, json.loads(arrays.pop(gio._META).tobytes().decode())


def rewrite(path, arrays, metadata):
    encoded = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    np.savez(path, **arrays, **{gio._META: encoded})


def declare_sizes(path, sizes):
    """A small, otherwise valid model file whose metadata declares layer ``sizes``."""
    X, y = data(n_classes=3, d=sizes[0])
    arrays, metadata = saved_parts(path, fitted(), X, y)
    metadata["state"]["sizes"] = sizes
    metadata["params"]["hidden_layer_sizes"] = sizes[1:-1]
    rewrite(path, arrays, metadata)
    return path


# ------------------------------------------------------------------ declared sizes and memory
@pytest.mark.parametrize("sizes, gib", [([5, 30000, 30000, 3], 3.35),
                                        ([5, 100000, 100000, 3], 37.3)])
def test_file_declaring_a_huge_network_is_rejected_with_bounded_memory(tmp_path, sizes, gib):
    path = declare_sizes(tmp_path / "crafted.npz", sizes)
    assert path.stat().st_size < 4096  # a few KB declaring `gib` GiB of float32 parameters
    n_params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    assert n_params * 4 / 2**30 == pytest.approx(gib, rel=0.01)
    measured = measure_load(path)
    assert measured["error"] is not None and measured["error"][0] == "FileFormatError"
    message = measured["error"][1]
    assert str(path) in message and "state.sizes" in message and str(n_params) in message
    assert measured["peak"] < PEAK_LIMIT, measured
    assert measured["rss_growth"] < PEAK_LIMIT, measured


def test_npy_header_declaring_more_than_the_archive_holds_is_rejected(tmp_path):
    """The shape in a ``.npy`` header must agree with the member's size in the zip, so a
    header cannot make the loader allocate what the file does not contain."""
    path = tmp_path / "m.npz"
    X, y = data()
    arrays, metadata = saved_parts(path, fitted(), X, y)
    rewrite(path, arrays, metadata)
    forged = tmp_path / "forged.npz"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(forged, "w") as target:
        for info in source.infolist():
            content = source.read(info)
            if info.filename == "params.npy":
                header = np.lib.format.header_data_from_array_1_0(np.zeros(1, np.float32))
                header["shape"] = (10**10,)
                buffer = __import__("io").BytesIO()
                np.lib.format.write_array_header_1_0(buffer, header)
                content = buffer.getvalue() + b"\x00" * 64
            target.writestr(info.filename, content)
    measured = measure_load(forged)
    assert measured["error"][0] == "FileFormatError"
    assert "'params'" in measured["error"][1] and "10000000000" in measured["error"][1]
    assert measured["peak"] < PEAK_LIMIT, measured


def test_parameter_cap_applies_to_consistent_files(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    X, y = data()
    fitted().fit(X, y).save(path)
    n_params = gpumlp.load(path).network_.params.size
    monkeypatch.setattr(gio, "MAX_PARAMETERS", n_params - 1)
    with pytest.raises(ValueError, match=rf"state.sizes=.*{n_params} parameters.*MAX_PARAMETERS"):
        gpumlp.load(path)
    monkeypatch.setattr(gio, "MAX_PARAMETERS", n_params)
    assert gpumlp.load(path).network_.params.size == n_params


def test_metadata_cap(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    X, y = data()
    fitted().fit(X, y).save(path)
    monkeypatch.setattr(gio, "MAX_METADATA_BYTES", 100)
    with pytest.raises(ValueError, match=r"metadata=.*at most 100"):
        gpumlp.load(path)


# ------------------------------------------------------------------------- gzip IDX bomb
def write_gzip_idx(path, header_dims, payload_bytes, chunk=MiB):
    """A gzip IDX file whose header declares ``header_dims`` uint8 values, followed by
    ``payload_bytes`` zero bytes, compressed as a stream (never held in memory)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip container
    with open(path, "wb") as out:
        header = bytes([0, 0, 0x08, len(header_dims)]) + struct.pack(
            f">{len(header_dims)}I", *header_dims)
        out.write(compressor.compress(header))
        zeros = bytes(chunk)
        for start in range(0, payload_bytes, chunk):
            out.write(compressor.compress(zeros[: min(chunk, payload_bytes - start)]))
        out.write(compressor.flush())
    return path


def test_gzip_bomb_after_a_small_header_stops_early(tmp_path):
    path = write_gzip_idx(tmp_path / "bomb-idx3-ubyte.gz", (10, 28, 28), 300 * MiB)
    assert path.stat().st_size < 2 * MiB
    measured = measure_load(path, kind="idx")
    assert measured["error"][0] == "FileFormatError"
    assert "trailing bytes" in measured["error"][1] and "7840 bytes" in measured["error"][1]
    assert measured["peak"] < PEAK_LIMIT, measured
    assert measured["rss_growth"] < PEAK_LIMIT, measured


def test_gzip_declaring_more_than_it_holds_costs_only_what_it_holds(tmp_path):
    # The header declares 4 * 10**9 bytes; the stream holds 3 MiB.
    path = write_gzip_idx(tmp_path / "short-idx3-ubyte.gz", (4000, 1000, 1000), 3 * MiB)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"truncated: header says 4000000000 bytes"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB


def test_plain_idx_declaring_more_than_the_file_holds_reads_nothing(tmp_path):
    path = tmp_path / "raw-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 4000, 1000, 1000) + bytes(100))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"truncated: header says 4000000000 bytes.*found 100"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MiB


@pytest.mark.parametrize("compress", [False, True])
def test_many_trailing_bytes_are_counted_up_to_a_limit(tmp_path, compress):
    content = bytes([0, 0, 0x08, 1]) + struct.pack(">I", 4) + bytes(4 + 200_000)
    path = tmp_path / "t-idx1-ubyte"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(ValueError, match="trailing bytes") as info:
        read_idx(path)
    # A plain file knows its size; a gzip stream is only counted so far, then "at least".
    assert ("200000 trailing" in str(info.value)) != compress
    assert ("at least" in str(info.value)) == compress


# ------------------------------------------------------------- values that disagree
def _edit(path, change, cls=MLPClassifier, n_classes=3, **params):
    X, y = data(n_classes=n_classes)
    target = X[:, :2] if cls is MLPRegressor else y
    model = Perceptron(random_state=0, max_iter=3) if cls is Perceptron else fitted(cls, **params)
    arrays, metadata = saved_parts(path, model, X, target)
    change(arrays, metadata)
    rewrite(path, arrays, metadata)


def nan_params(arrays, metadata):
    arrays["params"][3] = np.nan


def inf_params(arrays, metadata):
    arrays["params"][0] = np.inf


def int8_params(arrays, metadata):
    arrays["params"] = arrays["params"].astype(np.int8)


def inference_only_activation(arrays, metadata):
    metadata["state"]["activations"] = ["hard_limit"]


def tf32_with_float64(arrays, metadata):
    arrays["params"] = arrays["params"].astype(np.float64)
    metadata["state"]["precision"] = "tf32"


def class_count_mismatch(arrays, metadata):
    arrays["classes"] = np.arange(4)


def string_n_iter(arrays, metadata):
    metadata["state"]["n_iter"] = "3"


def float_n_iter(arrays, metadata):
    metadata["state"]["n_iter"] = 2.5


def flipped_multiclass(arrays, metadata):
    metadata["state"]["flags"]["_multiclass"] = False


def missing_flag(arrays, metadata):
    del metadata["state"]["flags"]["_multilabel"]


def string_flag(arrays, metadata):
    metadata["state"]["flags"]["_multilabel"] = "false"


def unsorted_classes(arrays, metadata):
    arrays["classes"] = arrays["classes"][::-1].copy()


def hidden_sizes_not_ints(arrays, metadata):
    metadata["params"]["hidden_layer_sizes"] = [7.5]


def too_many_layers(arrays, metadata):
    metadata["state"]["sizes"] = [5] + [1] * 200_000 + [3]


def unknown_parameter(arrays, metadata):
    metadata["params"]["run_this"] = "rm -rf /"


def non_bool_parameter(arrays, metadata):
    metadata["params"]["shuffle"] = "yes"


def bad_hyperparameter(arrays, metadata):
    metadata["params"]["activation"] = "softsign"


def extra_array(arrays, metadata):
    arrays["payload"] = np.zeros(3)


def unknown_estimator(arrays, metadata):
    metadata["estimator"] = "os.system"


def bad_format(arrays, metadata):
    metadata["format"] = "someone-elses-model"


def bad_version(arrays, metadata):
    metadata["version"] = "1"


def sizes_with_bool(arrays, metadata):
    metadata["state"]["sizes"][0] = True


def string_loss_curve(arrays, metadata):
    metadata["state"]["loss_curve"] = ["0.5"]


CLASSIFIER_CASES = {
    nan_params: r"array 'params'=.*non-finite",
    inf_params: r"array 'params'=.*non-finite",
    int8_params: r"dtype of array 'params'='int8'.*float32 or float64",
    inference_only_activation: r"state.activations=\['hard_limit'\].*trainable",
    tf32_with_float64: r"state.precision='tf32'.*float32 parameters only",
    class_count_mismatch: r"classes=.*4 labels.*3 outputs",
    string_n_iter: r"state.n_iter='3'.*integer >= 0",
    float_n_iter: r"state.n_iter=2.5.*integer >= 0",
    flipped_multiclass: r"state.flags._multiclass=False.*3 classes it must be true",
    missing_flag: r"state.flags=.*_multilabel",
    string_flag: r"state.flags=.*true or false",
    unsorted_classes: r"classes=.*increasing order",
    hidden_sizes_not_ints: r"params.hidden_layer_sizes=\[7.5\].*positive integers",
    too_many_layers: r"state.sizes=.*MAX_LAYERS=1000",
    unknown_parameter: r"params='run_this'.*no such saved parameter",
    non_bool_parameter: r"params.shuffle='yes'.*true or false",
    bad_hyperparameter: r"params:.*softsign",
    extra_array: r"arrays=.*payload.*exactly",
    unknown_estimator: r"estimator='os.system'.*allowed: .*MLPClassifier",
    bad_format: r"format 'someone-elses-model'",
    bad_version: r"format version '1'.*reads version 1",
    sizes_with_bool: r"state.sizes=\[True",
    string_loss_curve: r"state.loss_curve=.*list of numbers",
}


@pytest.mark.parametrize("change", CLASSIFIER_CASES, ids=lambda f: f.__name__)
def test_inconsistent_classifier_file_names_the_field(tmp_path, change):
    path = tmp_path / "suspect.npz"
    _edit(path, change)
    with pytest.raises(ValueError, match=CLASSIFIER_CASES[change]) as info:
        gpumlp.load(path)
    assert str(path) in str(info.value)
    assert "allow_pickle" not in str(info.value)


def binary_flagged_multiclass(arrays, metadata):
    metadata["state"]["flags"]["_multiclass"] = True


def test_binary_model_flagged_multiclass_is_rejected(tmp_path):
    path = tmp_path / "binary.npz"
    _edit(path, binary_flagged_multiclass, n_classes=2)
    with pytest.raises(ValueError, match=r"_multiclass=True.*2 classes it must be false"):
        gpumlp.load(path)


def multilabel_flagged_multiclass(arrays, metadata):
    metadata["state"]["flags"]["_multiclass"] = True


def test_multilabel_model_flagged_multiclass_is_rejected(tmp_path):
    path = tmp_path / "multilabel.npz"
    X, _ = data()
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0], axis=1).astype(int)
    arrays, metadata = saved_parts(path, fitted(), X, Y)
    gpumlp.load(path)  # valid as saved
    metadata["state"]["flags"]["_multiclass"] = True
    rewrite(path, arrays, metadata)
    with pytest.raises(ValueError, match=r"_multiclass=True.*multilabel"):
        gpumlp.load(path)


def regressor_1d_with_two_outputs(arrays, metadata):
    metadata["state"]["flags"]["_y_1d"] = True


def regressor_with_classes(arrays, metadata):
    arrays["classes"] = np.arange(2)


@pytest.mark.parametrize("change, expected", [
    (regressor_1d_with_two_outputs, r"state.flags._y_1d=True.*network has 2"),
    (regressor_with_classes, r"classes=.*no classes"),
    (nan_params, r"non-finite"),
], ids=lambda v: getattr(v, "__name__", ""))
def test_inconsistent_regressor_file_names_the_field(tmp_path, change, expected):
    path = tmp_path / "r.npz"
    _edit(path, change, cls=MLPRegressor)
    with pytest.raises(ValueError, match=expected):
        gpumlp.load(path)


def perceptron_nan(arrays, metadata):
    arrays["coef"][0, 0] = np.nan


def perceptron_units(arrays, metadata):
    arrays["coef"] = arrays["coef"][:2]
    arrays["intercept"] = arrays["intercept"][:2]


def perceptron_intercept(arrays, metadata):
    arrays["intercept"] = np.zeros(7)


def perceptron_int_coef(arrays, metadata):
    arrays["coef"] = arrays["coef"].astype(np.int64)


def perceptron_converged(arrays, metadata):
    metadata["state"]["converged"] = "no"


def perceptron_n_iter(arrays, metadata):
    metadata["state"]["n_iter"] = -1


@pytest.mark.parametrize("change, expected", [
    (perceptron_nan, r"array 'coef'=.*non-finite"),
    (perceptron_units, r"coef=.*3 classes need 3 units"),
    (perceptron_intercept, r"intercept=.*\(7,\).*\(3,\)"),
    (perceptron_int_coef, r"dtype of array 'coef'='int64'"),
    (perceptron_converged, r"state.converged='no'"),
    (perceptron_n_iter, r"state.n_iter=-1"),
], ids=lambda v: getattr(v, "__name__", ""))
def test_inconsistent_perceptron_file_names_the_field(tmp_path, change, expected):
    path = tmp_path / "p.npz"
    _edit(path, change, cls=Perceptron)
    with pytest.raises(ValueError, match=expected):
        gpumlp.load(path)


# ------------------------------------------------------------- never NumPy's pickle advice
def make_pickle(path):
    path.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))


def make_object_npy(path):
    with open(path, "wb") as handle:
        np.save(handle, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def make_npz_with_object_array(path):
    X, y = data()
    arrays, metadata = saved_parts(path, fitted(), X, y)
    arrays["classes"] = np.array(["a", 1, None], dtype=object)
    encoded = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    np.savez(path, **arrays, **{gio._META: encoded}, allow_pickle=True)


def make_garbage_npy_header(path):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{gio._META}.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': <lambda>}  \n")


@pytest.mark.parametrize("make", [make_pickle, make_object_npy, make_npz_with_object_array,
                                  make_garbage_npy_header], ids=lambda f: f.__name__[5:])
def test_non_model_files_get_our_message_not_numpys_pickle_advice(tmp_path, make):
    path = tmp_path / "not-a-model.npz"
    make(path)
    with pytest.raises(ValueError) as info:
        gpumlp.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "allow_pickle" not in message and "unsafely" not in message


def test_object_array_message_says_why(tmp_path):
    path = tmp_path / "objects.npz"
    make_npz_with_object_array(path)
    with pytest.raises(ValueError, match=r"dtype of array 'classes'='object'.*pickle"):
        gpumlp.load(path)


# ------------------------------------------------------------------ a valid model's load peak
def test_loading_a_valid_model_peaks_below_twice_its_parameter_bytes(tmp_path):
    """The parameters are read straight into the network (no whole-file copy, no initial
    weights drawn, no optimizer state or gradients until training needs them)."""
    X = np.random.default_rng(0).normal(size=(10, 200)).astype(np.float32)
    model = MLPClassifier((2000, 2000), max_iter=1, backend="numpy", random_state=0)
    model.fit(X, np.arange(10) % 3).save(tmp_path / "valid.npz")
    param_bytes = model.network_.n_params * 4
    assert param_bytes > 16 * MiB
    measured = measure_load(tmp_path / "valid.npz")
    assert measured["error"] is None, measured
    assert measured["peak"] < 2 * param_bytes, (measured, param_bytes)
    assert measured["rss_growth"] < 2 * param_bytes, (measured, param_bytes)


# ------------------------------------------------------------------------ the zip directory
@pytest.mark.parametrize("zip64", [False, True], ids=["zip", "zip64"])
def test_zip_directory_larger_than_a_models_is_refused_before_parsing(tmp_path, monkeypatch,
                                                                      zip64):
    """zipfile makes an object per directory entry: 20,000 empty entries (a 1.7 MB file)
    would cost it seconds and megabytes before the member count could be checked."""
    if zip64:  # make zipfile write the Zip64 end record, as files past 4 GiB have
        monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 16)
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for i in range(20_000):
            archive.writestr(f"{i}.npy", b"")
    monkeypatch.undo()
    with open(path, "rb") as handle:
        assert (b"PK\x06\x06" in handle.read()) == zip64
    tracemalloc.start()
    try:
        with pytest.raises(gpumlp.FileFormatError, match=r"zip directory of \d+ bytes.*"
                                                         r"MAX_DIRECTORY_BYTES=65536"):
            gpumlp.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MiB


def test_a_model_with_a_zip64_end_record_loads(tmp_path, monkeypatch):
    X, y = data()
    model = fitted().fit(X, y)
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 16)
    model.save(tmp_path / "m.npz")
    monkeypatch.undo()
    with open(tmp_path / "m.npz", "rb") as handle:
        assert b"PK\x06\x06" in handle.read()
    np.testing.assert_array_equal(gpumlp.load(tmp_path / "m.npz").predict(X), model.predict(X))
