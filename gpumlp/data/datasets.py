"""Find, download and load the MNIST family: ``mnist``, ``fashion-mnist``, ``kmnist``.

Look-up order for a dataset ``name`` (the first directory holding all four files wins):

1. the ``path`` argument, when given (and then only it: a wrong explicit path is an error,
   not a silent fall-through);
2. ``$GPUMLP_DATA/<name>``, then ``$GPUMLP_DATA`` itself;
3. the user cache, ``$XDG_CACHE_HOME/gpumlp/<name>`` (default ``~/.cache/gpumlp/<name>``);
4. system locations, ``/usr/share/datasets/<name>`` (Debian's ``dataset-fashion-mnist``
   installs there) and ``/usr/local/share/datasets/<name>``;
5. a download into the user cache, each file MD5-checked against the official checksum.

The checksums apply to downloads only: local copies may be recompressed (Debian's are), so
they are validated structurally when loaded (IDX validity, counts, shapes, label range).
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np

from gpumlp import config
from gpumlp.atomic import atomic_write
from gpumlp.data.idx import read_idx, read_idx_header

#: The four files of every dataset, by role, without the ``.gz`` suffix.
FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: System directories searched, in order, for ``<dir>/<name>``.
SYSTEM_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets"), Path("/usr/local/share/datasets"))

#: Seconds a download may stall before it fails.
DOWNLOAD_TIMEOUT = 60.0


@dataclass(frozen=True)
class DatasetSpec:
    """What we know of one dataset: where to download it and what it must contain."""

    name: str
    url: str  # base URL; the file name (with .gz) is appended
    md5: Mapping[str, str]  # official MD5 of each downloaded .gz file, by file name
    n_train: int = 60000
    n_test: int = 10000
    image_shape: tuple[int, int] = (28, 28)
    n_classes: int = 10
    install_hint: str = ""  # how to get it without a download, when there is a way


# MD5s are those of the official .gz files, as in torchvision/datasets/mnist.py (MNIST,
# FashionMNIST and KMNIST classes) and other public loaders that agree with it.
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        install_hint="on Debian/Ubuntu: apt-get install dataset-fashion-mnist",
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        url="http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        md5={
            "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
            "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
            "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
            "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
        },
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is in none of the places searched and could not be downloaded."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded dataset: ``X`` float32 ``(n, 784)`` in [0, 1], ``y`` int64 class labels."""

    X_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    X_test: np.ndarray = field(repr=False)
    y_test: np.ndarray = field(repr=False)
    name: str
    source: str  # the directory the files were read from


def _spec(name: object) -> DatasetSpec:
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__} {name!r}")
    key = name.strip().lower().replace("_", "-")
    if key not in DATASETS:
        raise ValueError(f"name={name!r} is not a known dataset; known: {sorted(DATASETS)}")
    return DATASETS[key]


def _cache_dir(name: str) -> Path:
    base = config.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpumlp" / name


def _file_in(directory: Path, stem: str) -> Path | None:
    """Return the ``.gz`` or uncompressed file ``stem`` in ``directory``, if there is one."""
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    return None


def _holds_dataset(directory: Path) -> bool:
    return directory.is_dir() and all(_file_in(directory, s) is not None for s in FILES.values())


def _search_dirs(name: str) -> list[Path]:
    """Local directories to search for ``name``, in order (not the explicit path)."""
    dirs = []
    env = config.get("GPUMLP_DATA")
    if env is not None:
        dirs += [env / name, env]
    dirs.append(_cache_dir(name))
    dirs += [base / name for base in SYSTEM_DIRS]
    return dirs


def _fetch_url(url: str, timeout: float) -> BinaryIO:
    """Open ``url`` for reading. Tests replace this function so they never touch the network."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed https/http URLs


def _download(spec: DatasetSpec, directory: Path) -> None:
    """Download the files missing from ``directory``, checking each one's MD5 before keeping it."""
    for stem in FILES.values():
        if _file_in(directory, stem) is not None:
            continue
        filename = f"{stem}.gz"
        url = spec.url + filename
        target = directory / filename
        digest = hashlib.md5(usedforsecurity=False)
        with atomic_write(target) as out, _fetch_url(url, DOWNLOAD_TIMEOUT) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            if digest.hexdigest() != spec.md5[filename]:
                # Raising inside atomic_write deletes the temporary file: nothing bad is kept.
                raise ValueError(
                    f"checksum mismatch for {url}: MD5 {digest.hexdigest()}, expected "
                    f"{spec.md5[filename]}; the file was deleted, try again or download it by hand"
                )


