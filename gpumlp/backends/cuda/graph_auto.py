"""``cuda_graph="auto"``: replay captured steps only where that is measured to be faster.

A CUDA graph saves the launch overhead of every kernel of a step (5-25 µs each), which
decides the speed at small batches; at large batches the arithmetic dominates and a graph
can only match eager execution — or lose, when the captured GEMMs are slower than the ones
the eager path picks.  So the first time a step shape is trained with ``auto``, both ways
are timed over the same few steps (state restored afterwards, so training is unchanged) and
the verdict is kept for that shape for the rest of the process.

The verdict's key is the step's shape: layer sizes, activations, loss, dtype, batch rows,
and whether dropout and L2 are on (they change the kernels), plus the device.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

#: Steps per timed repeat, and repeats per way (interleaved; the best of each is compared).
MEASURE_STEPS = 8
MEASURE_REPEATS = 3


def step_shape(network: Any, rows: int, dropout: float, alpha: float,
               device: Any = None) -> tuple:
    """The key of a verdict: what decides the kernels a step launches and their sizes."""
    return (tuple(network.sizes), tuple(network.hidden_activations), network.loss.operation,
            network.dtype.str, int(rows), bool(dropout), bool(alpha), device)


class GraphVerdicts:
    """Per-shape answers to "is a replayed step faster than an eager one?" (thread-safe)."""

    def __init__(self) -> None:
        self._verdicts: dict[tuple, dict[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bool | None:
        """``True``/``False`` once measured for ``key``, else ``None``."""
        with self._lock:
            timing = self._verdicts.get(key)
        return None if timing is None else timing["graph"] < timing["eager"]

    def timings(self, key: tuple) -> dict[str, float] | None:
        """Seconds per step of each way for ``key`` (what the verdict was based on)."""
        with self._lock:
            timing = self._verdicts.get(key)
        return None if timing is None else dict(timing)

    def measure(self, key: tuple, eager: Callable[[int], None], graph: Callable[[int], None],
                sync: Callable[[], None], steps: int = MEASURE_STEPS,
                repeats: int = MEASURE_REPEATS,
                clock: Callable[[], float] = time.perf_counter) -> bool:
        """Time ``eager(steps)`` against ``graph(steps)`` and keep the verdict for ``key``.

        Each callable runs ``steps`` training steps and may leave work queued; ``sync``
        waits for it.  One untimed call of each warms caches first; then the repeats are
        interleaved (eager, graph, eager, ...) so that drift hits both alike, and the best
        repeat of each way is compared.  Returns True when the graph is faster.
        """
        if steps < 1 or repeats < 1:
            raise ValueError(f"steps={steps} and repeats={repeats} must be at least 1")
        ways = {"eager": eager, "graph": graph}
        for run in ways.values():
            run(steps)
            sync()
        best = {name: float("inf") for name in ways}
        for _ in range(repeats):
            for name, run in ways.items():
                sync()
                start = clock()
                run(steps)
                sync()
                best[name] = min(best[name], (clock() - start) / steps)
        with self._lock:
            self._verdicts[key] = best
        return best["graph"] < best["eager"]

    def clear(self) -> None:
        with self._lock:
            self._verdicts.clear()


#: The process-wide verdicts ``cuda_graph="auto"`` consults.
VERDICTS = GraphVerdicts()
