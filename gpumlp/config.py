"""Every environment variable gpumlp reads, parsed and validated in this one module.

Each variable is one :class:`Variable` in :data:`VARIABLES`: its name, how its text is
parsed (which also says what is allowed) and a line of documentation.  Code elsewhere reads
a setting only as ``config.get("NAME")``; nothing else in the package looks at
``os.environ``.  Adding a variable is adding one entry (and its line in the README, which a
test checks).

A variable is parsed at its first :func:`get` and the result is kept for the life of the
process, so a bad value fails once, early, with a :class:`ValueError` naming the variable,
the value and what is allowed (the command line shows it as its one-line error), and a
later change of ``os.environ`` is not seen.  :func:`reset` forgets the parsed values: a test
that sets a variable calls it after ``monkeypatch.setenv`` (the test suite also resets
before and after every test).  :func:`check_all` parses every variable at once, as the
command line does before a command runs.

Variables that belong to other programs (``OMP_NUM_THREADS``, ``XDG_CACHE_HOME``, ``TERM``,
the BLAS thread counts) are read here too, but follow their owners' rules: a value their
owners would ignore is ignored, not refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

#: The GEMM routes ``GPUMLP_GEMM`` may name (``CupyBackend(gemm_path=...)`` takes the same).
GEMM_PATHS = ("auto", "fused", "cublas")

#: What ``GPUMLP_CPU_KERNELS`` may say (``NumpyBackend(cpu_kernels=...)`` takes the same).
CPU_KERNEL_SETTINGS = ("auto", "on", "off")

#: Idle captured-step runners kept when ``GPUMLP_IDLE_GRAPHS`` is unset.
DEFAULT_IDLE_GRAPHS = 2

_ON = ("on", "1", "true", "yes")
_OFF = ("off", "0", "false", "no")


class _Refused(Exception):
    """Raised by a parser with the sentence saying what is allowed."""


@dataclass(frozen=True)
class Variable:
    """One environment variable: ``parse(text)`` gets the stripped text, never empty (an
    empty or unset variable is ``default``), and raises :class:`_Refused` with what is
    allowed."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    doc: str


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.lower() not in options:
            raise _Refused(", ".join(options))
        return text.lower()
    return parse


def _switch(text: str) -> bool:
    if text.lower() in _ON:
        return True
    if text.lower() in _OFF:
        return False
    raise _Refused(f"on ({'/'.join(_ON)}) or off ({'/'.join(_OFF)})")


def _count(minimum: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        # int() would also take "+3", "٣" or "1_000"; a count is plain ASCII digits.
        if not (text.isascii() and text.isdigit()) or int(text) < minimum:
            raise _Refused(f"a whole number of {minimum} or more ({what})")
        return int(text)
    return parse


def _directory(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise _Refused("a directory (it need not exist yet), not a file")
    return path


def _openmp_threads(text: str) -> int | None:
    # OpenMP allows a comma-separated list (one count per nesting level); BLAS pools use the
    # first.  Runtimes ignore a value they cannot read, and so does gpumlp: it is not ours.
    first = text.split(",")[0].strip()
    return int(first) if first.isascii() and first.isdigit() and int(first) > 0 else None


def _absolute_path(text: str) -> Path | None:
    # The XDG base directory specification: a relative path is invalid and to be ignored.
    path = Path(text)
    return path if path.is_absolute() else None


def _text(text: str) -> str:
    return text


VARIABLES = [
    Variable("GPUMLP_GEMM", _choice(*GEMM_PATHS), "auto",
             "GEMM route of the CuPy backend: `auto` times the fused kernel against cuBLAS "
             "per shape, `fused` or `cublas` forces one"),
    Variable("GPUMLP_KERNELS", _switch, True,
             "`off` makes the CuPy backend use its generic CuPy code instead of the fused CUDA "
             "kernels"),
    Variable("GPUMLP_IDLE_GRAPHS", _count(0, "idle captured-step runners kept for a refit"),
             DEFAULT_IDLE_GRAPHS,
             f"captured-step runners kept between fits (default {DEFAULT_IDLE_GRAPHS}; 0 "
             "keeps none)"),
    Variable("GPUMLP_NUM_THREADS",
             _count(1, "threads for the NumPy backend's elementwise work"), None,
             "threads for the NumPy backend's elementwise work between matrix products "
             "(default 1; BLAS keeps its own threads)"),
    Variable("GPUMLP_CPU_KERNELS", _choice(*CPU_KERNEL_SETTINGS), "auto",
             "the NumPy backend's elementwise passes: `auto` compiled with Numba where it "
             "imports, `on` requires them, `off` keeps the NumPy passes"),
    Variable("GPUMLP_DATA", _directory, None,
             "a directory searched for datasets (`<dir>/<name>/`, then `<dir>` itself) before "
             "the user cache and system locations"),
    Variable("OMP_NUM_THREADS", _openmp_threads, None,
             "OpenMP's thread count: the NumPy backend's split when `threads` is asked for "
             "without a number and `GPUMLP_NUM_THREADS` is unset (ignored if unreadable)"),
    Variable("OPENBLAS_NUM_THREADS", _text, None,
             "recorded as is in benchmark results"),
    Variable("MKL_NUM_THREADS", _text, None, "recorded as is in benchmark results"),
    Variable("XDG_CACHE_HOME", _absolute_path, None,
             "where the dataset cache lives (`$XDG_CACHE_HOME/gpumlp`, default "
             "`~/.cache/gpumlp`; a relative path is ignored, as the XDG specification says)"),
    Variable("TERM", _text, None, "`dumb` turns off the progress bar's redrawn line"),
]

_BY_NAME = {variable.name: variable for variable in VARIABLES}
_values: dict[str, Any] = {}


def get(name: str) -> Any:
    """The parsed value of environment variable ``name`` (its default when unset or empty).

    Parsed at the first call and kept; raises :class:`ValueError` naming the variable, its
    value and what is allowed when the value is not valid.

    Examples
    --------
    >>> from gpumlp import config
    >>> config.get("GPUMLP_GEMM") in config.GEMM_PATHS
    True
    """
    if name not in _values:
        variable = _BY_NAME.get(name)
        if variable is None:
            raise KeyError(f"{name!r} is not an environment variable gpumlp reads; known: "
                           f"{', '.join(_BY_NAME)}")
        _values[name] = _parse(variable, os.environ.get(name))
    return _values[name]


def _parse(variable: Variable, raw: str | None) -> Any:
    text = (raw or "").strip()
    if not text:
        return variable.default
    try:
        return variable.parse(text)
    except _Refused as allowed:
        raise ValueError(f"environment variable {variable.name}={raw!r} is not valid; "
                         f"allowed: {allowed} (or unset)") from None


def text(name: str) -> str | None:
    """The text of ``name`` as set (``None`` when unset), for reports; not cached."""
    if name not in _BY_NAME:
        raise KeyError(f"{name!r} is not an environment variable gpumlp reads")
    return os.environ.get(name)


def check_all() -> None:
    """Parse every variable now, so that a bad one fails before any work starts."""
    for variable in VARIABLES:
        get(variable.name)


def reset() -> None:
    """Forget every parsed value: the next :func:`get` reads the environment again."""
    _values.clear()
