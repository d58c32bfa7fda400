"""Option parsing shared by the ``gpumlp`` subcommands: one-line errors, help and checks.

Every check names the option as the user typed it (``--epochs must be >= 1, got -1``) and runs
before any data is loaded, so a typo costs nothing.  Paths are checked before the work that
writes them, and no file a user did not name is ever overwritten: :func:`unused_path` picks
``name-2.npz``, ``name-3.npz``, ... instead.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .data.tables import TableError, table_format
from .files import check_replaceable, open_regular_file


class OptionError(ValueError):
    """An option value that cannot work; the message starts with the option's name."""


class CommandParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: ``gpumlp train: error: ...``."""

    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse writes "argument --epochs: --epochs must be ..." for our own types.
        match = re.match(r"argument (\S+): (--.*)", message, flags=re.S)
        if match:
            message = match.group(2)
        message = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the "
                     "options)\n")


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default once, and only when there is one worth showing.

    (``ArgumentDefaultsHelpFormatter`` prints "(default: None)" and "(default: False)", and a
    second default beside one the help text already gives.)
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "%(default)" in text or "default" in text
                or default is None or default is False or default == ""
                or default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


# ------------------------------------------------------------------------------ value types
def integer(option: str, minimum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{option} must be an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"{option} must be >= {minimum}, got {value}")
        return value

    return parse


def real(option: str, low: float | None = None, high: float | None = None,
         low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type``: a finite float in the interval the bounds describe."""
    if low is not None and high is not None:
        allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        allowed = f"{'<' if high_open else '<='} {high:g}"
    else:
        allowed = "finite"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be a number, got {text!r}") \
                from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"{option} must be {allowed}, got {text}")
        return value

    return parse


def sizes(option: str) -> Callable[[str], tuple[int, ...]]:
    """An argparse ``type``: comma-separated positive integers, e.g. ``512,256``."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{option} must be comma-separated integers such as 512,256, got "
                f"{text!r}") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(
                f"{option} needs positive integers such as 512,256, got {text!r}")
        return values

    return parse


def names(option: str, allowed: Sequence[str],
          extra: Sequence[str] = ()) -> Callable[[str], list[str]]:
    """An argparse ``type``: a comma-separated subset of ``allowed`` (or one of ``extra``)."""

    def parse(text: str) -> list[str]:
        if text in extra:
            return [text]
        values = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            choices = ", ".join([*allowed, *extra])
            raise argparse.ArgumentTypeError(
                f"{option} has unknown {', '.join(map(repr, unknown)) or 'empty list'}; "
                f"choose from {choices}")
        return values

    return parse


def integers(option: str, minimum: int = 1) -> Callable[[str], list[int]]:
    """An argparse ``type``: comma-separated integers of at least ``minimum``."""
    one = integer(option, minimum)
    return lambda text: [one(part.strip()) for part in text.split(",") if part.strip()]


# ------------------------------------------------------------------------------------ paths
def check_writable_file(option: str, path: str | os.PathLike, overwrite: bool) -> Path:
    """``path`` as a file this process can create (or, with ``overwrite``, replace).

    Raises :class:`OptionError` when it is a directory, when it exists and ``overwrite`` is
    false, when it is not a regular file (a FIFO, a device node), or when its folder is not
    writable (or cannot be created).
    """
    target = Path(path)
    if str(path).strip() == "":
        raise OptionError(f"{option} needs a file name, got an empty string")
    if target.is_dir():
        raise OptionError(f"{option} {str(path)!r} is a directory; give a file name such as "
                          f"{str(target / 'model.npz')!r}")
    if target.exists() and not overwrite:
        raise OptionError(f"{option} {str(path)!r} exists; add --force to replace it, or "
                          "choose another name")
    try:  # --force replaces a file's content, never a FIFO or a device node
        check_replaceable(target, option)
    except ValueError as exc:
        raise OptionError(str(exc)) from None
    check_writable_dir(option, target.resolve().parent, shown=str(path))
    return target


def check_writable_dir(option: str, path: str | os.PathLike, shown: str | None = None) -> Path:
    """``path`` as a folder files can be written in: it exists and is writable, or its
    nearest existing ancestor is a writable folder (``atomic_write`` creates the rest)."""
    folder = Path(path)
    shown = shown if shown is not None else str(path)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OptionError(f"{option} {shown!r} cannot be written: {str(existing)!r} is a "
                          "file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OptionError(f"{option} {shown!r} cannot be written: no permission to write in "
                          f"{str(existing)!r}")
    return folder


def check_table_path(option: str, path: str) -> None:
    """``path`` names a table file of a known type, it is a regular file, and Parquet can be
    read here; else an :class:`OptionError` naming ``option``."""
    try:
        kind = table_format(path)
        open_regular_file(path, option).close()
    except TableError as exc:
        raise OptionError(f"{option} {exc}") from None
    except FileNotFoundError:
        raise OptionError(f"{option} {path}: no such file") from None
    except (ValueError, OSError) as exc:  # not a regular file, no permission
        raise OptionError(str(exc) if isinstance(exc, ValueError) else
                          f"{option} {path}: cannot be read ({exc.strerror})") from None
    if kind == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError:
            raise OptionError(f"{option} {path!r}: reading Parquet needs pyarrow (pip install "
                              "pyarrow, or gpumlp[parquet])") from None


def unused_path(path: str | os.PathLike, taken: Iterable[Path] = ()) -> Path:
    """``path`` if nothing is there, else ``stem-2.ext``, ``stem-3.ext``, ... (first free)."""
    path = Path(path)
    suffix = "".join(path.suffixes[-1:])
    stem = path.name[:len(path.name) - len(suffix)] if suffix else path.name
    blocked = set(taken)
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink() or candidate in blocked:
        n += 1
        candidate = path.with_name(f"{stem}-{n}{suffix}")
    return candidate


def sibling(path: str | os.PathLike, tag: str) -> Path:
    """``model.npz`` -> ``model.<tag>.npz``: a file beside ``path`` for a related result."""
    path = Path(path)
    suffix = path.suffix or ".npz"
    return path.with_name(f"{path.name[:len(path.name) - len(path.suffix)]}.{tag}{suffix}")
