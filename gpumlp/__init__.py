"""gpumlp: multilayer perceptrons trained fast on a GPU (CuPy) and correctly on the CPU (NumPy).

Examples
--------
>>> import gpumlp
>>> clf = gpumlp.MLPClassifier(hidden_layer_sizes=(256, 128), backend="auto")  # doctest: +SKIP
>>> clf.fit(X_train, y_train).score(X_test, y_test)  # doctest: +SKIP
"""

from . import exceptions, graph_pool
from .backends import (Backend, BackendUnavailable, available_backends, get_backend,
                       use_backend)
from .estimators import MLPClassifier, MLPRegressor
from .exceptions import FileFormatError
from .io import load, save
from .network import Network
from .optim import SGD, Adam
from .perceptron import Perceptron
from .training import DivergenceError, DivergenceWarning, History, Trainer
from .version import __version__


def __getattr__(name: str):
    # scikit-learn's NotFittedError, ConvergenceWarning and DataConversionWarning when it is
    # installed (gpumlp's own otherwise), resolved on first use: see gpumlp.exceptions.
    if name in exceptions.NAMES:
        return getattr(exceptions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Adam", "Backend", "BackendUnavailable", "ConvergenceWarning", "DivergenceError",
           "DivergenceWarning", "DataConversionWarning", "FileFormatError",
           "History", "MLPClassifier", "MLPRegressor", "Network", "NotFittedError",
           "Perceptron", "SGD",
           "Trainer", "available_backends", "get_backend", "load", "save", "use_backend",
           "__version__"]
