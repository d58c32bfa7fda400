"""Tests for gpumlp.data: IDX files, the dataset registry and synthetic data.

No test touches the network or the real home directory: ``isolated`` points HOME, the cache
and the system directories at tmp_path and makes any download attempt fail loudly.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import re
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from gpumlp.data import (
    DATASETS,
    Dataset,
    DatasetNotFoundError,
    find_datasets,
    load_dataset,
    locate_dataset,
    read_idx,
    synthetic_mnist,
    write_idx,
)
from gpumlp.data import datasets as datasets_module
from gpumlp.data.datasets import FILES
from gpumlp.data.idx import read_idx_header

REAL_FASHION = Path("/usr/share/datasets/fashion-mnist")

# --------------------------------------------------------------------------- IDX round trips


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
)
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2), (0, 4)])
def test_idx_round_trip(tmp_path, dtype, shape, compress):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal(shape) * 50).astype(dtype)
    path = write_idx(tmp_path / "a-idx", array, compress=compress)
    assert path.read_bytes().startswith(b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_idx_header_layout_is_big_endian(tmp_path):
    path = write_idx(tmp_path / "x", np.arange(6, dtype=np.int16).reshape(2, 3))
    raw = path.read_bytes()
    assert raw[:4] == bytes([0, 0, 0x0B, 2])
    assert struct.unpack(">II", raw[4:12]) == (2, 3)
    assert struct.unpack(">6h", raw[12:]) == tuple(range(6))


def test_gzip_detected_by_content_not_suffix(tmp_path):
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    gz_no_suffix = write_idx(tmp_path / "plain-name", array, compress=True)
    raw_with_gz_suffix = write_idx(tmp_path / "looks.gz", array, compress=False)
    np.testing.assert_array_equal(read_idx(gz_no_suffix), array)
    np.testing.assert_array_equal(read_idx(raw_with_gz_suffix), array)


def test_write_idx_infers_compression_from_suffix(tmp_path):
    path = write_idx(tmp_path / "labels-idx1-ubyte.gz", np.arange(3, dtype=np.uint8))
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary behind


@pytest.mark.parametrize(
    "array, error",
    [
        (np.zeros(3, dtype=np.int64), TypeError),
        (np.zeros(3, dtype=bool), TypeError),
        (np.zeros((1,) * 5, dtype=np.uint8), ValueError),
        (np.array(3, dtype=np.uint8), ValueError),
    ],
)
def test_write_idx_rejects_what_idx_cannot_hold(tmp_path, array, error):
    with pytest.raises(error, match="array"):
        write_idx(tmp_path / "bad", array)


# --------------------------------------------------------------------------- corrupt IDX files


def _raw_idx(type_code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


CORRUPT = {
    "bad_magic": (b"\x12\x34\x08\x01" + struct.pack(">I", 2) + b"\x00\x00", "magic bytes 0x1234"),
    "bad_type_code": (_raw_idx(0x0A, (2,), b"\x00\x00"), "type code 0x0A"),
    "truncated": (_raw_idx(0x08, (4, 5), b"\x00" * 7), "truncated: header says 20 bytes"),
    "trailing": (_raw_idx(0x08, (4,), b"\x00" * 6), "2 trailing bytes"),
    "ndim_zero": (bytes([0, 0, 0x08, 0]), "ndim=0"),
    "ndim_five": (_raw_idx(0x08, (1, 1, 1, 1, 1), b"\x00"), "ndim=5"),
    "short_header": (bytes([0, 0, 0x08, 3]) + b"\x00\x00\x00\x02", "truncated header"),
    "empty": (b"", "too short"),
    "int32_truncated": (_raw_idx(0x0C, (3,), b"\x00" * 11), "found 11"),
}


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_idx_raises_value_error_naming_file(tmp_path, case, compress):
    content, expected = CORRUPT[case]
    path = tmp_path / f"{case}-idx-file"
    path.write_bytes(gzip.compress(content) if compress else content)
    with pytest.raises(ValueError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    assert expected in message


def test_truncated_gzip_stream_is_value_error(tmp_path):
    good = gzip.compress(_raw_idx(0x08, (1000,), bytes(range(250)) * 4))
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx(path)


def test_read_idx_argument_errors(tmp_path):
    with pytest.raises(TypeError, match="path"):
        read_idx(123)
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")


def test_read_idx_header_reads_only_the_header(tmp_path):
    """The header of a gzip file whose payload is 64 MiB (and whose tail is corrupt) comes
    back without the payload being inflated."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    content = compressor.compress(_raw_idx(0x0D, (64, 1024, 256), b""))
    chunk = bytes(1 << 20)
    content += b"".join(compressor.compress(chunk) for _ in range(64)) + compressor.flush()
    path = tmp_path / "big-idx3-float.gz"
    path.write_bytes(content[:-100] + b"garbage")  # a read of the payload would fail
    tracemalloc.start()
    try:
        shape, dtype = read_idx_header(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (shape, dtype) == ((64, 1024, 256), np.dtype(np.float32))
    assert peak < 4 * 2**20
    with pytest.raises(ValueError, match="big-idx3-float.gz"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_result_is_writable_native_and_owns_no_file(tmp_path, compress):
    array = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
    path = write_idx(tmp_path / "a-idx2-int", array, compress=compress)
    result = read_idx(path)
    assert result.dtype == np.dtype(np.int32) and result.dtype.isnative
    assert result.flags.writeable
    result[0, 0] = 99  # writable, and the file is unaffected
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="symbolic links")
def test_write_idx_keeps_mode_and_symlink(tmp_path):
    target = write_idx(tmp_path / "labels-idx1-ubyte", np.arange(3, dtype=np.uint8))
    os.chmod(target, 0o644)
    os.symlink(target, tmp_path / "link")
    write_idx(tmp_path / "link", np.arange(5, dtype=np.uint8))
    assert (tmp_path / "link").is_symlink()
    assert os.stat(target).st_mode & 0o777 == 0o644
    np.testing.assert_array_equal(read_idx(target), np.arange(5))


# --------------------------------------------------------------------------- registry


def _write_fake_dataset(directory: Path, n_train: int = 30, n_test: int = 10, gz: bool = True,
                        seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        images[0, 0, 0] = 255  # pin the range so the scaling test knows max == 1.0
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(directory / (FILES[f"{split}_images"] + suffix), images)
        write_idx(directory / (FILES[f"{split}_labels"] + suffix), labels)


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """Point every search location at tmp_path; forbid the network; shrink mnist's counts."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("GPUMLP_DATA", raising=False)
    system = (tmp_path / "usr-share-datasets", tmp_path / "usr-local-share-datasets")
    monkeypatch.setattr(datasets_module, "SYSTEM_DIRS", system)

    def no_network(url, timeout):
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(datasets_module, "_fetch_url", no_network)
    small = dataclasses.replace(DATASETS["mnist"], n_train=30, n_test=10)
    monkeypatch.setitem(DATASETS, "mnist", small)
    return {"home": home, "system": system, "tmp": tmp_path}


def test_unknown_name_lists_known_names(isolated):
    with pytest.raises(ValueError, match="cifar") as info:
        load_dataset("cifar")
    for name in ("mnist", "fashion-mnist", "kmnist"):
        assert name in str(info.value)
    with pytest.raises(TypeError, match="name"):
        locate_dataset(None)


def test_lookup_order(isolated, monkeypatch):
    tmp, home = isolated["tmp"], isolated["home"]
    system_dir = isolated["system"][1] / "mnist"
    cache_dir = home / ".cache" / "gpumlp" / "mnist"
    env_root = tmp / "env"
    env_dir = env_root / "mnist"
    explicit = tmp / "explicit"
    for directory in (system_dir, cache_dir, env_root, env_dir, explicit):
        _write_fake_dataset(directory)
    monkeypatch.setenv("GPUMLP_DATA", str(env_root))

    assert locate_dataset("mnist", path=explicit) == explicit
    assert locate_dataset("mnist") == env_dir
    for directory in (env_dir, env_root, cache_dir):
        for stem in FILES.values():
            (directory / f"{stem}.gz").unlink()
        # The first place still holding the files wins.
        assert locate_dataset("mnist", download=False) == {
            env_dir: env_root, env_root: cache_dir, cache_dir: system_dir
        }[directory]


def test_xdg_cache_home_is_respected(isolated, monkeypatch):
    xdg = isolated["tmp"] / "xdg"
    _write_fake_dataset(xdg / "gpumlp" / "mnist")
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    assert locate_dataset("mnist") == xdg / "gpumlp" / "mnist"


def test_uncompressed_files_and_name_aliases(isolated):
    directory = isolated["tmp"] / "raw"
    _write_fake_dataset(directory, gz=False)
    data = load_dataset("MNIST", path=directory)
    assert data.name == "mnist" and data.source == str(directory)


def test_explicit_path_missing_files_is_an_error(isolated):
    directory = isolated["tmp"] / "empty"
    directory.mkdir()
    with pytest.raises(DatasetNotFoundError, match="empty"):
        locate_dataset("mnist", path=directory)


def test_load_dataset_shapes_and_scaling(isolated):
    directory = isolated["system"][0] / "mnist"
    _write_fake_dataset(directory)
    data = load_dataset("mnist")
    assert isinstance(data, Dataset)
    assert data.X_train.shape == (30, 784) and data.X_test.shape == (10, 784)
    assert data.X_train.dtype == np.float32 and data.y_train.dtype == np.int64
    assert data.X_train.min() >= 0.0 and data.X_train.max() == 1.0
    raw = read_idx(directory / "train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(data.X_train, raw.reshape(30, -1) / np.float32(255))
    assert data.source == str(directory)


@pytest.mark.parametrize(
    "break_it, expected",
    [
        ("wrong_count", "shape (30, 28, 28)"),
        ("bad_label", "label 10 out of range"),
        ("float_images", "expected uint8 images"),
    ],
)
def test_load_dataset_validates_structure(isolated, break_it, expected):
    directory = isolated["tmp"] / "broken"
    _write_fake_dataset(directory)
    images_file = directory / "train-images-idx3-ubyte.gz"
    if break_it == "wrong_count":
        write_idx(images_file, np.zeros((29, 28, 28), dtype=np.uint8))
    elif break_it == "bad_label":
        write_idx(directory / "train-labels-idx1-ubyte.gz", np.full(30, 10, dtype=np.uint8))
    else:
        write_idx(images_file, np.zeros((30, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError, match=re.escape(expected)):
        load_dataset("mnist", path=directory)


def test_load_dataset_checks_headers_before_reading_payloads(isolated, monkeypatch):
    directory = isolated["tmp"] / "huge"
    _write_fake_dataset(directory)
    # header declares 60000 images; the payload would be read only after the check
    write_idx(directory / "train-images-idx3-ubyte.gz", np.zeros((60, 28, 28), dtype=np.uint8))

    def must_not_read(path):
        raise AssertionError(f"payload of {path} read before its header was checked")

    monkeypatch.setattr(datasets_module, "read_idx", must_not_read)
    with pytest.raises(ValueError, match=re.escape("expected uint8 images of shape (30, 28, 28)")):
        load_dataset("mnist", path=directory)


def test_missing_everywhere_offline_says_how_to_get_it(isolated, monkeypatch):
    monkeypatch.setenv("GPUMLP_DATA", str(isolated["tmp"] / "nowhere"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist", download=False)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "GPUMLP_DATA" in message and "download" in message
    assert str(isolated["system"][0] / "fashion-mnist") in message
    assert str(isolated["home"] / ".cache" / "gpumlp" / "fashion-mnist") in message


def test_download_failure_becomes_one_clear_error(isolated, monkeypatch):
    def offline(url, timeout):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(datasets_module, "_fetch_url", offline)
    with pytest.raises(DatasetNotFoundError, match="Network is unreachable") as info:
        load_dataset("kmnist")
    assert "GPUMLP_DATA" in str(info.value)


def _serve_from(monkeypatch, directory: Path, md5_override: dict[str, str] | None = None):
    """Make 'mnist' download from ``directory`` through a file:// URL, with its real MD5s."""
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in directory.glob("*.gz")}
    md5.update(md5_override or {})
    spec = dataclasses.replace(DATASETS["mnist"], url=directory.as_uri() + "/", md5=md5)
    monkeypatch.setitem(DATASETS, "mnist", spec)
    seen = []

    def fetch_local(url, timeout):
        assert url.startswith("file://") and timeout > 0
        seen.append(url)
        return datasets_module.urllib.request.urlopen(url, timeout=timeout)

    monkeypatch.setattr(datasets_module, "_fetch_url", fetch_local)
    return seen


def test_download_success_into_user_cache(isolated, monkeypatch):
    server = isolated["tmp"] / "server"
    _write_fake_dataset(server)
    seen = _serve_from(monkeypatch, server)
    data = load_dataset("mnist")
    cache = isolated["home"] / ".cache" / "gpumlp" / "mnist"
    assert data.source == str(cache)
    assert len(seen) == 4
    for stem in FILES.values():
        assert (cache / f"{stem}.gz").read_bytes() == (server / f"{stem}.gz").read_bytes()
    # Now cached: a second load finds it without downloading, and so does find_datasets.
    assert load_dataset("mnist").source == str(cache) and len(seen) == 4
    assert find_datasets()["mnist"] == str(cache)


def test_download_checksum_mismatch_deletes_file_and_raises(isolated, monkeypatch):
    server = isolated["tmp"] / "server"
    _write_fake_dataset(server)
    _serve_from(monkeypatch, server, {"t10k-images-idx3-ubyte.gz": "0" * 32})
    with pytest.raises(ValueError, match="checksum mismatch.*t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist")
    cache = isolated["home"] / ".cache" / "gpumlp" / "mnist"
    assert not (cache / "t10k-images-idx3-ubyte.gz").exists()
    assert not list(cache.glob(".*"))  # no temporary left behind either


def test_download_with_monkeypatched_bytes(isolated, monkeypatch):
    payloads = {}
    source = isolated["tmp"] / "bytes"
    _write_fake_dataset(source)
    for stem in FILES.values():
        payloads[f"{stem}.gz"] = (source / f"{stem}.gz").read_bytes()
    md5 = {name: hashlib.md5(blob).hexdigest() for name, blob in payloads.items()}
    spec = dataclasses.replace(DATASETS["mnist"], url="https://example.invalid/mnist/", md5=md5)
    monkeypatch.setitem(DATASETS, "mnist", spec)

    def fetch_bytes(url, timeout):
        return io.BytesIO(payloads[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(datasets_module, "_fetch_url", fetch_bytes)
    assert load_dataset("mnist").y_test.tolist() == list(range(10))


def test_find_datasets_reports_locations_without_downloading(isolated):
    _write_fake_dataset(isolated["system"][0] / "kmnist")
    found = find_datasets()
    assert set(found) == set(DATASETS)
    assert found["kmnist"] == str(isolated["system"][0] / "kmnist")
    assert found["mnist"] is None and found["fashion-mnist"] is None


def test_registry_has_official_files():
    for name, spec in DATASETS.items():
        assert spec.name == name
        assert set(spec.md5) == {f"{stem}.gz" for stem in FILES.values()}
        assert all(len(v) == 32 and int(v, 16) >= 0 for v in spec.md5.values())
        assert spec.url.endswith("/")


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not all((REAL_FASHION / f"{stem}.gz").is_file() for stem in FILES.values()),
    reason=f"real Fashion-MNIST not installed in {REAL_FASHION} "
    "(apt-get install dataset-fashion-mnist)",
)
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.setattr(datasets_module, "_fetch_url", lambda url, timeout: pytest.fail(url))
    data = load_dataset("fashion-mnist", path=REAL_FASHION, download=False)
    assert data.X_train.shape == (60000, 784) and data.X_test.shape == (10000, 784)
    assert data.X_train.dtype == np.float32 and data.X_test.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.y_test.dtype == np.int64
    assert data.X_train.min() == 0.0 and data.X_train.max() == 1.0
    assert set(np.unique(data.y_train)) == set(range(10)) == set(np.unique(data.y_test))
    assert np.bincount(data.y_test).tolist() == [1000] * 10  # Fashion-MNIST is balanced


# --------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_range_and_determinism():
    X, y = synthetic_mnist(2000, seed=3)
    assert X.shape == (2000, 784) and X.dtype == np.float32
    assert y.shape == (2000,) and y.dtype == np.int64
    assert X.min() >= 0.0 and X.max() <= 1.0
    assert np.bincount(y).tolist() == [200] * 10
    X2, y2 = synthetic_mnist(2000, seed=3)
    np.testing.assert_array_equal(X, X2)
    np.testing.assert_array_equal(y, y2)
    X3, _ = synthetic_mnist(2000, seed=4)
    assert not np.array_equal(X, X3)


def test_synthetic_other_shapes():
    X, y = synthetic_mnist(n_samples=33, n_features=5, n_classes=3, seed=0)
    assert X.shape == (33, 5) and set(np.unique(y)) == {0, 1, 2}


def test_synthetic_is_learnable():
    X, y = synthetic_mnist(6000, seed=0)
    X_train, y_train, X_test, y_test = X[:5000], y[:5000], X[5000:], y[5000:]
    centroids = np.stack([X_train[y_train == k].mean(axis=0) for k in range(10)])
    distances = (X_test**2).sum(1)[:, None] - 2 * X_test @ centroids.T + (centroids**2).sum(1)
    accuracy = np.mean(distances.argmin(axis=1) == y_test)
    assert accuracy > 0.5  # chance is 0.1


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"n_samples": 0}, ValueError),
        ({"n_samples": 2.5}, TypeError),
        ({"n_classes": 1}, ValueError),
        ({"n_features": True}, TypeError),
        ({"seed": -1}, ValueError),
    ],
)
def test_synthetic_argument_errors(kwargs, error):
    argument = next(iter(kwargs))
    with pytest.raises(error, match=argument):
        synthetic_mnist(**kwargs)
