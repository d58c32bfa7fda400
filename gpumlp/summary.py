"""What a network is made of and what it costs: layers, parameters, FLOPs and memory.

:meth:`gpumlp.network.Network.summary` builds a :class:`NetworkSummary`; printed (or shown
in a REPL) it is a table, and :meth:`NetworkSummary.as_dict` gives the same numbers for
programs.  ``gpumlp info model.npz`` prints it for a saved model.

FLOPs count a multiply and an add as two.  Per sample, a layer of ``n_in`` inputs and
``n_out`` units does ``2 n_in n_out + n_out`` in the forward pass (product and bias); a
training step adds the weight-gradient product (``2 n_in n_out``) and, for every layer but
the first, the product that carries the gradient to the layer below (``2 n_in n_out``).
Elementwise work (activations, loss, optimizer) is not counted: it is a few operations per
unit, small beside the products.

Examples
--------
>>> from gpumlp.network import Network
>>> summary = Network([4, 8, 3], seed=0, backend="numpy").summary(optimizer="adam")
>>> summary.n_params
67
>>> summary.as_dict()["layers"][0]["flops_forward"]
72
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

#: Optimizer state buffers, each the size of the parameter buffer, by solver name.
STATE_BUFFERS_PER_SOLVER = {"adam": 2, "sgd": 1, "lbfgs": 0}


@dataclass(frozen=True)
class LayerSummary:
    """One dense layer: sizes, activation, parameters and forward / training FLOPs."""

    name: str
    n_in: int
    n_out: int
    activation: str
    params: int
    flops_forward: int
    flops_training: int


@dataclass(frozen=True)
class NetworkSummary:
    """The table :meth:`Network.summary <gpumlp.network.Network.summary>` prints."""

    layers: tuple[LayerSummary, ...]
    loss: str
    backend: str
    dtype: str
    precision: str
    #: Bytes of one parameter buffer (weights and biases with their alignment gaps); the
    #: gradients take as much again.
    parameter_bytes: int
    #: ``(name, number of parameter-sized buffers)`` of the optimizer, or None when unknown.
    optimizer: tuple[str, int] | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def n_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def flops_forward(self) -> int:
        """Forward FLOPs per sample (prediction)."""
        return sum(layer.flops_forward for layer in self.layers)

    @property
    def flops_training(self) -> int:
        """FLOPs per sample of a training step (forward, backward, weight gradients)."""
        return sum(layer.flops_training for layer in self.layers)

    @property
    def optimizer_state_bytes(self) -> int | None:
        return None if self.optimizer is None else self.optimizer[1] * self.parameter_bytes

    def as_dict(self) -> dict[str, Any]:
        """Every number of the summary, JSON-friendly."""
        return {"layers": [asdict(layer) for layer in self.layers], "loss": self.loss,
                "backend": self.backend, "dtype": self.dtype, "precision": self.precision,
                "n_params": self.n_params, "flops_forward": self.flops_forward,
                "flops_training": self.flops_training,
                "parameter_bytes": self.parameter_bytes,
                "gradient_bytes": self.parameter_bytes,
                "optimizer": None if self.optimizer is None else self.optimizer[0],
                "optimizer_state_bytes": self.optimizer_state_bytes,
                "notes": list(self.notes)}

    def __str__(self) -> str:
        header = ("layer", "shape", "activation", "params", "FLOPs/sample")
        rows = [(layer.name, f"{layer.n_in} -> {layer.n_out}", layer.activation,
                 f"{layer.params:,}", f"{layer.flops_forward:,}") for layer in self.layers]
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(5)]
        line = "  ".join

        def format_row(row: tuple) -> str:
            cells = [str(cell).ljust(width) if i < 3 else str(cell).rjust(width)
                     for i, (cell, width) in enumerate(zip(row, widths))]
            return line(cells).rstrip()

        rule = "-" * len(format_row(header))
        text = [f"Network: {len(self.layers)} dense layer(s), loss {self.loss}", rule,
                format_row(header), rule, *map(format_row, rows), rule,
                f"parameters        {self.n_params:,}",
                f"FLOPs per sample  {self.flops_forward:,} forward, "
                f"{self.flops_training:,} per training step",
                f"parameter memory  {_size(self.parameter_bytes)} "
                f"(+ {_size(self.parameter_bytes)} gradients)"]
        if self.optimizer is not None:
            name, buffers = self.optimizer
            text.append(f"optimizer state   {_size(buffers * self.parameter_bytes)} "
                        f"({name}: {buffers} buffer(s) the size of the parameters)")
        else:
            text.append(f"optimizer state   {_size(2 * self.parameter_bytes)} with adam, "
                        f"{_size(self.parameter_bytes)} with sgd")
        text.append(f"backend {self.backend}, dtype {self.dtype}, precision {self.precision}")
        text += list(self.notes)
        return "\n".join(text)

    def __repr__(self) -> str:  # a REPL shows the table, not a dataclass dump
        return str(self)


def summarize(network: Any, optimizer: Any = None) -> NetworkSummary:
    """The summary of ``network``; ``optimizer`` is a solver name (``"adam"``, ``"sgd"``,
    ``"lbfgs"``), an :mod:`gpumlp.optim` optimizer, or None (both common ones shown)."""
    itemsize = np.dtype(network.dtype).itemsize
    layers = []
    for index in range(network.n_layers):
        n_in, n_out = network.sizes[index], network.sizes[index + 1]
        product = 2 * n_in * n_out
        activation = (network.hidden_activations[index] if index < network.n_layers - 1
                      else network.output_activation)
        layers.append(LayerSummary(
            name=f"dense_{index + 1}", n_in=n_in, n_out=n_out, activation=activation,
            params=n_in * n_out + n_out, flops_forward=product + n_out,
            flops_training=product + n_out + product + (product if index else 0)))
    return NetworkSummary(layers=tuple(layers), loss=network.loss.name,
                          backend=network.backend.name, dtype=np.dtype(network.dtype).name,
                          precision=network.precision,
                          parameter_bytes=int(network.params.size) * itemsize,
                          optimizer=_optimizer_buffers(optimizer))


def _optimizer_buffers(optimizer: Any) -> tuple[str, int] | None:
    if optimizer is None:
        return None
    if isinstance(optimizer, str):
        if optimizer not in STATE_BUFFERS_PER_SOLVER:
            raise ValueError(f"optimizer={optimizer!r} is not known; choose one of "
                             f"{tuple(STATE_BUFFERS_PER_SOLVER)}, an optimizer object or None")
        return optimizer, STATE_BUFFERS_PER_SOLVER[optimizer]
    buffers = getattr(optimizer, "state_buffers", None)
    if not callable(buffers):
        raise TypeError(f"optimizer must be a solver name or a gpumlp.optim optimizer; got "
                        f"{type(optimizer).__name__}")
    return type(optimizer).__name__, len(buffers())


def _size(n_bytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.2f} {unit}"
    return f"{n_bytes} B"
