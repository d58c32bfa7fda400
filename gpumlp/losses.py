"""Losses and the output activation each is paired with.

Softmax + cross-entropy and sigmoid + binary cross-entropy are computed from the logits in one
fused backend operation (their gradient collapses to ``(A - T) / n``); squared error follows
whatever output activation the network has.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Loss:
    """A loss: its backend operation and how the output layer relates to it."""

    name: str
    #: Backend method computing ``(loss, H_L)``.
    operation: str
    #: Activation applied at prediction time (``"softmax"`` is handled by the network).
    output_activation: str
    #: Whether the operation takes logits (the output activation is fused into the loss).
    from_logits: bool


LOSSES: dict[str, Loss] = {
    "softmax_xent": Loss("softmax_xent", "softmax_xent", "softmax", True),
    "sigmoid_bce": Loss("sigmoid_bce", "sigmoid_bce", "sigmoid", True),
    "squared_error": Loss("squared_error", "squared_error", "identity", False),
}


def get_loss(name: str) -> Loss:
    """Look a loss up by name, with a clear error listing the choices."""
    try:
        return LOSSES[name]
    except (KeyError, TypeError):
        raise ValueError(f"loss={name!r} is not known; choose one of {tuple(LOSSES)}") from None
