"""Optimizers over the flat parameter buffer, and step-size schedules.

Each optimizer owns its state buffers (velocity; Adam's ``m`` and ``v``) laid out like the
parameter buffer, so one backend call updates every layer.  The update rules follow
scikit-learn's ``SGDOptimizer`` and ``AdamOptimizer`` so the estimators behave alike.
"""

from __future__ import annotations

from typing import Any

from .backends import Backend

SCHEDULES = ("constant", "invscaling", "adaptive")
#: ``adaptive`` divides the step by this factor on a plateau and stops below MIN_ADAPTIVE_LR.
ADAPTIVE_FACTOR = 5.0
MIN_ADAPTIVE_LR = 1e-6


class SGD:
    """Minibatch SGD with (Nesterov) momentum and a step-size schedule.

    ``velocity = momentum * velocity - lr * g``; the update is ``velocity`` or, with
    Nesterov, ``momentum * velocity - lr * g``.  Schedules: ``constant``; ``invscaling``
    ``lr = lr0 / (t + 1) ** power_t`` with ``t`` the samples seen (the 1/k annealing);
    ``adaptive`` keeps ``lr`` until the loss plateaus, then divides it by 5.
    """

    def __init__(self, backend: Backend, params: Any, learning_rate_init: float = 0.1,
                 momentum: float = 0.9, nesterov: bool = True, schedule: str = "constant",
                 power_t: float = 0.5):
        if schedule not in SCHEDULES:
            raise ValueError(f"learning_rate={schedule!r} is not valid; choose one of {SCHEDULES}")
        self.backend = backend
        self.learning_rate_init = learning_rate_init
        self.learning_rate = learning_rate_init
        self.momentum = momentum
        self.nesterov = nesterov
        self.schedule = schedule
        self.power_t = power_t
        self.velocity = backend.zeros(params.shape, params.dtype)

    def step(self, params: Any, grads: Any) -> None:
        self.backend.sgd_step(params, grads, self.velocity, self.learning_rate,
                              self.momentum, self.nesterov)

    def epoch_end(self, samples_seen: int) -> None:
        if self.schedule == "invscaling":
            self.learning_rate = self.learning_rate_init / (samples_seen + 1) ** self.power_t

    def on_plateau(self) -> bool:
        """React to a plateau; return True when training should stop."""
        if self.schedule != "adaptive" or self.learning_rate <= MIN_ADAPTIVE_LR:
            return True
        self.learning_rate /= ADAPTIVE_FACTOR
        return False

    def state(self) -> dict[str, Any]:
        return {"velocity": self.velocity, "learning_rate": self.learning_rate}


class Adam:
    """Adam (Kingma & Ba) with scikit-learn's bias correction folded into the step size."""

    def __init__(self, backend: Backend, params: Any, learning_rate_init: float = 0.001,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8):
        self.backend = backend
        self.learning_rate_init = learning_rate_init
        self.learning_rate = learning_rate_init
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.t = 0
        self.m = backend.zeros(params.shape, params.dtype)
        self.v = backend.zeros(params.shape, params.dtype)

    def step(self, params: Any, grads: Any) -> None:
        self.t += 1
        self.backend.adam_step(params, grads, self.m, self.v, self.learning_rate_init,
                               self.beta_1, self.beta_2, self.epsilon, self.t)

    def epoch_end(self, samples_seen: int) -> None:
        """Adam keeps its step size."""

    def on_plateau(self) -> bool:
        return True

    def state(self) -> dict[str, Any]:
        return {"m": self.m, "v": self.v, "t": self.t}


def make_optimizer(solver: str, backend: Backend, params: Any, **options: Any) -> SGD | Adam:
    """Build ``"sgd"`` or ``"adam"`` with the options that apply to it."""
    if solver == "sgd":
        keys = ("learning_rate_init", "momentum", "nesterov", "schedule", "power_t")
        return SGD(backend, params, **{k: options[k] for k in keys if k in options})
    if solver == "adam":
        keys = ("learning_rate_init", "beta_1", "beta_2", "epsilon")
        return Adam(backend, params, **{k: options[k] for k in keys if k in options})
    raise ValueError(f"solver={solver!r} is not valid; choose 'sgd' or 'adam'")
