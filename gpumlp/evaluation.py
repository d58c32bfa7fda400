"""A network's loss and score on held-out data, as ``fit(validation_data=...)`` records them.

The loss is the training loss's data term on the network's outputs (no L2 term): cross-entropy
for the softmax and sigmoid outputs, with the probabilities clipped to ``[eps, 1 - eps]`` of
their dtype as scikit-learn clips them, and ``||a - t||^2 / (2 n)`` for squared error.  The
score is what the estimators' ``score`` gives: accuracy (subset accuracy for several sigmoid
outputs) for classifiers, R^2 averaged over the outputs for regression.

Only the network's prediction runs (no dropout, no random numbers), and both numbers come
back to the host in one transfer.

Examples
--------
>>> import numpy as np
>>> from gpumlp.network import Network
>>> net = Network([2, 3], seed=0, backend="numpy")
>>> T = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
>>> loss, accuracy = evaluate(net, np.ones((4, 2), np.float32), T)
>>> 0 <= accuracy <= 1 and loss > 0
True
"""

from __future__ import annotations

from typing import Any

import numpy as np


def evaluate(network: Any, X: Any, T: Any) -> tuple[float, float]:
    """``(loss, score)`` of ``network`` on backend arrays ``X`` and targets ``T`` (one-hot
    or 0/1 columns for classifiers, values for regression)."""
    backend = network.backend
    xp = backend.xp
    output = network.predict_output(X)
    n = output.shape[0]
    operation = network.loss.operation
    if operation == "squared_error":
        diff = output.astype(np.float64) - T
        loss = (diff * diff).sum() / (2 * n)
        score = r2(xp, output, T)
    else:
        eps = np.finfo(output.dtype).eps
        p = xp.clip(output.astype(np.float64), eps, 1 - eps)
        if operation == "softmax_xent":
            loss = -(T * xp.log(p)).sum() / n
            correct = output.argmax(axis=1) == T.argmax(axis=1)
        else:  # sigmoid_bce: every output column is a binary decision
            loss = -(T * xp.log(p) + (1 - T) * xp.log(1 - p)).sum() / n
            correct = ((output > 0.5) == (T > 0.5)).all(axis=1)
        score = correct.mean()
    both = backend.to_numpy(xp.stack([xp.asarray(loss, np.float64),
                                      xp.asarray(score, np.float64)]))
    return float(both[0]), float(both[1])


def r2(xp: Any, predicted: Any, target: Any, sample_weight: Any = None) -> Any:
    """R^2 per output column, averaged (a 0-d array); a constant column scores 0, as in
    scikit-learn."""
    weights = xp.ones(len(target)) if sample_weight is None else xp.asarray(sample_weight)
    weights = weights[:, None]
    mean = (weights * target).sum(axis=0) / weights.sum()
    residual = (weights * (target - predicted) ** 2).sum(axis=0)
    total = (weights * (target - mean) ** 2).sum(axis=0)
    per_output = xp.where(total > 0, 1 - residual / xp.where(total > 0, total, 1), 0.0)
    return per_output.mean()
