"""Optimizers over the flat parameter buffer, and step-size schedules.

Each optimizer owns its state buffers (velocity; Adam's ``m`` and ``v``) laid out like the
parameter buffer, so one backend call updates every layer.  The update rules follow
scikit-learn's ``SGDOptimizer`` and ``AdamOptimizer`` so the estimators behave alike.
``step(params, grads, backend=None)`` runs the update on ``backend``, the backend of the run
that trains (:meth:`gpumlp.backends.base.Backend.open_run`), as the training step passes it.
"""

from __future__ import annotations

import copy as _copy
import math
from typing import Any

from .backends import Backend, L2Term

SCHEDULES = ("constant", "invscaling", "adaptive", "cosine")
#: ``adaptive`` divides the step by this factor on a plateau and stops below MIN_ADAPTIVE_LR.
ADAPTIVE_FACTOR = 5.0
MIN_ADAPTIVE_LR = 1e-6


class Schedule:
    """The step size over training, updated at the end of every epoch.

    ``constant``: ``lr0`` throughout.  ``invscaling``: ``lr0 / (t + 1) ** power_t`` with ``t``
    the samples seen (the 1/k annealing).  ``adaptive``: ``lr0`` until the loss plateaus, then
    divided by 5 at each plateau; training stops once it is below 1e-6.  ``cosine``:
    ``lr0 * (1 + cos(pi * epoch / total_epochs)) / 2``, which anneals to zero at the last
    epoch.  Unlike scikit-learn, which applies schedules to SGD only, every solver follows it.
    """

    def __init__(self, kind: str = "constant", learning_rate_init: float = 0.001,
                 power_t: float = 0.5, total_epochs: int | None = None):
        if kind not in SCHEDULES:
            raise ValueError(f"learning_rate={kind!r} is not valid; choose one of {SCHEDULES}")
        if kind == "cosine" and not total_epochs:
            raise ValueError("learning_rate='cosine' needs the number of epochs (max_iter)")
        self.kind = kind
        self.learning_rate_init = learning_rate_init
        self.learning_rate = learning_rate_init
        self.power_t = power_t
        self.total_epochs = total_epochs

    def epoch_end(self, samples_seen: int, epoch: int) -> None:
        if self.kind == "invscaling":
            self.learning_rate = self.learning_rate_init / (samples_seen + 1) ** self.power_t
        elif self.kind == "cosine":
            progress = min(epoch / self.total_epochs, 1.0)
            self.learning_rate = self.learning_rate_init * 0.5 * (1 + math.cos(math.pi * progress))

    def on_plateau(self) -> bool:
        """React to a plateau; return True when training should stop."""
        if self.kind != "adaptive" or self.learning_rate <= MIN_ADAPTIVE_LR:
            return True
        self.learning_rate /= ADAPTIVE_FACTOR
        return False


class Optimizer:
    """Shared parts: a backend, a :class:`Schedule`, and epoch-level hooks."""

    def __init__(self, backend: Backend, schedule: Schedule):
        self.backend = backend
        self.schedule = schedule

    @property
    def learning_rate(self) -> float:
        return self.schedule.learning_rate

    @property
    def learning_rate_init(self) -> float:
        return self.schedule.learning_rate_init

    def epoch_end(self, samples_seen: int, epoch: int = 0) -> None:
        self.schedule.epoch_end(samples_seen, epoch)

    def __setstate__(self, state: dict) -> None:
        # State buffers may come back as read-only memory maps (joblib): train on owned copies.
        self.__dict__.update(state)
        for name in type(self).STATE_BUFFERS:
            if name in state:
                buffer = self.backend.empty(state[name].shape, state[name].dtype)
                buffer[...] = state[name]
                setattr(self, name, buffer)

    def on_plateau(self) -> bool:
        """React to a plateau; return True when training should stop."""
        return self.schedule.on_plateau()

    #: The names of the state buffers (laid out like the parameters).
    STATE_BUFFERS: tuple[str, ...] = ()

    def state_buffers(self) -> dict[str, Any]:
        """The state buffers by name (what a captured step updates besides the weights)."""
        return {name: getattr(self, name) for name in self.STATE_BUFFERS}

    def constants(self) -> tuple:
        """The update's constants besides the step size and step count (hashable)."""
        return ()

    @property
    def steps_taken(self) -> int:
        """The step count the update reads (bias correction); 0 where it reads none."""
        return 0

    def advance(self, steps: int) -> None:
        """Count ``steps`` updates made elsewhere (replayed from a captured graph)."""

    def copy(self) -> "Optimizer":
        """The same optimizer (settings, schedule, step count) with state buffers of its
        own, holding copies of this one's."""
        twin = _copy.copy(self)
        twin.schedule = _copy.copy(self.schedule)
        for name, buffer in self.state_buffers().items():
            own = self.backend.empty(buffer.shape, buffer.dtype)
            own[...] = buffer
            setattr(twin, name, own)
        return twin


