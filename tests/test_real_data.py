"""A short training run on the real Fashion-MNIST: the whole library end to end."""

import warnings

import numpy as np
import pytest

from gpumlp import ConvergenceWarning, MLPClassifier
from gpumlp.data import DatasetNotFoundError, load_dataset


@pytest.fixture(scope="module")
def fashion():
    try:
        return load_dataset("fashion-mnist", download=False)
    except DatasetNotFoundError as exc:  # .ci/run installs it; a bare checkout may not have it
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")


def test_two_epochs_reach_85_percent_on_fashion_mnist(fashion):
    clf = MLPClassifier((256,), batch_size=128, max_iter=2, random_state=0, backend="numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(fashion.X_train, fashion.y_train)
    accuracy = clf.score(fashion.X_test, fashion.y_test)
    assert accuracy >= 0.85, accuracy
    assert clf.n_iter_ == 2 and np.all(np.diff(clf.loss_curve_) < 0)
