"""Per-epoch progress of ``gpumlp train``: one line per epoch, and the curves as a plot.

On a terminal each line carries a bar; written to a file or a pipe it is plain
``key value`` text.  Either way every epoch is one whole line, flushed as it ends: no carriage
returns, so a log file reads the same as the screen did.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable, TextIO

from . import config
from .atomic import atomic_write
from .training import History


class EpochProgress:
    """Training callback that records loss and accuracy per epoch and prints a line for each.

    Parameters
    ----------
    epochs : int
        The epoch budget (for the bar and the time left).
    evaluate : callable or None
        ``evaluate() -> float``: the accuracy recorded beside the loss (e.g. on the test set).
    enabled : bool
        Print the lines; when false the curves are still recorded.
    stream : file, default ``sys.stdout``
    bar : bool or None
        Draw a bar; ``None`` draws one only when ``stream`` is a terminal.
    metric : str, default "accuracy"
        The name printed before ``evaluate()``'s value (e.g. ``"R2"`` for a regressor).

    Examples
    --------
    >>> import io
    >>> from gpumlp.training import History
    >>> out = io.StringIO()
    >>> progress = EpochProgress(2, evaluate=lambda: 0.5, stream=out)
    >>> progress(1, History(loss=[0.7]))
    False
    >>> out.getvalue().split()[:6]
    ['epoch', '1/2', 'loss', '0.7000', 'accuracy', '0.5000']
    """

    def __init__(self, epochs: int, evaluate: Callable[[], float] | None = None,
                 enabled: bool = True, stream: TextIO | None = None, width: int = 24,
                 bar: bool | None = None, metric: str = "accuracy"):
        self.epochs = epochs
        self.evaluate = evaluate
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.width = width
        self.bar = _is_terminal(self.stream) if bar is None else bar
        self.metric = metric
        self.start = time.perf_counter()
        self.epoch: list[int] = []
        self.loss: list[float] = []
        self.accuracy: list[float] = []

    def __call__(self, epoch: int, history: History) -> bool:
        accuracy = self.evaluate() if self.evaluate else None
        self.epoch.append(epoch)
        self.loss.append(history.loss[-1])
        if accuracy is not None:
            self.accuracy.append(accuracy)
        if self.enabled:
            print(self.line(epoch, history.loss[-1], accuracy), file=self.stream, flush=True)
        return False  # progress never stops training

    def line(self, epoch: int, loss: float, accuracy: float | None) -> str:
        """The text printed for one epoch."""
        elapsed = time.perf_counter() - self.start
        done = min(epoch / self.epochs, 1.0)
        eta = elapsed / done * (1 - done) if done else 0.0
        counter = f"{epoch:>{len(str(self.epochs))}}/{self.epochs}"
        shown = f"  {self.metric} {accuracy:.4f}" if accuracy is not None else ""
        if self.bar:
            filled = int(round(done * self.width))
            bar = "#" * filled + "." * (self.width - filled)
            return (f"epoch {counter} [{bar}] loss {loss:.4f}{shown}  {elapsed:6.1f}s  "
                    f"eta {eta:5.1f}s")
        return f"epoch {counter}  loss {loss:.4f}{shown}  elapsed {elapsed:.1f}s  eta {eta:.1f}s"


def _is_terminal(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty()) and config.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def matplotlib_missing() -> str | None:
    """``None`` when matplotlib can draw here, else a sentence saying how to get it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "matplotlib is not installed (pip install matplotlib, or gpumlp[plot])"
    return None


def plot_curves(path: str | os.PathLike, loss: list[float], accuracy: list[float],
                title: str = "", accuracy_label: str = "test accuracy") -> None:
    """Write a PNG of the training loss and ``accuracy`` per epoch (needs matplotlib).

    The file is written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels = 2 if accuracy else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    epochs = range(1, len(loss) + 1)
    axes[0][0].plot(epochs, loss, marker="o", markersize=3)
    axes[0][0].set(xlabel="epoch", ylabel="training loss", title="loss")
    if accuracy:
        axes[0][1].plot(range(1, len(accuracy) + 1), accuracy, marker="o", markersize=3,
                        color="tab:green")
        axes[0][1].set(xlabel="epoch", ylabel=accuracy_label, title=accuracy_label)
    for ax in axes[0]:
        ax.grid(True, alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
