"""Fuzzing the files gpumlp reads: every single-byte change and every truncation of a saved
model (stored and deflated) and of IDX files (plain and gzip), and hostile values in every
metadata field, each end in the one documented error (:class:`gpumlp.FileFormatError`) or in
a model that loads and behaves; never another exception, a hang or a large allocation.

The models are small so that "every byte" stays cheap (a few thousand loads)."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import gpumlp
from gpumlp import MLPClassifier, MLPRegressor, Perceptron
from gpumlp import io as gio
from gpumlp.data.idx import read_idx
from gpumlp.exceptions import FileFormatError

pytestmark = pytest.mark.filterwarnings("ignore::gpumlp.ConvergenceWarning")

MiB = 2**20
#: Bounds on one load of a damaged file: far above a healthy small load (milliseconds; the
#: margin is for a busy machine), far below a hang or what a declared size or a
#: decompression bomb would cost.
TIME_LIMIT = 10.0
PEAK_LIMIT = 16 * MiB

X = np.random.default_rng(0).normal(size=(20, 3))


def small_models():
    return {
        "classifier": MLPClassifier((2,), max_iter=1, backend="numpy", random_state=0).fit(
            X, np.arange(20) % 3),
        "regressor": MLPRegressor((2,), max_iter=1, backend="numpy", random_state=0).fit(
            X, X[:, :2]),
        "perceptron": Perceptron(max_iter=1, random_state=0).fit(X, np.arange(20) % 2),
    }


def _save_to_bytes(model, compression):
    """The model's file as ``save`` writes it (stored), or re-packed deflated."""
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/m.npz"
        model.save(path)
        with open(path, "rb") as handle:
            raw = handle.read()
    if compression == zipfile.ZIP_STORED:
        return raw
    packed = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw)) as source, \
            zipfile.ZipFile(packed, "w", compression) as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info))
    return packed.getvalue()


def _status(field: str) -> int:
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines
                    if line.startswith(field + ":"))


def _can_reset_peak() -> bool:
    """Whether this process's resident peak (VmHWM) can be reset (Linux clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


class Bounded:
    """Runs loads one after another, each within the time and memory bounds.

    Memory is this process's resident peak (VmHWM, reset before each load), which costs
    nothing per allocation; where it cannot be reset, tracemalloc's traced peak (slower)."""

    def __init__(self):
        self.slowest = 0.0
        self.largest = 0
        self.resident = _can_reset_peak()

    def __enter__(self):
        if not self.resident:
            tracemalloc.start()
        return self

    def __exit__(self, *exc):
        if not self.resident:
            tracemalloc.stop()

    def _reset(self) -> int:
        if self.resident:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
            return _status("VmRSS")
        tracemalloc.reset_peak()
        return tracemalloc.get_traced_memory()[0]

    def _peak(self) -> int:
        return _status("VmHWM") if self.resident else tracemalloc.get_traced_memory()[1]

    def __call__(self, call):
        base = self._reset()
        start = time.perf_counter()
        try:
            return ("ok", call())
        except FileFormatError as exc:
            assert str(exc), "an empty message"
            return ("error", exc)
        finally:
            self.slowest = max(self.slowest, time.perf_counter() - start)
            self.largest = max(self.largest, self._peak() - base)
            assert self.slowest < TIME_LIMIT and self.largest < PEAK_LIMIT, (
                self.slowest, self.largest)


def load_bytes(tmp_path, content: bytes):
    path = tmp_path / "fuzzed.npz"
    path.write_bytes(content)
    return gpumlp.load(path)


def behaves_as(original, loaded):
    """A file that still loads (a change the zip format ignores, e.g. a timestamp) must be
    the same model."""
    np.testing.assert_array_equal(loaded.predict(X), original.predict(X))
    assert loaded.get_params() == original.get_params()


# ------------------------------------------------------------------------------ model bytes
@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED],
                         ids=["stored", "deflated"])
def test_every_byte_flipped_ends_in_the_documented_error(tmp_path, compression):
    original = small_models()["classifier"]
    content = _save_to_bytes(original, compression)
    outcomes = {"ok": 0, "error": 0}
    with Bounded() as run:
        for position in range(len(content)):
            damaged = bytearray(content)
            damaged[position] ^= 0xFF
            kind, result = run(lambda: load_bytes(tmp_path, bytes(damaged)))
            outcomes[kind] += 1
            if kind == "ok":
                behaves_as(original, result)
            else:
                assert str(tmp_path / "fuzzed.npz") in str(result)
                assert "allow_pickle" not in str(result)
    # CRCs catch every change of the arrays' bytes; what loads had a change in a field zip
    # readers ignore (time stamps, "version made by", ...), and behaved as the original.
    assert outcomes["error"] > 0.8 * len(content), outcomes


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED],
                         ids=["stored", "deflated"])
