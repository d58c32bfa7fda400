"""Atomic file writes: a file is either fully written or not there at all.

The new content goes to a temporary file beside the target, which is renamed over it. Users
expect a save to change a file's content, not what kind of file it is, so:

- an existing file keeps its permission mode (a ``0644`` file stays ``0644``); a new file gets
  the mode ``open()`` would give it (``0666`` less the umask), not ``mkstemp``'s ``0600``;
- when the path is a symbolic link, the link's final target is replaced and the link stays;
- only a regular file is replaced: a FIFO, device node or folder there raises ``ValueError``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from .files import check_replaceable


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file beside ``path`` for binary writing; rename it over ``path`` on success.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write. Missing parent directories are created. A symbolic link is
        followed to its final target (created if the link dangles), which is what gets
        replaced.

    Yields
    ------
    BinaryIO
        The temporary file, open for writing.

    Notes
    -----
    The rename is atomic on POSIX and Windows, so a crash or an exception never leaves a
    half-written file where a reader expects a complete one; on an exception the temporary
    file is removed and the target is untouched.
    """
    target = Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        existing_mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        existing_mode = None
    fd, tmp = _create_temporary(target, 0o600 if existing_mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            if existing_mode is not None:
                _set_mode(handle.fileno(), tmp, existing_mode)
            os.fsync(handle.fileno())
        check_replaceable(target)  # again: a FIFO may have appeared while we wrote
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_directory(target.parent)


def _create_temporary(target: Path, mode: int) -> tuple[int, str]:
    """A new file beside ``target``, created exclusively with ``mode`` (the kernel applies the
    umask, so ``0o666`` gives exactly what a plain ``open()`` would)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = str(target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, mode), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {target}")


def _set_mode(fd: int, path: str, mode: int) -> None:
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # Windows: only the read-only bit exists
        os.chmod(path, mode)


def _sync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); harmless where directories cannot be opened."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
