"""The ``gpumlp`` command: ``train``, ``evaluate``, ``predict``, ``info`` and ``bench``.

Every option is checked (with its option name) before any data is loaded, and every error is
one line, ``gpumlp COMMAND: error: ...``; ``--debug`` adds the traceback.  ``train`` saves the
model it trains (never over a file the user did not name), and on Ctrl-C or an error after
some epochs it saves the last finished epoch's model beside the requested path.

A command is one ``_add_NAME(commands)`` function that registers its parser (with
``set_defaults(run=_run_NAME)``) plus its ``_run_NAME(args) -> int``; list the first in
``COMMANDS``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from . import config
from . import data as datasets  # called through the module: tests substitute a loader
from . import progress as curves  # (and a plotter)
from .activations import HIDDEN_ACTIVATIONS, INFERENCE_ONLY
from .backends import BACKEND_NAMES, cupy_unavailable_reason
from .bench.cli import add_bench_command
from .cli_args import (CommandParser, HelpFormatter, OptionError, check_table_path,
                       check_writable_file, integer, real, sibling, sizes, unused_path)
from .cli_predict import add_predict_command
from .data.user_data import TASKS, load_user_data
from .estimators import SOLVERS, ConvergenceWarning, MLPClassifier, MLPRegressor
from .info import collect_info, format_info, format_model
from .init import INIT_SCHEMES
from .io import load
from .onnx_export import export_onnx, summarize
from .optim import SCHEDULES
from .precision import PRECISIONS
from .recipe import RECIPE
from .selftest import add_selftest_command
from .training import GRAPH_MODES
from .version import __version__

#: Where ``gpumlp train`` saves its model when ``--output`` is not given (current folder).
DEFAULT_OUTPUT = "{dataset}-mlp.npz"

#: Exit status after Ctrl-C, as shells report a SIGINT.
INTERRUPTED = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``gpumlp`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    0 success, 1 failure, 2 a bad option, path or environment variable (nothing was done),
    130 interrupted.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else 2
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    prog = f"gpumlp {args.command}"
    debug = getattr(args, "debug", False)
    try:
        config.check_all()  # a bad environment variable is refused before any work
    except ValueError as exc:
        print(f"{prog}: error: {describe(exc)}", file=sys.stderr)
        return 2
    try:
        with _warnings_as_lines(prog):
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:  # every failure is one line; --debug shows where it came from
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {describe(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, OptionError) else 1


def describe(exc: BaseException) -> str:
    """A one-line description of an exception for the command line."""
    text = " ".join(str(exc).split())
    if isinstance(exc, (ValueError, TypeError, OSError, RuntimeError, LookupError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def build_parser() -> argparse.ArgumentParser:
    """The ``gpumlp`` argument parser with every command registered."""
    parser = CommandParser(
        prog="gpumlp",
        description="Train multilayer perceptrons on a GPU (CuPy) or the CPU (NumPy).",
        epilog="Start with `gpumlp info` to see which backends and datasets this machine has, "
               "then `gpumlp train` (Fashion-MNIST, default recipe). `gpumlp COMMAND --help` "
               "explains each command.",
        formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"gpumlp {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also accepted after COMMAND)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    for command in set(commands.choices.values()):
        with contextlib.suppress(argparse.ArgumentError):  # a command may define its own
            command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                 help="show the traceback of an error")
    return parser


def _command(commands: Any, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand parser with the common formatter."""
    return commands.add_parser(name, formatter_class=HelpFormatter, **kwargs)