def test_every_truncation_ends_in_the_documented_error(tmp_path, compression):
    content = _save_to_bytes(small_models()["regressor"], compression)
    with Bounded() as run:
        for length in range(len(content)):
            kind, result = run(lambda: load_bytes(tmp_path, content[:length]))
            assert kind == "error", length


def test_flag_bits_of_the_zip_headers_end_in_the_documented_error(tmp_path):
    """Each bit of the general-purpose flags (encryption, patched data, ...) of every local
    and central header: zipfile answers some with NotImplementedError or RuntimeError."""
    content = _save_to_bytes(small_models()["classifier"], zipfile.ZIP_STORED)
    offsets = []
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = content.find(signature)
        while start >= 0:
            offsets.append(start + flag_offset)
            start = content.find(signature, start + 1)
    assert len(offsets) >= 6
    with Bounded() as run:
        for offset in offsets:
            for bit in range(16):
                damaged = bytearray(content)
                damaged[offset + bit // 8] ^= 1 << (bit % 8)
                run(lambda: load_bytes(tmp_path, bytes(damaged)))


# --------------------------------------------------------------------------- metadata fields
def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


#: Hostile JSON values: wrong types, NaN, infinities, huge, negative, unicode, nesting.
HOSTILE = ["x", "\u202e\U0001F600\u0000", -1, 2**31, -10**30, 1.5, float("nan"),
           float("-inf"), True, None, [], {"a": 1}, [[[[[]]]]], "DEEP"]


def fields(node, prefix=()):
    """Every field path of the metadata: object keys, and the first items of lists."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield prefix + (key,)
            yield from fields(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node[:2]):
            yield prefix + (index,)
            yield from fields(value, prefix + (index,))


def edited(metadata, path, value, delete=False):
    copy = json.loads(json.dumps(metadata))
    node = copy
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    text = json.dumps(copy)
    return text.replace('"DEEP"', deep(100_000))  # nesting past any recursion limit


def parts_of(model):
    content = _save_to_bytes(model, zipfile.ZIP_STORED)
    with np.load(io.BytesIO(content), allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    return arrays, json.loads(arrays.pop(gio._META).tobytes())


@pytest.mark.parametrize("name", ["classifier", "regressor", "perceptron"])
def test_hostile_value_in_every_metadata_field(tmp_path, name):
    original = small_models()[name]
    arrays, metadata = parts_of(original)
    cases = []
    for path in fields(metadata):
        cases += [(path, value, False) for value in HOSTILE]
        parent = metadata
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, dict):
            cases.append((path, None, True))  # the field missing
    assert len(cases) > 150
    target = tmp_path / "fuzzed.npz"
    original.save(target)
    gpumlp.load(target).predict(X)  # first-use imports are not the files' cost, nor is
    gpumlp.get_backend("auto")  # looking for a GPU (CuPy's import) when a field is missing
    loaded_count = 0
    with Bounded() as run:
        for path, value, delete in cases:
            text = edited(metadata, path, value, delete)
            raw = np.frombuffer(text.encode("utf-8", "surrogatepass"), np.uint8)
            np.savez(target, **arrays, **{gio._META: raw})
            kind, result = run(lambda: gpumlp.load(target))
            if kind == "error":
                assert str(target) in str(result), (path, value)
                continue
            loaded_count += 1
            # Accepted: a value within what the field allows. The model must then work, or
            # refuse to predict as a model whose parameters were set after fit does.
            try:
                predicted = result.predict(X)
            except ValueError as exc:
                assert "was set after fit and does not match the fitted network" in str(exc)
                continue
            assert predicted.shape[0] == len(X)
            if name != "classifier":
                assert np.isfinite(np.asarray(predicted, dtype=float)).all()
            result.save(tmp_path / "again.npz")
            again = gpumlp.load(tmp_path / "again.npz")
            assert repr(again.get_params()) == repr(result.get_params()), (path, value)
    assert loaded_count < len(cases) / 2  # most hostile values are refused


def test_random_state_of_a_wrong_type_is_named(tmp_path):
    arrays, metadata = parts_of(small_models()["perceptron"])
    metadata["params"]["random_state"] = "seed"
    np.savez(tmp_path / "m.npz", **arrays, **{gio._META: np.frombuffer(
        json.dumps(metadata).encode(), np.uint8)})
    with pytest.raises(FileFormatError, match=r"params.random_state='seed'.*integer >= 0"):
        gpumlp.load(tmp_path / "m.npz")


@pytest.mark.parametrize("field", ["best_loss", "loss_curve", "n_iter", "flags",
                                   "samples_seen", "validation_scores"])
def test_missing_state_field_is_named(tmp_path, field):
    arrays, metadata = parts_of(small_models()["classifier"])
    del metadata["state"][field]
    np.savez(tmp_path / "m.npz", **arrays, **{gio._META: np.frombuffer(
        json.dumps(metadata).encode(), np.uint8)})
    with pytest.raises(FileFormatError, match=rf"state.{field}=None is not valid"):
        gpumlp.load(tmp_path / "m.npz")


# -------------------------------------------------------------------------------- IDX files
def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.dtype(np.uint8): 0x08, np.dtype(np.float32): 0x0D}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


IDX_ARRAYS = {"images": np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
              "floats": np.linspace(-1, 1, 6, dtype=np.float32).reshape(3, 2)}


def read_bytes(tmp_path, content):
    path = tmp_path / "fuzzed-idx"
    path.write_bytes(content)
    return read_idx(path)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("name", IDX_ARRAYS)
def test_idx_every_byte_flip_and_truncation(tmp_path, name, compress):
    array = IDX_ARRAYS[name]
    plain = idx_bytes(array)
    content = gzip.compress(plain, mtime=0) if compress else plain
    header_size = 4 + 4 * array.ndim
    with Bounded() as run:
        for position in range(len(content)):
            damaged = bytearray(content)
            damaged[position] ^= 0xFF
            kind, result = run(lambda: read_bytes(tmp_path, bytes(damaged)))
            if kind == "ok":  # a payload byte of a plain file, or a gzip field that does
                # not change the content (the header's time stamp, flags for the OS)
                assert result.shape == array.shape and result.dtype == array.dtype
                assert (not compress and position >= header_size) or np.array_equal(
                    result, array), position
        for length in range(len(content)):
            kind, _ = run(lambda: read_bytes(tmp_path, content[:length]))
            assert kind == "error", length


#: Hostile header values: each dimension, the type code and ndim.
DIMENSIONS = [0, 1, 2**16, 2**31, 2**32 - 1]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_idx_hostile_header_fields(tmp_path, compress):
    array = IDX_ARRAYS["images"]
    plain = bytearray(idx_bytes(array))
    cases = []
    for dim in range(array.ndim):
        for value in DIMENSIONS:
            header = bytearray(plain)
            header[4 + 4 * dim:8 + 4 * dim] = int(value).to_bytes(4, "big")
            cases.append(bytes(header))
    for offset in (2, 3):  # type code, ndim
        for value in (0, 1, 4, 5, 0x0E, 0xFF):
            header = bytearray(plain)
            header[offset] = value
            cases.append(bytes(header))
    with Bounded() as run:
        for content in cases:
            data = gzip.compress(content, mtime=0) if compress else content
            kind, result = run(lambda: read_bytes(tmp_path, data))
            if kind == "ok":  # a header that still matches the payload's size
                assert result.size * result.dtype.itemsize == len(content) - 4 - 4 * result.ndim


def test_idx_declared_beyond_the_cap_is_refused_from_the_header(tmp_path, monkeypatch):
    from gpumlp.data import idx

    content = idx_bytes(IDX_ARRAYS["images"])
    monkeypatch.setattr(idx, "MAX_IDX_BYTES", 23)
    with pytest.raises(FileFormatError, match=r"header says 24 bytes.*MAX_IDX_BYTES=23"):
        read_bytes(tmp_path, gzip.compress(content))


def test_gzip_idx_declaring_more_than_deflate_can_hold_is_refused_before_inflating(tmp_path):
    """10**9 bytes declared in a gzip file of a few hundred bytes: more than deflate's
    1032:1 can expand to, so nothing is decompressed."""
    header = bytes([0, 0, 0x08, 3]) + np.asarray([1000, 1000, 1000], ">u4").tobytes()
    tracemalloc.start()
    try:
        with pytest.raises(FileFormatError, match=r"truncated: header says 1000000000 bytes"
                                                  r".*compressed bytes inflate to at most"):
            read_bytes(tmp_path, gzip.compress(header + bytes(1000)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MiB
