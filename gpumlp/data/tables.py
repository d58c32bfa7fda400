"""Your own data as a table: a CSV file with a header row, an ``.npz`` file of ``X`` (and
``y``) arrays, or a Parquet file (needs ``pyarrow``), read into a float64 feature matrix and
a target column.

Every column but the target is a feature and must hold numbers; the target may hold numbers
or text (class labels).  A bad file is a :class:`TableError` whose one-line message names
the file, the row (a CSV file's line number, counting the header as line 1; an array or
Parquet row from 0) and the column.  Files are opened with
:func:`gpumlp.files.open_regular_file` (a FIFO, device or folder is refused, never read).  A
CSV file is read a line at a time into a flat float64 buffer (8 bytes a value), never whole
into memory as text.

Examples
--------
>>> import os, tempfile
>>> from gpumlp.data.tables import read_table
>>> path = os.path.join(tempfile.mkdtemp(), "tiny.csv")
>>> _ = open(path, "w").write("a,b,label\\n1,2,yes\\n3,4.5,no\\n")
>>> table = read_table(path, target="label")
>>> table.X.tolist(), table.y.tolist(), table.feature_names
([[1.0, 2.0], [3.0, 4.5]], ['yes', 'no'], ['a', 'b'])
"""

from __future__ import annotations

import array
import csv
import io
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence, TextIO

import numpy as np

from ..atomic import atomic_write
from ..exceptions import FileFormatError
from ..files import open_regular_file

#: File suffixes and the format each one means.
FORMATS = {".csv": "csv", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}
#: The longest CSV field accepted (characters); a longer one is a damaged file, not data.
MAX_FIELD_CHARS = 1 << 20
#: The longest CSV line read (bytes): lines are read one at a time, never more than this.
MAX_LINE_BYTES = 1 << 24


class TableError(FileFormatError):
    """A data file that cannot be read as a table; the message names the file, row and
    column (a ``ValueError``, as every :class:`~gpumlp.exceptions.FileFormatError`)."""


@dataclass
class Table:
    """Features ``X`` (float64, one row per sample), the target ``y`` (None when not read),
    the feature columns' names and the target's name."""

    path: str
    X: np.ndarray
    y: np.ndarray | None
    feature_names: list[str]
    target: str | None