# ------------------------------------------------------------------------------------ train
def _add_train(commands: Any) -> None:
    train = _command(
        commands, "train",
        help="train an MLP on an MNIST-family dataset or your own table, report, save it",
        description="Train an MLP classifier on a dataset of the MNIST family (or a classifier "
                    "or regressor on your own CSV, .npz or Parquet file with --data), show "
                    "loss and test accuracy (R2 for a regressor) after every epoch, then the "
                    "final score and throughput, and save the model. The defaults are the "
                    "recipe that reaches about 90% on Fashion-MNIST. Ctrl-C (or an error) "
                    "after some epochs saves the last finished epoch's model as "
                    "NAME.interrupted.npz beside the output.")
    _data_arguments(train, own_data=True)
    train.add_argument("--hidden", type=sizes("--hidden"), default=RECIPE["hidden"],
                       metavar="SIZES", help="hidden layer sizes, comma separated (e.g. 256,128)")
    train.add_argument("--activation", default=RECIPE["activation"],
                       choices=[a for a in HIDDEN_ACTIVATIONS if a not in INFERENCE_ONLY],
                       help="activation of the hidden layers")
    train.add_argument("--solver", default=RECIPE["solver"], choices=SOLVERS,
                       help="optimizer")
    train.add_argument("--init", default=RECIPE["init"], choices=INIT_SCHEMES,
                       help="weight initialisation: He-uniform with zero biases (the recipe's "
                            "published accuracy was measured with it), or Glorot-uniform as "
                            "scikit-learn draws it")
    train.add_argument("--epochs", type=integer("--epochs", 1), default=RECIPE["epochs"],
                       metavar="N", help="training epochs")
    train.add_argument("--batch-size", type=integer("--batch-size", 1),
                       default=RECIPE["batch_size"], metavar="N", help="samples per training step")
    train.add_argument("--lr", type=real("--lr", 0, low_open=True), default=RECIPE["lr"],
                       metavar="RATE", help="initial learning rate (step size)")
    train.add_argument("--schedule", default=RECIPE["schedule"], choices=SCHEDULES,
                       help="step-size schedule over the epochs")
    train.add_argument("--alpha", type=real("--alpha", 0), default=RECIPE["alpha"],
                       metavar="ALPHA", help="L2 penalty")
    train.add_argument("--dropout", type=real("--dropout", 0, 1, high_open=True),
                       default=RECIPE["dropout"], metavar="RATE",
                       help="dropout rate of the hidden layers, in [0, 1) (0 disables it)")
    train.add_argument("--limit", type=integer("--limit", 1), default=None, metavar="N",
                       help="train on the first N training samples only, for quick checks "
                            "(all of them when not given)")
    _runtime_arguments(train)
    train.add_argument("--precision", default="float32", choices=PRECISIONS,
                       help="precision of the matrix products: tf32 runs them on TF32 tensor "
                            "cores (GPUs of compute capability 8.0+; --dtype float32 only); "
                            "the numpy backend emulates TF32's rounding (no speed-up)")
    saving = train.add_mutually_exclusive_group()
    saving.add_argument("--output", "-o", default=None, metavar="PATH",
                        help="save the trained model here (default: DATASET-mlp.npz in the "
                             "current folder, as DATASET-mlp-2.npz, -3, ... if taken)")
    saving.add_argument("--no-save", action="store_true", help="do not save the model")
    train.add_argument("--force", action="store_true",
                       help="replace the --output file if it exists (else it is an error)")
    train.add_argument("--plot", default=None, metavar="PNG",
                       help="also draw loss and test accuracy per epoch to this PNG file "
                            "(needs matplotlib; an existing file is replaced)")
    train.add_argument("--quiet", "-q", action="store_true", help="no per-epoch progress")
    train.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    # Everything that can be checked without the data is checked before loading it.
    own_data = _check_own_data(args)
    _check_backend("--backend", args.backend, args.cuda_graph)
    if args.precision == "tf32" and args.dtype != "float32":
        raise OptionError(f"--precision tf32 needs --dtype float32, got --dtype {args.dtype}")
    output = None if args.no_save else _model_path(args)
    if args.plot:
        missing = curves.matplotlib_missing()
        if missing:
            raise OptionError(f"--plot needs matplotlib: {missing}")
        check_writable_file("--plot", args.plot, overwrite=True)

    if own_data:
        data = load_user_data(args.data, args.target, args.test, args.test_fraction,
                              args.task, args.seed)
        task, outputs = data.task, _outputs(data.task, data.y_train)
        described = (f"{data.name}: task {task} ({data.task_reason}); "
                     f"{len(data.feature_names)} features")
    else:
        data = datasets.load_dataset(args.dataset, path=args.data_dir)
        task, outputs, described = "classify", "10", f"{data.name} from {data.source}"
    X_train, y_train = data.X_train, data.y_train
    if args.limit is not None:
        X_train, y_train = X_train[:args.limit], y_train[:args.limit]
    has_test = data.X_test is not None
    metric = "accuracy" if task == "classify" else "R2"
    hidden = args.hidden
    estimator = MLPClassifier if task == "classify" else MLPRegressor
    clf = estimator(hidden, activation=args.activation, solver=args.solver,
                    alpha=args.alpha, batch_size=args.batch_size,
                    learning_rate=args.schedule, learning_rate_init=args.lr,
                    max_iter=args.epochs,
                    random_state=args.seed, backend=args.backend, dtype=args.dtype,
                    dropout=args.dropout, n_iter_no_change=args.epochs + 1,
                    cuda_graph=args.cuda_graph, init=args.init, precision=args.precision)
    # Saved with the model (`gpumlp predict` picks these columns by name); set after fit,
    # which (as scikit-learn's) forgets names when it is given an array without them.
    names = np.array(data.feature_names, dtype=object) if own_data else None
    tested = f"{len(data.X_test)} test" if has_test else "no test (--test or --test-fraction)"
    print(f"gpumlp {__version__}: {described}: {len(X_train)} training / {tested} samples; "
          f"{X_train.shape[1]}-{'-'.join(map(str, hidden))}-{outputs}, {args.activation}, "
          f"{args.solver}, batch {args.batch_size}, {args.schedule} step from {args.lr}")
    if output is not None:
        print(f"the model will be saved to {output}")
    track_accuracy = has_test and (not args.quiet or args.plot)
    progress = curves.EpochProgress(
        args.epochs, (lambda: clf.score(data.X_test, data.y_test)) if track_accuracy else None,
        enabled=not args.quiet, metric=metric)
    keeper = LastFinishedEpoch(clf)
    clf.set_params(callbacks=[keeper, progress])  # keeper first: it must run every epoch
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed epoch budget is meant
            clf.fit(X_train, y_train)
        seconds = time.perf_counter() - start
        _name_columns(clf, names)
        if output is not None:
            output = _save_model(clf, output, replace=args.force)
    except KeyboardInterrupt:
        _name_columns(clf, names)
        print(f"gpumlp train: interrupted; {_rescue(clf, keeper, output, args)}",
              file=sys.stderr)
        return INTERRUPTED
    except Exception as exc:
        _name_columns(clf, names)
        raise TrainingStopped(f"{describe(exc)}; {_rescue(clf, keeper, output, args)}") \
            from exc
    print(f"backend {clf.network_.backend.name}: {clf.n_iter_} epoch(s) in {seconds:.1f} s "
          f"({clf.n_iter_ * len(X_train) / seconds:,.0f} samples/s, including the per-epoch "
          f"evaluation)")
    with warnings.catch_warnings():  # the arrays are the named columns, in their order
        warnings.filterwarnings("ignore", "X does not have valid feature names")
        if has_test:
            print(f"test {metric}: {clf.score(data.X_test, data.y_test):.4f}")
        else:
            print(f"training {metric}: {clf.score(X_train, y_train):.4f} (no test set)")
    if output is not None:
        again = f"predict {output} DATA` predicts with it" if own_data else \
            f"evaluate {output}` checks it again"
        print(f"model saved to {output} (`gpumlp {again})")
    if args.plot:
        curves.plot_curves(args.plot, progress.loss, progress.accuracy,
                           accuracy_label=f"test {metric}",
                           title=f"{data.name}: {X_train.shape[1]}-{'-'.join(map(str, hidden))}-"
                                 f"{outputs}")
        print(f"curves plotted to {args.plot}")
    return 0


