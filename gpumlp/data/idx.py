"""Read and write IDX files, the format of MNIST and its drop-in replacements.

An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim`` big-endian
``uint32`` dimensions, then the elements in row-major order and big-endian byte order. The
distributed files are usually gzipped; we recognise gzip by its magic bytes, so a renamed or
recompressed file still reads.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np

from gpumlp.atomic import atomic_write

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
_GZIP_MAGIC = b"\x1f\x8b"


def _check_path(path: object, argument: str = "path") -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            f"{argument} must be a str or os.PathLike, got {type(path).__name__} {path!r}"
        )
    return Path(path)


def _read_bytes(path: Path) -> bytes:
    """Return the file's content, decompressed when it starts with the gzip magic bytes."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        # A truncated download usually fails here, before any IDX check can.
        raise ValueError(f"{path}: gzip data is corrupt or truncated ({exc})") from exc


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or raw) into a native-endian NumPy array.

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
    ValueError
        If the file is not a valid IDX file: bad magic bytes, unknown type code, ``ndim``
        outside 1..4, a short header, or a payload whose size differs from the one the
        dimensions give (truncated or trailing bytes). The message names the file.
    FileNotFoundError
        If the file does not exist.

    Examples
    --------
    >>> images = read_idx("train-images-idx3-ubyte.gz")  # doctest: +SKIP
    >>> images.shape, images.dtype  # doctest: +SKIP
    ((60000, 28, 28), dtype('uint8'))
    """
    path = _check_path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ValueError(
            f"{path} is not an IDX file: {len(data)} bytes, too short for the 4-byte magic number"
        )
    magic = data[:4]
    if magic[0] != 0 or magic[1] != 0:
        raise ValueError(
            f"{path} is not an IDX file: magic bytes 0x{magic.hex()}, expected 0x0000 followed by "
            "a type code and the number of dimensions"
        )
    type_code, ndim = magic[2], magic[3]
    if type_code not in IDX_DTYPES:
        allowed = ", ".join(f"0x{code:02X} ({dt.name})" for code, dt in IDX_DTYPES.items())
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02X}; allowed: {allowed}")
    if not 1 <= ndim <= MAX_NDIM:
        raise ValueError(f"{path}: IDX header gives ndim={ndim}; allowed: 1 to {MAX_NDIM}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"{path}: truncated header: {ndim} dimensions need {header_size} header bytes, "
            f"found {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[type_code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    found = len(data) - header_size
    if found < expected:
        raise ValueError(
            f"{path}: truncated: header says {expected} bytes of data (shape {shape}, "
            f"{dtype.name}), found {found}"
        )
    if found > expected:
        raise ValueError(
            f"{path}: {found - expected} trailing bytes: header says {expected} bytes of data "
            f"(shape {shape}, {dtype.name}), found {found}"
        )
    flat = np.frombuffer(data, dtype=dtype, offset=header_size)
    # astype copies, which also makes the result writable (frombuffer over bytes is not).
    return flat.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


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
