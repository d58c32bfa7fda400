"""The ``gpumlp`` command: ``train``, ``evaluate``, ``bench`` and ``info``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from . import __version__

#: The default recipe of ``gpumlp train``: 784-512-512-10, ReLU, Adam with a cosine-annealed
#: step size (it settles the last epochs, where a constant step keeps the test accuracy
#: wandering), dropout 0.2, 30 epochs.
RECIPE = {"hidden": "512,512", "activation": "relu", "solver": "adam", "epochs": 30,
          "batch_size": 128, "lr": 1e-3, "schedule": "cosine", "alpha": 1e-4, "dropout": 0.2}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as exc:
        print(f"gpumlp {args.command}: error: {exc}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpumlp",
        description="Train multilayer perceptrons on a GPU (CuPy) or the CPU (NumPy).",
        epilog="Start with `gpumlp info` to see which backends and datasets this machine has, "
               "then `gpumlp train` (Fashion-MNIST, default recipe). `gpumlp COMMAND --help` "
               "explains each command.")
    parser.add_argument("--version", action="version", version=f"gpumlp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train a classifier on an MNIST-family dataset and report test accuracy",
        description="Train an MLP classifier on a dataset of the MNIST family, show loss and "
                    "test accuracy after every epoch, then the final accuracy and throughput. "
                    "The defaults are the recipe that reaches about 90% on Fashion-MNIST.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _data_arguments(train)
    train.add_argument("--hidden", default=RECIPE["hidden"],
                       help="hidden layer sizes, comma separated (e.g. 256,128)")
    train.add_argument("--activation", default=RECIPE["activation"],
                       help="hidden activation: relu, leaky_relu, tanh, logistic, identity")
    train.add_argument("--solver", default=RECIPE["solver"], choices=("adam", "sgd"))
    train.add_argument("--epochs", type=int, default=RECIPE["epochs"], help="training epochs")
    train.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    train.add_argument("--lr", type=float, default=RECIPE["lr"], help="initial learning rate")
    train.add_argument("--schedule", default=RECIPE["schedule"],
                       choices=("constant", "invscaling", "adaptive", "cosine"),
                       help="step-size schedule over the epochs")
    train.add_argument("--alpha", type=float, default=RECIPE["alpha"], help="L2 penalty")
    train.add_argument("--dropout", type=float, default=RECIPE["dropout"],
                       help="dropout rate of the hidden layers (0 disables it)")
    train.add_argument("--limit", type=int, default=None,
                       help="train on the first N training samples only (quick checks)")
    _runtime_arguments(train)
    train.add_argument("--output", "-o", default=None,
                       help="save the trained model to this .npz file")
    train.add_argument("--quiet", "-q", action="store_true", help="no per-epoch progress")
    train.set_defaults(run=_run_train)

    evaluate = commands.add_parser(
        "evaluate", help="report a saved model's accuracy on a dataset's test set",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    evaluate.add_argument("model", help="a model file written by `gpumlp train --output`")
    _data_arguments(evaluate)
    evaluate.add_argument("--backend", default=None, help="override the saved backend")
    evaluate.set_defaults(run=_run_evaluate)

    export = commands.add_parser(
        "export", help="convert a saved model to ONNX (needs the onnx extra)",
        description="Write a model saved by gpumlp as an ONNX file that returns predict_proba "
                    "and predict (classifiers) or predict (regressors), for ONNX Runtime.")
    export.add_argument("model", help="a model file written by `gpumlp train --output`")
    export.add_argument("output", help="the .onnx file to write")
    export.set_defaults(run=_run_export)

    info = commands.add_parser("info", help="versions, backends, devices, BLAS and datasets")
    info.set_defaults(run=_run_info)

    from .bench.cli import add_bench_command

    add_bench_command(commands)
    return parser


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="fashion-mnist",
                        help="mnist, fashion-mnist or kmnist")
    parser.add_argument("--data-dir", default=None,
                        help="directory holding the IDX files (default: search $GPUMLP_DATA, "
                             "~/.cache/gpumlp, /usr/share/datasets, then download)")


def _runtime_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", default="auto", choices=("auto", "numpy", "cupy"),
                        help="auto uses the GPU when CuPy and a device are present")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--cuda-graph", default="auto", choices=("auto", "on", "off"),
                        help="replay whole training steps as CUDA graphs (CuPy backend)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and shuffling")


def _run_train(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .estimators import MLPClassifier
    from .progress import EpochProgress

    hidden = _parse_sizes(args.hidden)  # before the data load: a typo should fail fast
    data = load_dataset(args.dataset, path=args.data_dir)
    X_train, y_train = data.X_train, data.y_train
    if args.limit is not None:
        X_train, y_train = X_train[:args.limit], y_train[:args.limit]
    clf = MLPClassifier(hidden, activation=args.activation, solver=args.solver,
                        alpha=args.alpha, batch_size=args.batch_size,
                        learning_rate=args.schedule, learning_rate_init=args.lr,
                        max_iter=args.epochs,
                        random_state=args.seed, backend=args.backend, dtype=args.dtype,
                        dropout=args.dropout, n_iter_no_change=args.epochs + 1,
                        cuda_graph=args.cuda_graph)
    print(f"gpumlp {__version__}: {data.name} from {data.source}: "
          f"{len(X_train)} training / {len(data.X_test)} test samples; "
          f"784-{'-'.join(map(str, hidden))}-10, {args.activation}, {args.solver}, "
          f"batch {args.batch_size}, {args.schedule} step from {args.lr}")
    progress = EpochProgress(args.epochs, lambda: clf.score(data.X_test, data.y_test),
                             enabled=not args.quiet)
    clf.set_params(callbacks=[progress])
    start = time.perf_counter()
    import warnings

    from .estimators import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed epoch budget is intended
        clf.fit(X_train, y_train)
    seconds = time.perf_counter() - start
    accuracy = clf.score(data.X_test, data.y_test)
    print(f"backend {clf.network_.backend.name}: {clf.n_iter_} epoch(s) in {seconds:.1f} s "
          f"({clf.n_iter_ * len(X_train) / seconds:,.0f} samples/s, including the per-epoch "
          f"evaluation)")
    print(f"test accuracy: {accuracy:.4f}")
    if args.output:
        clf.save(args.output)
        print(f"model saved to {args.output}")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .io import load

    model = load(args.model, backend=args.backend)
    data = load_dataset(args.dataset, path=args.data_dir)
    start = time.perf_counter()
    accuracy = model.score(data.X_test, data.y_test)
    seconds = time.perf_counter() - start
    print(f"{args.model}: test accuracy on {data.name}: {accuracy:.4f} "
          f"({len(data.X_test) / seconds:,.0f} samples/s inference)")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from .io import load
    from .onnx_export import export_onnx, summarize

    model = load(args.model)
    try:
        proto = export_onnx(model, args.output)
    except (ImportError, OSError) as exc:  # missing onnx package, unwritable output
        raise RuntimeError(str(exc)) from None
    print(f"{args.output}: {summarize(proto)}")
    return 0


def _run_info(args: argparse.Namespace) -> int:
    from .info import collect_info, format_info

    print(format_info(collect_info()))
    return 0


def _parse_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(f"--hidden={text!r} must be comma-separated integers, e.g. 512,256") \
            from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"--hidden={text!r} needs at least one positive layer size")
    return sizes


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