def _check_own_data(args: argparse.Namespace) -> bool:
    """Whether ``train`` reads your own table (``--data``), its options checked; else the
    ``--dataset`` (fashion-mnist when not given)."""
    own_options = [option for option, value in (("--target", args.target), ("--test", args.test),
                                                ("--test-fraction", args.test_fraction),
                                                ("--task", args.task)) if value is not None]
    if args.data is None:
        if own_options:
            raise OptionError(f"{own_options[0]} needs --data FILE (your own data); a "
                              "--dataset of the MNIST family has its own test set")
        args.dataset = args.dataset or "fashion-mnist"
        return False
    for option, value in (("--dataset", args.dataset), ("--data-dir", args.data_dir)):
        if value is not None:
            raise OptionError(f"{option} cannot be combined with --data: train on your own "
                              "file or on a dataset of the MNIST family")
    if args.target is None:
        raise OptionError("--data needs --target COLUMN, the column to predict (for an .npz "
                          "file, the array y: --target y)")
    check_table_path("--data", args.data)
    if args.test is not None:
        check_table_path("--test", args.test)
    return True


def _outputs(task: str, y: Any) -> str:
    """The output layer as the start-up line shows it: its units (and the classes)."""
    import numpy as np

    if task == "regress":
        return "1"
    classes = len(np.unique(y))
    return f"{1 if classes == 2 else classes} ({classes} classes)"


def _name_columns(model: Any, names: Any) -> None:
    """Give a fitted ``model`` the column names of the table it was trained on."""
    if names is not None and getattr(model, "network_", None) is not None:
        model.feature_names_in_ = names


class TrainingStopped(RuntimeError):
    """Training failed; the message says what happened and where the model was saved."""


