"""``gpumlp predict MODEL DATA``: a saved model's predictions for the rows of a CSV, ``.npz``
or Parquet file, written as CSV (with a header) to ``--output`` or to standard output.

A model trained by ``gpumlp train --data`` knows its feature columns by name: they are taken
from DATA in that order, and any other column (the target, an id) is ignored.  A model
without names takes every column of DATA, in order.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import Any

from .backends import BACKEND_NAMES
from .cli_args import HelpFormatter, OptionError, check_table_path, check_writable_file
from .data.tables import TableError, read_table, write_csv
from .io import load
from .validation import host_copy


def add_predict_command(commands: Any) -> None:
    """Register ``predict`` with the ``gpumlp`` subcommand parsers."""
    predict = commands.add_parser(
        "predict", formatter_class=HelpFormatter,
        help="predict the rows of a CSV, .npz or Parquet file with a saved model",
        description="Load a model saved by gpumlp and write its prediction for every row of "
                    "DATA as CSV with a header: a 'prediction' column, and with --proba one "
                    "'proba_CLASS' column per class. A model trained with `gpumlp train "
                    "--data` picks its feature columns from DATA by name (other columns, "
                    "such as the target, are ignored).")
    predict.add_argument("model", help="a model file written by gpumlp (.npz)")
    predict.add_argument("data", help="the rows to predict: .csv (header row), .npz (array "
                                      "X) or .parquet")
    predict.add_argument("--output", "-o", default=None, metavar="CSV",
                         help="write the predictions here (default: standard output)")
    predict.add_argument("--force", action="store_true",
                         help="replace the --output file if it exists (else it is an error)")
    predict.add_argument("--proba", action="store_true",
                         help="add each class's probability (classifiers with predict_proba)")
    predict.add_argument("--backend", default=None, choices=BACKEND_NAMES,
                         help="run on this backend instead of the one saved in the model")
    predict.set_defaults(run=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    check_table_path("data", args.data)
    if not os.path.isfile(args.model):
        raise OptionError(f"model {args.model!r}: "
                          + ("is a directory" if os.path.isdir(args.model) else "no such file"))
    output = (None if args.output is None
              else check_writable_file("--output", args.output, overwrite=args.force))
    model = load(args.model, backend=args.backend)
    if args.proba and not callable(getattr(model, "predict_proba", None)):
        raise OptionError(f"--proba: the {type(model).__name__} in {args.model} has no "
                          "class probabilities (predict_proba)")
    names = getattr(model, "feature_names_in_", None)
    table = read_table(args.data, features=None if names is None else list(names))
    expected = model.n_features_in_
    if table.X.shape[1] != expected:
        raise TableError(f"{args.data}: {table.X.shape[1]} feature columns, but the model in "
                         f"{args.model} was trained on {expected}")
    X = table.X.astype(_input_dtype(model), copy=False)
    with warnings.catch_warnings():  # X holds the model's columns, picked by name above
        warnings.filterwarnings("ignore", "X does not have valid feature names")
        header, columns = ["prediction"], [_host(model.predict(X))]
        proba = _host(model.predict_proba(X)) if args.proba else None
    if args.proba:
        header += [f"proba_{label}" for label in _host(model.classes_).tolist()]
        columns += [proba[:, j] for j in range(proba.shape[1])]
    write_csv(sys.stdout if output is None else output, header, columns)
    if output is not None:
        print(f"{len(X)} predictions of {args.model} for {args.data} written to {output}")
    return 0


def _input_dtype(model: Any) -> Any:
    """The dtype the model computes in (float64 for the perceptron)."""
    import numpy as np

    return np.dtype(getattr(model, "dtype", "float64"))


def _host(values: Any) -> Any:
    """A NumPy array of ``values`` (CuPy results come back to the host for writing)."""
    import numpy as np

    return np.asarray(host_copy(values))
