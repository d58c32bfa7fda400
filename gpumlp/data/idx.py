"""Read and write IDX files, the format of MNIST and its drop-in replacements.

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim`` big-endian
``uint32`` dimensions, then the elements in row-major order and big-endian byte order. The
distributed files are usually gzipped; we recognise gzip by its magic bytes, so a renamed or
recompressed file still reads.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from gpumlp.atomic import atomic_write
from gpumlp.exceptions import FileFormatError
from gpumlp.files import open_regular_file

#: IDX type code -> big-endian element dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

#: Native dtype -> IDX type code, for writing.
_TYPE_CODES: dict[np.dtype, int] = {
    dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()
}

MAX_NDIM = 4
#: Most bytes of data an IDX file may declare (8 GiB; Fashion-MNIST's largest file holds
#: 47 MB). Checked from the header, before any payload is read or decompressed.
MAX_IDX_BYTES = 2**33
#: Deflate expands data by at most about 1032:1: a gzip file of ``n`` bytes cannot hold
#: more than this many times ``n`` bytes, whatever its header declares.
_MAX_DEFLATE_RATIO = 1032
_GZIP_MAGIC = b"\x1f\x8b"


def _check_path(path: object, argument: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{argument} must be a str or os.PathLike, got {type(path).__name__} {path!r}"
        )
    return Path(path)


#: Bytes read from the (decompressed) stream at a time.
_CHUNK = 1 << 20
#: Trailing bytes counted (then discarded) to report how many there are; beyond this the
#: message says "at least", so a gzip bomb after a valid payload costs no more than this.
_TRAILING_COUNT_LIMIT = 1 << 16


@contextlib.contextmanager
def _idx_stream(path: Path) -> Iterator[tuple[BinaryIO, int | None]]:
    """The file's content as a stream, decompressed as it is read when the file starts with
    the gzip magic bytes, and its size when known without decompressing (plain files).
    Corrupt gzip data met while reading becomes a ``FileFormatError`` naming the file."""
    with open_regular_file(path, "IDX file") as raw:
        compressed = raw.read(2) == _GZIP_MAGIC
        raw.seek(0)
        stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        raw_size = os.fstat(raw.fileno()).st_size
        # Plain: the exact size. Gzip: the most its stream can inflate to (a bound).
        file_size = raw_size if not compressed else None
        bound = raw_size if not compressed else raw_size * _MAX_DEFLATE_RATIO
        try:
            with stream:
                yield stream, file_size, bound
        except (OSError, EOFError, zlib.error, struct.error) as exc:
            if not compressed:  # a plain file: a real I/O error, not bad content
                raise
            # A truncated download usually fails here, before any IDX check can.
            raise FileFormatError(f"{path}: gzip data is corrupt or truncated "
                                  f"({type(exc).__name__}: {exc})") from None


def _read_exactly(stream: BinaryIO, size: int) -> bytearray:
    """Up to ``size`` bytes (fewer only at the end of the stream), read in chunks so that a
    stream shorter than announced never costs more memory than it holds."""
    buffer = bytearray()
    while len(buffer) < size:
        chunk = stream.read(min(_CHUNK, size - len(buffer)))
        if not chunk:
            break
        buffer += chunk
    return buffer


def _count_trailing(stream: BinaryIO) -> tuple[int, bool]:
    """How many bytes remain (at most the count limit) and whether that is all of them."""
    count = len(stream.read(_TRAILING_COUNT_LIMIT))
    return count, not stream.read(1)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or raw) into a native-endian NumPy array.

    The header is read first, then exactly the number of bytes it declares, then a probe for
    trailing data (up to 64 KiB are counted for the message). A gzip file is decompressed as
    it is read, so one whose header declares 10 images followed by hundreds of MB of zeros is
    rejected after inflating about 72 KB, and memory never exceeds the declared payload.

    Parameters
    ----------
    path : str or os.PathLike
        The file. Gzip compression is detected from the content, not the name.

    Returns
    -------
    numpy.ndarray
        A new, writable array with the shape the header gives and the header's element type
        (uint8, int8, int16, int32, float32 or float64) in native byte order.

    Raises
    ------
    gpumlp.exceptions.FileFormatError
        A ``ValueError``: the path is not a regular file (a FIFO, a device, a folder), or
        the file is not a valid IDX file: bad magic bytes, unknown type code, ``ndim``
        outside 1..4, a short header, a payload whose size differs from the one the
        dimensions give (truncated or trailing bytes), a declared size above
        :data:`MAX_IDX_BYTES` (refused from the header), or corrupt gzip data. The message
        names the file.
    FileNotFoundError
        If the file does not exist.

    Examples
    --------
    >>> images = read_idx("train-images-idx3-ubyte.gz")  # doctest: +SKIP
    >>> images.shape, images.dtype  # doctest: +SKIP
    ((60000, 28, 28), dtype('uint8'))
    """
    path = _check_path(path)
    with _idx_stream(path) as (stream, file_size, bound):
        return _read_idx_stream(path, stream, file_size, bound)


def read_idx_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
    """The shape and (native) element type an IDX file declares, read from its header only.

    Lets a caller that knows what it needs (60000 images of 28x28 uint8, say) reject a file
    before its payload is read or decompressed.

    Parameters
    ----------
    path : str or os.PathLike
        The file, gzipped or raw.

    Returns
    -------
    shape : tuple of int
    dtype : numpy.dtype

    Raises
    ------
    gpumlp.exceptions.FileFormatError
        If the header is not a valid IDX header (see :func:`read_idx`).
    """
    path = _check_path(path)
    with _idx_stream(path) as (stream, _, _):
        shape, dtype, _ = _read_header(path, stream)
    return shape, dtype.newbyteorder("=")