class LastFinishedEpoch:
    """Training callback that keeps a copy of the weights after every finished epoch.

    A copy on the model's own device (no transfer, no wait), so that an interruption in the
    middle of an epoch (Ctrl-C, an error) can still save a consistent model.
    """

    def __init__(self, model: Any):
        self.model = model
        self.epoch = 0
        self.params: Any = None

    def __call__(self, epoch: int, history: Any) -> bool:
        params = self.model.network_.params
        if self.params is None or self.params.shape != params.shape:
            self.params = self.model.network_.backend.empty(params.shape, params.dtype)
        self.params[...] = params
        self.epoch = epoch
        return False

    def restore(self) -> int:
        """Give the model the weights of its last finished epoch; returns that epoch (0: none).

        When the model's history already counts a later epoch (an interruption between the end
        of an epoch and this callback), its weights are that epoch's and stay.
        """
        network = getattr(self.model, "network_", None)
        if network is None or self.params is None:
            return 0
        finished = self.model.n_iter_
        if finished > self.epoch:
            return finished
        # A worker thread of the NumPy backend may still be finishing its part of the step
        # that was interrupted; copy until the weights hold still.
        for _ in range(50):
            network.params[...] = self.params
            time.sleep(0.002)
            if bool((network.params == self.params).all()):
                break
        return self.epoch


def _model_path(args: argparse.Namespace) -> Path:
    """The path ``train`` will save to, checked now (before the data is loaded)."""
    if args.output is not None:
        return check_writable_file("--output", args.output, overwrite=args.force)
    name = Path(args.data).stem if args.data is not None else args.dataset
    default = unused_path(DEFAULT_OUTPUT.format(dataset=name))
    return check_writable_file("--output", default, overwrite=False)


def _save_model(model: Any, path: Path, replace: bool) -> Path:
    """Save to ``path``; if a file appeared there during training (and ``replace`` is not
    set), save to the next free name instead of overwriting it."""
    if path.exists() and not replace:
        path = unused_path(path)
    model.save(path)
    return path


def _rescue(model: Any, keeper: LastFinishedEpoch, output: Path | None,
            args: argparse.Namespace) -> str:
    """Save the last finished epoch's model after an interruption; says what happened."""
    epoch = keeper.restore()
    if epoch == 0:
        return "no epoch had finished, so there was no model to save"
    if output is None:
        return f"the model after epoch {epoch} was not saved (--no-save)"
    name = sibling(output, "interrupted").name
    folders = [output.parent, Path.cwd(), Path(tempfile.gettempdir())]
    failures = []
    for folder in dict.fromkeys(folders):  # in order, without repeats
        path = unused_path(folder / name)
        try:
            model.save(path)
        except Exception as exc:  # try the next folder
            failures.append(f"{path}: {describe(exc)}")
            continue
        done = (f"the model after epoch {epoch} of {args.epochs}" if epoch < args.epochs
                else f"the trained model ({epoch} epochs)")
        return f"{done} is saved to {path}"
    return f"the model after epoch {epoch} could not be saved ({'; '.join(failures)})"


@contextlib.contextmanager
def _warnings_as_lines(prog: str) -> Iterator[None]:
    """Show warnings as ``gpumlp COMMAND: warning: ...`` lines (no source line dump)."""
    with warnings.catch_warnings():
        warnings.showwarning = (lambda message, category, *rest, **kwargs: print(
            f"{prog}: warning: {' '.join(str(message).split())}", file=sys.stderr))
        yield


# --------------------------------------------------------------------------------- evaluate
def _add_evaluate(commands: Any) -> None:
    evaluate = _command(commands, "evaluate",
                        help="report a saved model's accuracy on a dataset's test set",
                        description="Load a model saved by `gpumlp train` and report its "
                                    "accuracy on the test set of a dataset.")
    evaluate.add_argument("model", help="a model file written by `gpumlp train`")
    _data_arguments(evaluate)
    evaluate.add_argument("--backend", default=None, choices=BACKEND_NAMES,
                          help="run on this backend instead of the one saved in the model")
    evaluate.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    if args.backend is not None:
        _check_backend("--backend", args.backend)
    if not os.path.exists(args.model):
        raise OptionError(f"model {args.model!r}: no such file")
    model = load(args.model, backend=args.backend)
    data = datasets.load_dataset(args.dataset, path=args.data_dir)
    start = time.perf_counter()
    accuracy = model.score(data.X_test, data.y_test)
    seconds = time.perf_counter() - start
    print(f"{args.model}: test accuracy on {data.name}: {accuracy:.4f} "
          f"({len(data.X_test) / seconds:,.0f} samples/s inference)")
    return 0


