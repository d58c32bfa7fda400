"""Opening the files a user names, which may be anything: regular files only, read with a bound.

A path can name a FIFO (``open`` waits forever for a writer), a device (``/dev/zero`` reads
without end, ``/dev/watchdog`` acts when opened), a socket or a folder, directly or through a
symbolic link.  gpumlp reads regular files only, so every module that reads a file the user
named opens it with :func:`open_regular_file` (model files, IDX files, the command line's data
files), and every module that replaces a file checks it with :func:`check_replaceable` first
(:func:`gpumlp.atomic.atomic_write` does).

:func:`open_regular_file` checks the path with ``stat`` (so a special file is never opened),
then opens it with ``O_NONBLOCK`` (a FIFO swapped in between the two calls opens at once
instead of blocking) and checks the opened descriptor with ``fstat`` (what is checked is what
is read), and refuses a file larger than the caller's bound before a byte is read.

Examples
--------
>>> import os, tempfile
>>> from gpumlp.files import open_regular_file
>>> path = os.path.join(tempfile.mkdtemp(), "data.bin")
>>> with open(path, "wb") as out:
...     _ = out.write(b"abc")
>>> with open_regular_file(path, "data file") as handle:
...     handle.read()
b'abc'
>>> open_regular_file("/dev/zero", "data file")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
gpumlp.exceptions.FileFormatError: data file '/dev/zero' is a character device, not a regular file; ...
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from .exceptions import FileFormatError

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))
_OPEN_FLAGS = (os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_BINARY", 0))


def file_kind(mode: int) -> str:
    """``"a directory"``, ``"a FIFO (named pipe)"``, ... for an ``st_mode``."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "a special file"


def _refuse(path: str | os.PathLike, what: str, mode: int) -> FileFormatError:
    return FileFormatError(f"{what} {os.fspath(path)!r} is {file_kind(mode)}, not a regular "
                           "file; gpumlp reads regular files only (or links to them)")


def open_regular_file(path: str | os.PathLike, what: str = "file",
                      max_bytes: int | None = None) -> BinaryIO:
    """Open ``path`` for binary reading if it is a regular file (or a link to one).

    Parameters
    ----------
    path : str or os.PathLike
        The file to read.
    what : str, default "file"
        What the file is to the caller ("model file", "IDX file", "--data"), for messages.
    max_bytes : int, optional
        Refuse a file larger than this, before reading anything.

    Returns
    -------
    BinaryIO
        The open file (blocking reads, as from ``open(path, "rb")``); the caller closes it.

    Raises
    ------
    gpumlp.exceptions.FileFormatError
        A ``ValueError``: ``path`` is a directory, FIFO, device or socket, or is larger than
        ``max_bytes``. The message names ``path`` and what it is.
    FileNotFoundError, PermissionError
        As ``open`` raises them.
    """
    mode = os.stat(path).st_mode  # never open a special file (opening a device can act)
    if not stat.S_ISREG(mode):
        raise _refuse(path, what, mode)
    fd = os.open(path, _OPEN_FLAGS)  # O_NONBLOCK: a FIFO swapped in since stat cannot block
    try:
        info = os.fstat(fd)  # what was opened, not what the path named a moment ago
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(path, what, info.st_mode)
        if max_bytes is not None and info.st_size > max_bytes:
            raise FileFormatError(f"{what} {os.fspath(path)!r} has {info.st_size} bytes; "
                                  f"allowed: at most {max_bytes}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def check_replaceable(path: str | os.PathLike, what: str = "file") -> None:
    """Refuse to replace anything at ``path`` (links followed) but a regular file.

    A save replaces a file's content; it must never turn a FIFO, a device node or a folder
    into a regular file (as root, ``os.replace`` over ``/dev/null`` would do exactly that).

    Raises
    ------
    ValueError
        ``path`` (or the final target of the link it is) exists and is not a regular file.
    """
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there (or a dangling link, whose target will be created)
    if not stat.S_ISREG(mode):
        raise ValueError(f"{what} {os.fspath(path)!r} is {file_kind(mode)}; only a regular "
                         "file is replaced: choose a file name")
