"""Training and test data from your own table files (``gpumlp train --data``): the task
(classification or regression) inferred from the target when not given, and a seeded test
split when there is no test file.

Examples
--------
>>> import numpy as np
>>> infer_task(np.array(["cat", "dog", "cat"]), "animal")[0]
'classify'
>>> infer_task(np.array([0.5, 1.25, 3.0]), "price")[0]
'regress'
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ..holdout import stratified_holdout
from .tables import TableError, read_table

TASKS = ("classify", "regress")
#: An integer target with at most this many distinct values is taken as class labels.
MAX_INFERRED_CLASSES = 100


@dataclass(frozen=True, eq=False)
class UserData:
    """A training set, an optional test set, and what the target is."""

    X_train: np.ndarray = field(repr=False)
    y_train: np.ndarray = field(repr=False)
    X_test: np.ndarray | None = field(repr=False)
    y_test: np.ndarray | None = field(repr=False)
    feature_names: list[str]
    target: str
    task: str
    task_reason: str  # why this task (given, or how it was inferred)
    name: str  # the training file's name
    test_source: str  # where the test set came from ("" when there is none)


def infer_task(y: np.ndarray, target: str) -> tuple[str, str]:
    """``("classify" | "regress", reason)`` for a target column: text, or integers with at
    most :data:`MAX_INFERRED_CLASSES` distinct values, are class labels; other numbers are a
    quantity to regress."""
    if y.dtype.kind in "USb":
        return "classify", f"target {target!r} holds text labels"
    distinct = np.unique(y)
    integral = y.dtype.kind in "iu" or bool(np.all(distinct == np.round(distinct)))
    if integral and len(distinct) <= MAX_INFERRED_CLASSES:
        return "classify", (f"target {target!r} holds {len(distinct)} distinct integers; "
                            "--task regress treats them as numbers")
    why = (f"more than {MAX_INFERRED_CLASSES} distinct integers" if integral
           else "non-integer numbers")
    return "regress", f"target {target!r} holds {why}; --task classify treats them as labels"


def load_user_data(path: str | os.PathLike, target: str, test: str | os.PathLike | None = None,
                   test_fraction: float | None = None, task: str | None = None,
                   seed: int = 0) -> UserData:
    """Read the training table (and the test table, with the same feature columns), or hold
    out ``test_fraction`` of the training rows (stratified when classifying) with ``seed``."""
    train = read_table(path, target=target)
    if task is None:
        task, reason = infer_task(train.y, target)
    else:
        reason = "--task given"
        _check_task(task, train.y, target, str(path))
    X, y = train.X, train.y
    X_test = y_test = None
    test_source = ""
    if test is not None:
        held = read_table(test, target=target, features=train.feature_names)
        X_test, y_test = held.X, held.y
        test_source = str(test)
    elif test_fraction is not None:
        rng = np.random.RandomState(seed)
        if task == "classify":
            mask = stratified_holdout(y, test_fraction, rng, option="--test-fraction")
        else:
            mask = np.zeros(len(y), dtype=np.bool_)
            n_test = int(np.ceil(test_fraction * len(y)))
            if n_test >= len(y):
                raise ValueError(f"--test-fraction={test_fraction} leaves no training rows "
                                 f"out of {len(y)}")
            mask[rng.permutation(len(y))[:n_test]] = True
        X, y, X_test, y_test = X[~mask], y[~mask], X[mask], y[mask]
        test_source = f"{int(mask.sum())} rows held out of {path} (--test-fraction)"
    if task == "regress":
        y = y.astype(np.float64)
        y_test = None if y_test is None else _numbers(y_test, target, str(test))
    return UserData(X, y, X_test, y_test, train.feature_names, target, task, reason,
                    os.path.basename(str(path)), test_source)


def _check_task(task: str, y: np.ndarray, target: str, path: str) -> None:
    if task not in TASKS:
        raise ValueError(f"--task {task!r} is not valid; choose one of {', '.join(TASKS)}")
    if task == "regress" and y.dtype.kind in "USb":
        raise TableError(f"{path}: --task regress needs a numeric target, but {target!r} holds "
                         f"text such as {str(y[0])!r}; use --task classify")
    if task == "classify" and y.dtype.kind == "f" and not np.all(y == np.round(y)):
        example = y[np.flatnonzero(y != np.round(y))[0]]
        raise TableError(f"{path}: --task classify needs class labels, but {target!r} holds "
                         f"non-integer numbers such as {example}; use --task regress")


def _numbers(y: np.ndarray, target: str, path: str) -> np.ndarray:
    if y.dtype.kind in "USb":
        raise TableError(f"{path}: the target {target!r} holds text such as {str(y[0])!r}, "
                         "but the training file's is numeric (regression)")
    return y.astype(np.float64)
