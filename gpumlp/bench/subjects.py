"""What the benchmark measures: gpumlp on each backend and the peers a user would pick.

Every subject trains the same network (ReLU hidden layers, softmax cross-entropy, Adam with
learning rate 1e-3 and no weight decay, float32) on the same synthetic batches, which are
resident on the subject's device before timing starts.  ``train(steps)`` runs that many full
steps (forward, loss, backward, update) over consecutive batches of the pool;
``infer(steps)`` runs forward passes with class probabilities.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..backends import get_backend
from ..network import Network
from ..optim import Adam
from ..training import Trainer

LEARNING_RATE = 1e-3


class Subject:
    """One implementation under test."""

    name = "subject"
    device = "cpu"

    def prepare(self, sizes: list[int], batch: int, X: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def train(self, steps: int) -> None:
        raise NotImplementedError

    def infer(self, steps: int) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        """Wait for queued device work, so a timer around a call measures all of it."""

    def train_loss(self) -> float | None:
        """The last training step's loss (``nan`` where the parameters are no longer finite),
        or ``None`` where the subject cannot tell: a diverged run is not a timing to keep."""
        return None

    def settings(self) -> dict[str, Any]:
        """How this subject is configured (recorded in the results)."""
        return {}


class GpumlpSubject(Subject):
    """gpumlp's network and Adam through the public lower-level API; each training step is
    the trainer's own (:class:`gpumlp.step.TrainingStep`: gather, forward, loss, backward,
    update), launched eagerly."""

    #: The trainer's ``cuda_graph`` mode.
    cuda_graph = "off"

    def __init__(self, backend: str):
        self.backend = get_backend(backend)
        self.name = f"gpumlp-{self.backend.name}"
        self.device = "cpu" if self.backend.arrays_on_host else "gpu"

    def prepare(self, sizes, batch, X, y):
        self.backend.warm_up()  # compiled (or loaded from cache) before any timing
        self.net = Network(sizes, "relu", "softmax_xent", dtype=np.float32,
                           backend=self.backend, seed=0)
        self.optimizer = Adam(self.backend, self.net.params, LEARNING_RATE)
        n_batches = len(X) // batch
        T = np.eye(sizes[-1], dtype=np.float32)[y]
        self.batches = [(self.backend.asarray(X[i * batch:(i + 1) * batch]),
                         self.backend.asarray(T[i * batch:(i + 1) * batch]))
                        for i in range(n_batches)]
        self.workspace = self.net.new_workspace(batch)
        self.probabilities = self.backend.empty((batch, sizes[-1]), np.float32)
        xp = self.backend.xp
        rows = n_batches * batch
        self.X = xp.concatenate([x for x, _ in self.batches])[:rows]
        self.T = xp.concatenate([t for _, t in self.batches])[:rows]
        self.trainer = Trainer(self.net, self.optimizer, batch_size=batch, shuffle=False,
                               cuda_graph=self.cuda_graph)
        self.buffers = self.trainer.step.new_buffers(batch, sizes[0], sizes[-1])
        self.indices = [xp.arange(i * batch, (i + 1) * batch) for i in range(n_batches)]
        # One run for all the subject's steps and inferences, as a fit's epoch has one: its
        # device state (the GPU's step scalars, split-K scratch) is made once, not per call.
        if getattr(self, "run", None) is not None:
            self.run.close()
        self.run = self.backend.open_run(np.float32)
        self.step = self.trainer.step.bound_to(self.net, self.optimizer, self.run.backend)
        self.gathers = [self.step.gather_rows(self.X, self.T, index) for index in self.indices]

    def train(self, steps):
        step = self.step
        for i in range(steps):
            self.last_loss = step(self.gathers[i % len(self.gathers)], self.buffers,
                                  step=i)  # no host sync

    def infer(self, steps):
        for i in range(steps):
            x, _ = self.batches[i % len(self.batches)]
            ops = self.run.backend
            ops.softmax(self.net.forward(x, self.workspace, backend=ops), self.probabilities)

    def sync(self):
        self.backend.synchronize()

    def train_loss(self):
        if not bool(self.backend.xp.isfinite(self.net.params).all()):
            return math.nan
        loss = getattr(self, "last_loss", None)  # a replayed graph's loss stays on the device
        return None if loss is None else float(loss)


class GpumlpGraphSubject(GpumlpSubject):
    """gpumlp on the GPU with each step a replayed CUDA graph (the backend's
    :meth:`~gpumlp.backends.base.Backend.capture_steps`)."""

    cuda_graph = "on"

    def __init__(self):
        super().__init__("cupy")
        self.name = "gpumlp-cupy-graph"

    def prepare(self, sizes, batch, X, y):
        super().prepare(sizes, batch, X, y)
        self.runner = self.backend.capture_steps(self.trainer, self.X, self.T)

    def train(self, steps):
        self.runner.run_steps(steps)

    def sync(self):
        self.runner.synchronize()
        self.backend.synchronize()

    def settings(self):
        return {"steps_per_graph": self.runner.steps_per_graph}


class TorchRuntime:
    """What the PyTorch subjects share: waiting for the device and describing the run.

    Needs ``self.torch``, ``self.torch_device`` and ``self.compiled``."""

    def sync(self) -> None:
        if self.torch_device == "cuda":
            self.torch.cuda.synchronize()

    def settings(self) -> dict:
        return {"threads": self.torch.get_num_threads(), "compiled": self.compiled,
                "optimizer": "Adam(fused)" if self.torch_device == "cuda" else "Adam(foreach)"}


class TorchSubject(TorchRuntime, Subject):
    """PyTorch ``nn.Sequential`` with Adam (foreach), eager or ``torch.compile``d."""

    def __init__(self, device: str, compiled: bool = False):
        import torch

        self.torch = torch
        self.device = "gpu" if device == "cuda" else "cpu"
        self.torch_device = device
        self.compiled = compiled
        self.name = f"torch-{'compile' if compiled else 'eager'}-{self.device}"

    def prepare(self, sizes, batch, X, y):
        torch = self.torch
        layers: list[Any] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(*layers).to(self.torch_device)
        fused = self.torch_device == "cuda"
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LEARNING_RATE,
                                          foreach=not fused, fused=fused or None)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        forward = self.model
        if self.compiled:
            forward = torch.compile(self.model, mode="reduce-overhead")
        self.forward = forward
        n_batches = len(X) // batch
        X_dev = torch.from_numpy(X[:n_batches * batch]).to(self.torch_device)
        y_dev = torch.from_numpy(y[:n_batches * batch].astype(np.int64)).to(self.torch_device)
        self.batches = [(X_dev[i * batch:(i + 1) * batch], y_dev[i * batch:(i + 1) * batch])
                        for i in range(n_batches)]

    def train(self, steps):
        for i in range(steps):
            x, y = self.batches[i % len(self.batches)]
            self.optimizer.zero_grad(set_to_none=True)
            self.last_loss = self.loss_fn(self.forward(x), y)
            self.last_loss.backward()
            self.optimizer.step()

    def infer(self, steps):
        with self.torch.inference_mode():
            for i in range(steps):
                x, _ = self.batches[i % len(self.batches)]
                self.model(x).softmax(dim=1)

    def train_loss(self):
        return float(self.last_loss.detach())


class SklearnSubject(Subject):
    """scikit-learn's ``MLPClassifier`` driven through ``partial_fit``, as a user would."""

    name = "sklearn"

    def prepare(self, sizes, batch, X, y):
        from sklearn.neural_network import MLPClassifier

        self.batch = batch
        self.X, self.y = X, y
        self.model = MLPClassifier(tuple(sizes[1:-1]), solver="adam", alpha=0.0,
                                   batch_size=batch, learning_rate_init=LEARNING_RATE,
                                   shuffle=False, random_state=0)
        self.model.partial_fit(X[:batch], y[:batch], classes=np.arange(sizes[-1]))

    def train(self, steps):
        # One call runs `steps` minibatches of `batch` rows; the pool holds at least that many.
        rows = steps * self.batch
        self.model.partial_fit(self.X[:rows], self.y[:rows])

    def infer(self, steps):
        for i in range(steps):
            self.model.predict_proba(self.X[i * self.batch % len(self.X):][:self.batch])

    def train_loss(self):
        return float(self.model.loss_)  # the mean over the last call's minibatches

    def settings(self):
        return {"driven_by": "partial_fit"}