def table_format(path: str | os.PathLike) -> str:
    """``"csv"``, ``"npz"`` or ``"parquet"`` from the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise TableError(f"{str(path)!r}: unknown file type {suffix or '(none)'!r}; allowed: "
                         f"{', '.join(FORMATS)}")
    return FORMATS[suffix]


def read_table(path: str | os.PathLike, target: str | None = None,
               features: Sequence[str] | None = None) -> Table:
    """Read ``path`` (CSV, ``.npz`` or Parquet, by its suffix).

    Parameters
    ----------
    path : str or os.PathLike
    target : str, optional
        The target column (for ``.npz``: the ``y`` array, whatever the name); None reads
        features only.
    features : sequence of str, optional
        The feature columns, in this order (others are ignored); by default every column
        but the target.  An ``.npz`` file's columns are named ``x0``, ``x1``, ...

    Raises
    ------
    TableError
        A malformed file, a missing column, a cell that is not a finite number, a row of
        the wrong length.
    FileFormatError
        Not a regular file (a FIFO, a device, a folder).
    FileNotFoundError
        No file there.
    """
    kind = table_format(path)
    reader = {"csv": _read_csv, "npz": _read_npz, "parquet": _read_parquet}[kind]
    with open_regular_file(path, "data file") as handle:
        table = reader(str(path), handle, target, None if features is None else list(features))
    if table.X.shape[0] == 0:
        raise TableError(f"{path}: no data rows")
    return table


# ------------------------------------------------------------------------------------- CSV
def _read_csv(path: str, raw: BinaryIO, target: str | None,
              features: list[str] | None) -> Table:
    csv.field_size_limit(MAX_FIELD_CHARS)
    rows = csv.reader(_text_lines(path, raw))  # parsed as read: one line in memory at a time
    try:
        header = next(rows, None)
        if header is None:
            raise TableError(f"{path}: empty file; a CSV file needs a header row of "
                             "column names")
        header = [name.strip() for name in header]
        picked, target_at = _columns(path, header, target, features)
        values, labels = array.array("d"), []
        end = rows.line_num
        for row in rows:
            line, end = end + 1, rows.line_num  # its first line (quotes may span lines)
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # a blank line (e.g. the last one)
            if len(row) != len(header):
                raise TableError(f"{path}, line {line}: {len(row)} fields, but the header "
                                 f"has {len(header)}")
            values.extend(_number(path, line, header[i], row[i]) for i in picked)
            if target_at is not None:
                label = row[target_at].strip()
                if not label:
                    raise TableError(f"{path}, line {line}, column {header[target_at]!r}: "
                                     "empty target cell (a missing label)")
                labels.append(label)
    except csv.Error as exc:
        raise TableError(f"{path}, line {rows.line_num}: {exc}") from None
    X = np.frombuffer(values, dtype=np.float64).reshape(-1, len(picked)) if picked else (
        np.zeros((len(labels), 0)))
    y = _labels(path, labels, header[target_at]) if target_at is not None else None
    return Table(path, X, y, [header[i] for i in picked], target)


def _text_lines(path: str, raw: BinaryIO) -> Iterator[str]:
    """The file's lines as text, each decoded as UTF-8 (a byte-order mark dropped), read
    with a bound on their length."""
    number = 0
    while True:
        line = raw.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise TableError(f"{path}, line {number}: longer than MAX_LINE_BYTES="
                             f"{MAX_LINE_BYTES} bytes")
        try:
            yield line.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError as exc:
            raise TableError(f"{path}, line {number}: not UTF-8 text (byte {exc.start + 1} "
                             f"of the line: {exc.reason})") from None


def _columns(path: str, header: list[str], target: str | None,
             features: list[str] | None) -> tuple[list[int], int | None]:
    """Indices of the feature columns and of the target column in ``header``."""
    for i, name in enumerate(header):
        if not name:
            raise TableError(f"{path}, line 1: column {i + 1} has no name; the first row must "
                             "name every column")
        if header.index(name) != i:
            raise TableError(f"{path}, line 1: column name {name!r} appears twice")
    target_at = None
    if target is not None:
        if target not in header:
            raise TableError(f"{path}: no column {target!r} (the target); columns: "
                             f"{_listing(header)}")
        target_at = header.index(target)
    if features is None:
        picked = [i for i in range(len(header)) if i != target_at]
    else:
        missing = [name for name in features if name not in header]
        if missing:
            raise TableError(f"{path}: no column {missing[0]!r}, a feature the model was "
                             f"trained on; columns: {_listing(header)}")
        picked = [header.index(name) for name in features]
    if not picked:
        raise TableError(f"{path}: no feature columns (only the target {target!r})")
    return picked, target_at


def _number(path: str, line: int, column: str, cell: str) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        what = "empty (a missing value)" if not text else f"{_short(text)} is not a number"
        raise TableError(f"{path}, line {line}, column {column!r}: {what}") from None
    if not math.isfinite(value):
        raise TableError(f"{path}, line {line}, column {column!r}: {_short(text)} is not a "
                         "finite number")
    return value


def _labels(path: str, labels: list[str], column: str) -> np.ndarray:
    """Target cells as integers, or floats, when they all are; else as text."""
    for kind in (int, float):
        try:
            values = np.array([kind(label) for label in labels])
        except (ValueError, OverflowError):
            continue
        if kind is float and not np.isfinite(values).all():
            row = int(np.flatnonzero(~np.isfinite(values))[0])
            raise TableError(f"{path}, column {column!r}: target {labels[row]!r} (data row "
                             f"{row + 1}) is not a finite number")
        return values
    return np.array(labels, dtype=str)


# ------------------------------------------------------------------------------------- npz
def _read_npz(path: str, raw: BinaryIO, target: str | None,
              features: list[str] | None) -> Table:
    try:
        with np.load(raw, allow_pickle=False) as archive:
            if "X" not in archive.files:
                raise TableError(f"{path}: no array 'X' (the features); arrays: "
                                 f"{_listing(archive.files)}")
            if target is not None and "y" not in archive.files:
                raise TableError(f"{path}: no array 'y' (the target); arrays: "
                                 f"{_listing(archive.files)}")
            X = archive["X"]
            y = archive["y"] if target is not None else None
    except TableError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise TableError(f"{path}: not a readable .npz file ({' '.join(str(exc).split())})") \
            from None
    if X.ndim != 2 or X.dtype.kind not in "biuf":
        raise TableError(f"{path}: array 'X' must be 2-D numbers (rows, features); got shape "
                         f"{X.shape}, dtype {X.dtype}")
    names = [f"x{i}" for i in range(X.shape[1])]
    if features is not None:
        if len(features) != X.shape[1]:
            raise TableError(f"{path}: array 'X' has {X.shape[1]} columns; the model was "
                             f"trained on {len(features)} features")
        names = list(features)
    X = np.asarray(X, dtype=np.float64)
    bad = np.argwhere(~np.isfinite(X))
    if bad.size:
        row, column = bad[0]
        raise TableError(f"{path}, row {row}, column {column} of 'X': {X[row, column]} is not "
                         "a finite number")
    if y is not None:
        y = _check_npz_target(path, y, X.shape[0])
    return Table(path, X, y, names, None if target is None else "y")


def _check_npz_target(path: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1 or y.shape[0] != n:
        raise TableError(f"{path}: array 'y' must be 1-D with one value per row of 'X' ({n}); "
                         f"got shape {y.shape}")
    if y.dtype.kind not in "biufUS":
        raise TableError(f"{path}: array 'y' has dtype {y.dtype}; allowed: numbers or text")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        row = int(np.flatnonzero(~np.isfinite(y))[0])
        raise TableError(f"{path}, row {row} of 'y': {y[row]} is not a finite number")
    return y.astype(str) if y.dtype.kind == "S" else y


# --------------------------------------------------------------------------------- Parquet
def _read_parquet(path: str, raw: BinaryIO, target: str | None,
                  features: list[str] | None) -> Table:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise TableError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow, or "
                         "gpumlp[parquet])") from None
    try:
        data = parquet.read_table(raw)
    except Exception as exc:  # pyarrow raises its own error types for damaged files
        raise TableError(f"{path}: not a readable Parquet file "
                         f"({' '.join(str(exc).split())})") from None
    header = list(data.column_names)
    picked, target_at = _columns(path, header, target, features)
    X = np.empty((data.num_rows, len(picked)))
    for j, i in enumerate(picked):
        X[:, j] = _parquet_numbers(path, header[i], data.column(i))
    y = None
    if target_at is not None:
        column = data.column(target_at)
        if column.null_count:
            row = _first_null(column)
            raise TableError(f"{path}, row {row}, column {header[target_at]!r}: missing target "
                             "(null)")
        y = np.asarray(column.to_numpy(zero_copy_only=False))
        if y.dtype.kind == "O":
            y = np.array([str(v) for v in y], dtype=str)
        y = _check_npz_target(path, y, data.num_rows)
    return Table(path, X, y, [header[i] for i in picked], target)


def _parquet_numbers(path: str, name: str, column: Any) -> np.ndarray:
    if column.null_count:
        raise TableError(f"{path}, row {_first_null(column)}, column {name!r}: empty (a "
                         "missing value)")
    values = np.asarray(column.to_numpy(zero_copy_only=False))
    if values.dtype.kind not in "biuf":
        raise TableError(f"{path}, row 0, column {name!r}: {_short(str(values[0]))} is not a "
                         f"number (the column holds {column.type}); features must be numbers")
    values = values.astype(np.float64)
    if not np.isfinite(values).all():
        row = int(np.flatnonzero(~np.isfinite(values))[0])
        raise TableError(f"{path}, row {row}, column {name!r}: {values[row]} is not a finite "
                         "number")
    return values


def _first_null(column: Any) -> int:
    return int(np.flatnonzero(np.asarray(column.is_null().to_numpy(zero_copy_only=False)))[0])


# ----------------------------------------------------------------------------- writing
def write_csv(destination: str | os.PathLike | TextIO, header: Sequence[str],
              columns: Sequence[np.ndarray]) -> None:
    """Write ``columns`` (equal lengths) under a ``header`` row: to a path atomically (the
    file is complete or not there), or to an open text stream such as ``sys.stdout``.
    Floats are written in their shortest round-trip form."""
    if isinstance(destination, (str, os.PathLike)):
        with atomic_write(destination) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
            _write_rows(text, header, columns)
            text.flush()
            text.detach()  # the binary file stays open for atomic_write to finish
        return
    _write_rows(destination, header, columns)
    destination.flush()


def _write_rows(stream: TextIO, header: Sequence[str], columns: Sequence[np.ndarray]) -> None:
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(header)
    cells = [column.tolist() for column in columns]
    writer.writerows(zip(*cells))


# --------------------------------------------------------------------------------- helpers
def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(map(repr, names[:12]))
    return shown + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