def _not_found(spec: DatasetSpec, searched: list[Path], reason: str) -> DatasetNotFoundError:
    places = "\n".join(f"  - {d}" for d in searched)
    files = ", ".join(f"{s}[.gz]" for s in FILES.values())
    ways = [f"set GPUMLP_DATA to a directory holding {spec.name}/ with {files}"]
    if spec.install_hint:
        ways.insert(0, spec.install_hint)
    ways.append(f"allow the download (download=True, with network access) from {spec.url}")
    how = "\n".join(f"  - {w}" for w in ways)
    return DatasetNotFoundError(
        f"dataset {spec.name!r} not found ({reason}). Searched:\n{places}\nTo get it:\n{how}"
    )


def locate_dataset(
    name: str, path: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Return the directory holding the four files of dataset ``name``, downloading if needed.

    Parameters
    ----------
    name : str
        One of ``DATASETS`` (``"mnist"``, ``"fashion-mnist"``, ``"kmnist"``).
    path : str or os.PathLike, optional
        A directory holding the four files (``.gz`` or uncompressed). When given, no other
        place is searched.
    download : bool, default True
        Download into the user cache when no local copy is found.

    Raises
    ------
    ValueError
        Unknown ``name``, or a downloaded file whose MD5 does not match.
    DatasetNotFoundError
        (a ``FileNotFoundError``) Not found, and not downloadable; the message lists the
        places searched and how to get the data.

    Examples
    --------
    >>> locate_dataset("fashion-mnist")  # doctest: +SKIP
    PosixPath('/usr/share/datasets/fashion-mnist')
    """
    spec = _spec(name)
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
        directory = Path(path).expanduser()
        if _holds_dataset(directory):
            return directory
        raise _not_found(spec, [directory], f"path={str(path)!r} lacks some of the four files")
    searched = _search_dirs(spec.name)
    for directory in searched:
        if _holds_dataset(directory):
            return directory
    if not download:
        raise _not_found(spec, searched, "download=False")
    cache = _cache_dir(spec.name)
    try:
        _download(spec, cache)
    except OSError as exc:  # URLError, timeouts, refused connections: all OSErrors
        raise _not_found(spec, searched, f"download from {spec.url} failed: {exc}") from exc
    return cache


def find_datasets() -> dict[str, str | None]:
    """Return where each known dataset is found locally (``None`` if nowhere); never downloads.

    Examples
    --------
    >>> find_datasets()  # doctest: +SKIP
    {'fashion-mnist': '/usr/share/datasets/fashion-mnist', 'kmnist': None, 'mnist': None}
    """
    found: dict[str, str | None] = {}
    for name in sorted(DATASETS):
        hit = next((d for d in _search_dirs(name) if _holds_dataset(d)), None)
        found[name] = None if hit is None else str(hit)
    return found


def _load_split(
    spec: DatasetSpec, directory: Path, split: str, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate one split; return ``X`` float32 ``(n, pixels)`` and ``y`` int64."""
    images_file = _file_in(directory, FILES[f"{split}_images"])
    labels_file = _file_in(directory, FILES[f"{split}_labels"])
    # Headers first: a file declaring the wrong shape is rejected before its payload is read.
    for file, kind, shape in ((images_file, "images", (n, *spec.image_shape)),
                              (labels_file, "labels", (n,))):
        found_shape, found_dtype = read_idx_header(file)
        if found_dtype != np.uint8 or found_shape != shape:
            raise ValueError(
                f"{file}: expected uint8 {kind} of shape {shape} for {spec.name}, "
                f"found {found_dtype} {found_shape}"
            )
    images, labels = read_idx(images_file), read_idx(labels_file)
    if labels.max(initial=0) >= spec.n_classes:
        raise ValueError(
            f"{labels_file}: label {int(labels.max())} out of range; "
            f"allowed 0..{spec.n_classes - 1}"
        )
    X = images.reshape(n, -1).astype(np.float32)
    X /= np.float32(255)  # divide (not multiply by 1/255) so 255 maps to exactly 1.0
    return X, labels.astype(np.int64)


def load_dataset(
    name: str, path: str | os.PathLike | None = None, download: bool = True
) -> Dataset:
    """Load dataset ``name`` as float32 features in [0, 1] and int64 labels.

    Finds the files with :func:`locate_dataset` (same ``path`` and ``download`` meaning) and
    validates them: IDX structure, 60000/10000 images of 28x28 uint8, labels in 0..9.

    Returns
    -------
    Dataset
        ``X_train`` ``(60000, 784)`` and ``X_test`` ``(10000, 784)`` float32; ``y_train`` and
        ``y_test`` int64; ``name``; ``source``, the directory read.

    Examples
    --------
    >>> data = load_dataset("fashion-mnist", download=False)  # doctest: +SKIP
    >>> data.X_train.shape, data.y_test.dtype  # doctest: +SKIP
    ((60000, 784), dtype('int64'))
    """
    spec = _spec(name)
    directory = locate_dataset(spec.name, path=path, download=download)
    X_train, y_train = _load_split(spec, directory, "train", spec.n_train)
    X_test, y_test = _load_split(spec, directory, "test", spec.n_test)
    return Dataset(X_train, y_train, X_test, y_test, name=spec.name, source=str(directory))
