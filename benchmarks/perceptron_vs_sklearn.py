"""gpumlp.Perceptron against scikit-learn's on digits and iris: fit time and test accuracy.

Run from the repository root::

    PYTHONPATH=. python benchmarks/perceptron_vs_sklearn.py [--repeats 21]

Times are the median of ``--repeats`` fits of each library on the whole digits set with
default parameters, interleaved, after one warm-up fit each (the warm-up of gpumlp loads its
compiled epoch from Numba's disk cache, or compiles it the first time; that first fit is
printed separately).  Accuracies are on a stratified 25 % test split for seeds 0-4.
Prints a JSON object with the machine's CPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits, load_iris
from sklearn.linear_model import Perceptron as SklearnPerceptron
from sklearn.model_selection import train_test_split

import gpumlp


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def seconds(fit) -> float:
    start = time.perf_counter()
    fit()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    X, y = load_digits(return_X_y=True)
    first = seconds(lambda: gpumlp.Perceptron().fit(X, y))
    seconds(lambda: SklearnPerceptron().fit(X, y))
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(seconds(lambda: gpumlp.Perceptron().fit(X, y)))
        theirs.append(seconds(lambda: SklearnPerceptron().fit(X, y)))
    accuracy = {}
    for name, (data, target) in {"digits": (X, y),
                                 "iris": load_iris(return_X_y=True)}.items():
        scores = {"gpumlp": [], "sklearn": []}
        for seed in range(5):
            X_tr, X_te, y_tr, y_te = train_test_split(data, target, test_size=0.25,
                                                      random_state=seed, stratify=target)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for key, cls in (("gpumlp", gpumlp.Perceptron), ("sklearn", SklearnPerceptron)):
                    scores[key].append(cls(random_state=seed).fit(X_tr, y_tr).score(X_te, y_te))
        accuracy[name] = {key: {"per_seed": [round(s, 4) for s in values],
                                "mean": round(float(np.mean(values)), 4)}
                          for key, values in scores.items()}
    ours_fit, theirs_fit = gpumlp.Perceptron().fit(X, y), SklearnPerceptron().fit(X, y)
    print(json.dumps({
        "cpu": cpu_model(), "python": platform.python_version(),
        "digits_fit_seconds": {"gpumlp_median": round(statistics.median(ours), 5),
                               "sklearn_median": round(statistics.median(theirs), 5),
                               "ratio": round(statistics.median(ours)
                                              / statistics.median(theirs), 2),
                               "gpumlp_first_fit_in_process": round(first, 3),
                               "repeats": args.repeats},
        "digits_n_iter": {"gpumlp": ours_fit.n_iter_, "sklearn": theirs_fit.n_iter_},
        "test_accuracy": accuracy,
    }, indent=2))


if __name__ == "__main__":
    main()
