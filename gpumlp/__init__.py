"""gpumlp: multilayer perceptrons trained fast on a GPU (CuPy) and correctly on the CPU (NumPy).

Examples
--------
>>> import gpumlp
>>> clf = gpumlp.MLPClassifier(hidden_layer_sizes=(256, 128), backend="auto")  # doctest: +SKIP
>>> clf.fit(X_train, y_train).score(X_test, y_test)  # doctest: +SKIP
"""

from .backends import (Backend, BackendUnavailable, available_backends, get_backend,
                       use_backend)
from .estimators import ConvergenceWarning, MLPClassifier, MLPRegressor
from .io import load
from .network import Network
from .optim import SGD, Adam
from .perceptron import Perceptron
from .training import DivergenceWarning, History, Trainer

__version__ = "0.1.0"

__all__ = ["Adam", "Backend", "BackendUnavailable", "ConvergenceWarning", "DivergenceWarning",
           "History", "MLPClassifier", "MLPRegressor", "Network", "Perceptron", "SGD",
           "Trainer", "available_backends", "get_backend", "load", "use_backend",
           "__version__"]