def _read_header(path: Path, stream: BinaryIO) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, big-endian dtype and header size in bytes, read from the start of ``stream``."""
    magic = _read_exactly(stream, 4)
    if len(magic) < 4:
        raise FileFormatError(
            f"{path} is not an IDX file: {len(magic)} bytes, too short for the 4-byte magic number"
        )
    if magic[0] != 0 or magic[1] != 0:
        raise FileFormatError(
            f"{path} is not an IDX file: magic bytes 0x{magic.hex()}, expected 0x0000 followed by "
            "a type code and the number of dimensions"
        )
    type_code, ndim = magic[2], magic[3]
    if type_code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{code:02X} ({dt.name})" for code, dt in IDX_DTYPES.items())
        raise FileFormatError(f"{path}: unknown IDX type code 0x{type_code:02X}; allowed: {allowed}")
    if not 1 <= ndim <= MAX_NDIM:
        raise FileFormatError(f"{path}: IDX header gives ndim={ndim}; allowed: 1 to {MAX_NDIM}")
    header_size = 4 + 4 * ndim
    dims = _read_exactly(stream, 4 * ndim)
    if len(dims) < 4 * ndim:
        raise FileFormatError(
            f"{path}: truncated header: {ndim} dimensions need {header_size} header bytes, "
            f"found {4 + len(dims)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(bytes(dims), dtype=">u4"))
    return shape, IDX_DTYPES[type_code], header_size


def _read_idx_stream(path: Path, stream: BinaryIO, file_size: int | None,
                     bound: int) -> np.ndarray:
    shape, dtype, header_size = _read_header(path, stream)
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    described = f"header says {expected} bytes of data (shape {shape}, {dtype.name})"
    if expected > MAX_IDX_BYTES:
        raise FileFormatError(f"{path}: {described}; allowed: at most "
                              f"MAX_IDX_BYTES={MAX_IDX_BYTES}")
    if file_size is None and expected + header_size > bound:  # gzip: before inflating
        raise FileFormatError(f"{path}: truncated: {described}, but its "
                              f"{bound // _MAX_DEFLATE_RATIO} compressed bytes inflate to at "
                              f"most {bound}")
    if file_size is not None and file_size - header_size != expected:
        found = file_size - header_size  # a plain file: decide before reading anything
        if found < expected:
            raise FileFormatError(f"{path}: truncated: {described}, found {found}")
        raise FileFormatError(f"{path}: {found - expected} trailing bytes: {described}, found {found}")
    payload = _read_exactly(stream, expected)
    if len(payload) < expected:
        raise FileFormatError(f"{path}: truncated: {described}, found {len(payload)}")
    extra, complete = _count_trailing(stream)
    if extra:
        count = f"{extra}" if complete else f"at least {extra + 1}"
        raise FileFormatError(f"{path}: {count} trailing bytes: {described}, found "
                         f"{'' if complete else 'at least '}{expected + extra + (not complete)}")
    # A view of the bytearray, which is writable; swap to native byte order in place.
    flat = np.frombuffer(payload, dtype=dtype)
    if not dtype.isnative:
        flat = flat.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return flat.reshape(shape)


def write_idx(
    path: str | os.PathLike, array: np.ndarray, compress: bool | None = None
) -> Path:
    """Write ``array`` to ``path`` as an IDX file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination. Written through a temporary file and renamed, so readers never see a
        partial file.
    array : array_like
        1 to 4 dimensions, dtype uint8, int8, int16, int32, float32 or float64; every
        dimension below 2**32.
    compress : bool or None, default None
        Gzip the file. ``None`` compresses when the name ends in ``.gz``.

    Returns
    -------
    pathlib.Path
        The path written.

    Examples
    --------
    >>> import numpy as np
    >>> write_idx("labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))  # doctest: +SKIP
    PosixPath('labels-idx1-ubyte.gz')
    """
    path = _check_path(path)
    if compress is not None and not isinstance(compress, bool):
        raise TypeError(f"compress must be True, False or None, got {compress!r}")
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _TYPE_CODES:
        allowed = ", ".join(dt.name for dt in IDX_DTYPES.values())
        raise TypeError(
            f"array has dtype {array.dtype}, which IDX cannot store; allowed: {allowed}"
        )
    if not 1 <= array.ndim <= MAX_NDIM:
        raise ValueError(
            f"array has ndim={array.ndim} (shape {array.shape}); IDX allows 1 to {MAX_NDIM}"
        )
    if any(d >= 2**32 for d in array.shape):
        raise ValueError(f"array has shape {array.shape}; IDX dimensions must be below 2**32")
    header = bytes([0, 0, _TYPE_CODES[native], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    payload = np.ascontiguousarray(array, dtype=native.newbyteorder(">")).tobytes()
    if compress is None:
        compress = path.name.endswith(".gz")
    with atomic_write(path) as handle:
        if compress:
            # mtime=0 makes the output reproducible; filename keeps the temp name out of it.
            with gzip.GzipFile(
                filename=path.name, fileobj=handle, mode="wb", compresslevel=6, mtime=0
            ) as gz:
                gz.write(header)
                gz.write(payload)
        else:
            handle.write(header)
            handle.write(payload)
    return path
