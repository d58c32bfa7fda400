"""The exception and warning classes gpumlp raises, scikit-learn's own where it is installed.

``except NotFittedError`` and ``warnings.filterwarnings("ignore", category=ConvergenceWarning)``
written for scikit-learn then catch gpumlp's too.  scikit-learn stays optional, and importing
it costs most of a second, so the classes are resolved on first use (module ``__getattr__``)
rather than when gpumlp is imported.  Without scikit-learn, gpumlp defines classes with the
same bases as scikit-learn's.

Examples
--------
>>> from gpumlp.exceptions import NotFittedError
>>> issubclass(NotFittedError, ValueError) and issubclass(NotFittedError, AttributeError)
True
"""

from __future__ import annotations

from typing import Any

NAMES = ("NotFittedError", "ConvergenceWarning", "DataConversionWarning")
_resolved: dict[str, type] = {}


class FileFormatError(ValueError):
    """A file gpumlp was asked to read is not one it reads: not a regular file (a FIFO, a
    device, a folder), or a damaged, truncated or hostile model or IDX file.

    The one error every such file raises, whatever is wrong with it; the message names the
    file and what is wrong.  A ``ValueError``, so ``except ValueError`` catches it too.
    """


def _own_classes() -> dict[str, type]:
    class NotFittedError(ValueError, AttributeError):
        """An estimator was used before ``fit``."""

    class ConvergenceWarning(UserWarning):
        """``max_iter`` was reached before the optimisation converged."""

    class DataConversionWarning(UserWarning):
        """The input was converted to another shape or type than it was given in."""

    classes = {"NotFittedError": NotFittedError, "ConvergenceWarning": ConvergenceWarning,
               "DataConversionWarning": DataConversionWarning}
    for cls in classes.values():
        cls.__module__ = __name__
    return classes


def _resolve() -> dict[str, type]:
    if not _resolved:
        try:
            from sklearn import exceptions as sklearn_exceptions

            found = {name: getattr(sklearn_exceptions, name) for name in NAMES}
        except Exception:  # not installed, or a broken installation: gpumlp's own
            found = _own_classes()
        _resolved.update(found)
    return _resolved


def __getattr__(name: str) -> Any:
    if name in NAMES:
        return _resolve()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [*NAMES, "FileFormatError"]
