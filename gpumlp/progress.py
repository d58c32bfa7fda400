"""A per-epoch progress line for the command line: bar, loss, accuracy, elapsed and ETA."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

from .training import History


class EpochProgress:
    """Training callback printing one line per epoch; never stops training.

    ``evaluate()`` returns the accuracy shown beside the loss (e.g. test accuracy).
    """

    def __init__(self, epochs: int, evaluate: Callable[[], float] | None = None,
                 enabled: bool = True, stream: TextIO | None = None, width: int = 24):
        self.epochs = epochs
        self.evaluate = evaluate
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.width = width
        self.start = time.perf_counter()
        self.accuracy: list[float] = []

    def __call__(self, epoch: int, history: History) -> bool:
        if not self.enabled:
            return False
        accuracy = self.evaluate() if self.evaluate else None
        if accuracy is not None:
            self.accuracy.append(accuracy)
        elapsed = time.perf_counter() - self.start
        done = min(epoch / self.epochs, 1.0)
        filled = int(round(done * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        eta = elapsed / done * (1 - done) if done else 0.0
        shown = f"  accuracy {accuracy:.4f}" if accuracy is not None else ""
        print(f"epoch {epoch:>{len(str(self.epochs))}}/{self.epochs} [{bar}] "
              f"loss {history.loss[-1]:.4f}{shown}  {elapsed:6.1f}s  eta {eta:5.1f}s",
              file=self.stream, flush=True)
        return False