class SGD(Optimizer):
    """Minibatch SGD with (Nesterov) momentum, as scikit-learn's ``SGDOptimizer``.

    ``velocity = momentum * velocity - lr * g``; the update is ``velocity`` or, with
    Nesterov, ``momentum * velocity - lr * g``.
    """

    def __init__(self, backend: Backend, params: Any, learning_rate_init: float = 0.1,
                 momentum: float = 0.9, nesterov: bool = True,
                 schedule: Schedule | str = "constant", power_t: float = 0.5):
        if isinstance(schedule, str):
            schedule = Schedule(schedule, learning_rate_init, power_t)
        super().__init__(backend, schedule)
        self.momentum = momentum
        self.nesterov = nesterov
        self.velocity = backend.zeros(params.shape, params.dtype)

    STATE_BUFFERS = ("velocity",)

    def constants(self) -> tuple:
        return (float(self.momentum), bool(self.nesterov))

    def step(self, params: Any, grads: Any, backend: Backend | None = None,
             l2: L2Term | None = None) -> None:
        """One update; ``backend`` is the run's (default: the optimizer's); ``l2``: the
        step's L2 term, folded into the update (given only where the backend folds it:
        :class:`~gpumlp.backends.L2Term`)."""
        (backend or self.backend).sgd_step(params, grads, self.velocity, self.learning_rate,
                                           self.momentum, self.nesterov, l2)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with scikit-learn's bias correction folded into the step size."""

    def __init__(self, backend: Backend, params: Any, learning_rate_init: float = 0.001,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8,
                 schedule: Schedule | str = "constant"):
        if isinstance(schedule, str):
            schedule = Schedule(schedule, learning_rate_init)
        super().__init__(backend, schedule)
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.t = 0
        self.m = backend.zeros(params.shape, params.dtype)
        self.v = backend.zeros(params.shape, params.dtype)

    STATE_BUFFERS = ("m", "v")

    def constants(self) -> tuple:
        return (float(self.beta_1), float(self.beta_2), float(self.epsilon))

    @property
    def steps_taken(self) -> int:
        return self.t

    def advance(self, steps: int) -> None:
        self.t += steps

    def step(self, params: Any, grads: Any, backend: Backend | None = None,
             l2: L2Term | None = None) -> None:
        """One update; ``backend`` and ``l2`` as :meth:`SGD.step` takes them."""
        self.t += 1
        (backend or self.backend).adam_step(params, grads, self.m, self.v, self.learning_rate,
                                            self.beta_1, self.beta_2, self.epsilon, self.t, l2)


def make_optimizer(solver: str, backend: Backend, params: Any, learning_rate_init: float,
                   schedule: str = "constant", power_t: float = 0.5,
                   total_epochs: int | None = None, **options: Any) -> SGD | Adam:
    """Build ``"sgd"`` or ``"adam"`` with its schedule and the options that apply to it."""
    plan = Schedule(schedule, learning_rate_init, power_t, total_epochs)
    if solver == "sgd":
        keys = ("momentum", "nesterov")
        return SGD(backend, params, learning_rate_init,
                   schedule=plan, **{k: options[k] for k in keys if k in options})
    if solver == "adam":
        keys = ("beta_1", "beta_2", "epsilon")
        return Adam(backend, params, learning_rate_init, schedule=plan,
                    **{k: options[k] for k in keys if k in options})
    raise ValueError(f"solver={solver!r} is not valid; choose 'sgd' or 'adam'")
