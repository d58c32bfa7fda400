"""Full-batch L-BFGS over the flat parameter buffer: scikit-learn's ``solver="lbfgs"``.

The optimiser is SciPy's L-BFGS-B (``scipy.optimize.minimize(method="L-BFGS-B")``), called
exactly as scikit-learn calls it (``maxiter``, ``maxfun``, ``gtol=tol``), so from the same
initial weights both take the same iterates up to rounding.  SciPy was chosen over an own
two-loop recursion because its line search (More-Thuente, with L-BFGS-B's safeguards) is what
makes scikit-learn's results what they are, and it is a dependency of scikit-learn anyway; an
own implementation would be a second, subtly different algorithm to keep in step.

Every function evaluation runs on the network's backend: the loss and the gradient of the
whole data set are one forward/backward pass of :meth:`Network.loss_and_gradients` (the GPU
kernels on the CuPy backend).  Only the packed parameter vector crosses to the host and back,
once per evaluation — small next to a full-batch pass over the data.

Examples
--------
>>> import numpy as np
>>> from gpumlp.network import Network
>>> from gpumlp.lbfgs import minimize_lbfgs
>>> X = np.random.default_rng(0).normal(size=(64, 3))
>>> net = Network([3, 8, 1], loss="squared_error", dtype=np.float64, backend="numpy")
>>> result = minimize_lbfgs(net, X, X[:, :1] * 2, alpha=1e-4, max_iter=200)
>>> result.loss < 1e-2
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .network import Network
from .training import DivergenceError


@dataclass
class LbfgsResult:
    """What a run of :func:`minimize_lbfgs` did."""

    n_iter: int
    n_fun: int
    loss: float
    converged: bool
    message: str


def minimize_lbfgs(network: Network, X: Any, T: Any, alpha: float = 0.0,
                   sample_weight: np.ndarray | None = None, max_iter: int = 200,
                   max_fun: int = 15000, tol: float = 1e-4,
                   verbose: bool = False) -> LbfgsResult:
    """Minimise the regularised full-batch loss of ``network`` on dense backend arrays.

    The objective is scikit-learn's: the (weighted) mean loss plus
    ``0.5 * alpha * sum ||W||^2 / n`` (``n`` the number of rows, or the sum of
    ``sample_weight``).  The network's parameters hold the solution afterwards.

    Raises
    ------
    ImportError
        SciPy is not installed.
    FloatingPointError
        (:class:`gpumlp.DivergenceError`) the solution is not finite; the parameters are
        restored to where the run started.
    """
    try:
        from scipy.optimize import minimize
    except ImportError:
        raise ImportError("solver='lbfgs' uses SciPy's L-BFGS-B; install it with "
                          "pip install 'gpumlp[lbfgs]', or use solver='adam' or 'sgd'") from None

    backend = network.backend
    n = X.shape[0]
    workspace = network.new_workspace(n)
    weights, weight_sum = None, float(n)
    if sample_weight is not None:
        weight_sum = float(np.sum(sample_weight))
        weights = backend.asarray(np.asarray(sample_weight), network.dtype)
    decay = alpha / weight_sum
    start = network.get_flat_params()
    evaluations = {"count": 0, "last": np.inf, "iterations": 0}

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        network.set_flat_params(theta)
        loss = network.loss_and_gradients(X, T, workspace, decay=decay, row_weights=weights,
                                          weight_sum=weight_sum, backend=run.backend)
        if alpha:
            loss = loss + 0.5 * decay * network.squared_weight_norm()
        evaluations["count"] += 1
        evaluations["last"] = float(loss)
        return evaluations["last"], network.get_flat_grads().astype(np.float64)

    def report(_: Any) -> None:
        evaluations["iterations"] += 1
        print(f"Iteration {evaluations['iterations']}, loss = {evaluations['last']:.8f}")

    with backend.open_run(network.dtype) as run:  # the evaluations' device state
        result = minimize(objective, start.astype(np.float64), method="L-BFGS-B", jac=True,
                          options={"maxfun": max_fun, "maxiter": max_iter, "gtol": tol},
                          callback=report if verbose else None)
    if not np.all(np.isfinite(result.x)) or not np.isfinite(result.fun):
        network.set_flat_params(start)
        raise DivergenceError(f"lbfgs produced non-finite parameters (loss={result.fun}); "
                              "scale the inputs or raise alpha")
    network.set_flat_params(result.x)
    return LbfgsResult(n_iter=min(int(result.nit), max_iter), n_fun=int(result.nfev),
                       loss=float(result.fun), converged=result.status == 0,
                       message=str(result.message))