# ----------------------------------------------------------------------------------- export
def _add_export(commands: Any) -> None:
    export = _command(
        commands, "export", help="convert a saved model to ONNX (needs the onnx extra)",
        description="Write a model saved by gpumlp as an ONNX file that returns predict_proba "
                    "and predict (classifiers) or predict (regressors), for ONNX Runtime.")
    export.add_argument("model", help="a model file written by `gpumlp train`")
    export.add_argument("output", help="the .onnx file to write")
    export.set_defaults(run=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    model = load(args.model)
    try:
        proto = export_onnx(model, args.output)
    except (ImportError, OSError) as exc:  # missing onnx package, unwritable output
        raise RuntimeError(str(exc)) from None
    print(f"{args.output}: {summarize(proto)}")
    return 0


# ------------------------------------------------------------------------------------- info
def _add_info(commands: Any) -> None:
    info = _command(commands, "info",
                    help="versions, backends, devices, BLAS and datasets; or a saved model",
                    description="Versions, backends (and why one is unavailable), devices, "
                                "BLAS and the datasets found on this machine. Given a saved "
                                "model: its estimator, layers, activations, parameters, FLOPs "
                                "per sample and memory.")
    info.add_argument("model", nargs="?", default=None,
                      help="a model file written by gpumlp (`train`, or save() in Python)")
    info.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    if args.model is None:
        print(format_info(collect_info()))
        return 0
    if not os.path.isfile(args.model):
        raise OptionError(f"model {args.model!r}: "
                          + ("is a directory" if os.path.isdir(args.model) else "no such file"))
    print(format_model(args.model, load(args.model, backend="numpy")))
    return 0


# ------------------------------------------------------------------------- shared arguments
def _data_arguments(parser: argparse.ArgumentParser, own_data: bool = False) -> None:
    parser.add_argument("--dataset", default=None if own_data else "fashion-mnist",
                        choices=list(datasets.DATASETS),
                        help="dataset of the MNIST family"
                             + (" (default: fashion-mnist, unless --data)" if own_data else ""))
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="folder holding the IDX files (by default: $GPUMLP_DATA, "
                             "~/.cache/gpumlp, /usr/share/datasets, then a download)")
    if own_data:
        _own_data_arguments(parser)


def _own_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "your own data", "train on a table instead of a --dataset: every column but the "
                         "target is a feature and must hold numbers")
    group.add_argument("--data", default=None, metavar="FILE",
                       help="the training table: .csv (with a header row), .npz (arrays X "
                            "and y) or .parquet (needs pyarrow)")
    group.add_argument("--target", default=None, metavar="COLUMN",
                       help="the column to predict (required with --data; y for .npz)")
    held_out = group.add_mutually_exclusive_group()
    held_out.add_argument("--test", default=None, metavar="FILE",
                          help="a test table with the same columns")
    held_out.add_argument("--test-fraction", default=None, metavar="F",
                          type=real("--test-fraction", 0, 1, low_open=True, high_open=True),
                          help="hold out this share of --data as the test set (stratified "
                               "when classifying; drawn with --seed)")
    group.add_argument("--task", default=None, choices=TASKS,
                       help="classify or regress (default: inferred from the target: text, "
                            "or integers with at most 100 values, are class labels)")


def _runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=BACKEND_NAMES,
                        help="auto uses the GPU when CuPy and a device are present")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                        help="floating-point type of the parameters and data")
    parser.add_argument("--cuda-graph", default="auto", choices=GRAPH_MODES,
                        help="replay whole training steps as CUDA graphs (CuPy backend)")
    parser.add_argument("--seed", type=integer("--seed", 0), default=0, metavar="N",
                        help="seed for weights and shuffling")


def _check_backend(option: str, backend: str, cuda_graph: str | None = None) -> None:
    """Refuse a backend (or CUDA-graph mode) that cannot run here, saying why."""
    if backend == "cupy" or cuda_graph == "on":
        reason = cupy_unavailable_reason()
        if backend == "cupy" and reason is not None:
            raise OptionError(f"{option} cupy is unavailable: {reason}")
        if cuda_graph == "on" and (backend == "numpy" or reason is not None):
            raise OptionError("--cuda-graph on needs the cupy backend"
                              + (f" ({reason})" if reason else f", not {option} {backend}"))


#: Every command's registration, in the order ``gpumlp --help`` lists them.
COMMANDS = [_add_train, _add_evaluate, add_predict_command, _add_export, _add_info,
            add_bench_command, add_selftest_command]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
