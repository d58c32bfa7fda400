"""Runs the benchmark protocol: every subject x configuration x batch size, timed alike.

Timing: a warm-up, then the number of steps per repeat is calibrated so one repeat lasts at
least ``min_time`` seconds, then ``repeats`` repeats, interleaved across the subjects of a
cell; the median rate is reported, with every repeat kept in the results.  Device work is
synchronised before and after each repeat.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import numpy as np

from .protocol import (CONFIGS, EPOCH_SAMPLES, POOL_SIZE, inference_flops_per_sample,
                       train_flops_per_sample)
from .subjects import (GpumlpGraphSubject, GpumlpSubject, SklearnSubject, Subject,
                       TorchSubject)
from ..data import load_dataset, synthetic_mnist

PEERS = ("torch", "sklearn")


@dataclass
class Plan:
    """What to run: configurations, batch sizes, subjects, and how long to time each."""

    configs: list[str]
    batches: list[int]
    backends: list[str]
    peers: list[str] = field(default_factory=list)
    repeats: int = 5
    min_time: float = 0.2
    dataset: str | None = None


def make_subjects(plan: Plan, out: TextIO) -> list[Callable[[], Subject]]:
    """Factories for every subject that can run here; a missing peer is reported, not fatal."""
    factories: list[Callable[[], Subject]] = [
        (lambda b=b: GpumlpSubject(b)) for b in plan.backends]
    if "cupy" in plan.backends:
        factories.append(GpumlpGraphSubject)
    if "torch" in plan.peers:
        try:
            import torch
        except ImportError:
            print("peer torch: not installed (pip install torch); skipped", file=out)
        else:
            factories.append(lambda: TorchSubject("cpu"))
            if torch.cuda.is_available():
                factories.append(lambda: TorchSubject("cuda"))
                factories.append(lambda: TorchSubject("cuda", compiled=True))
    if "sklearn" in plan.peers:
        try:
            import sklearn  # noqa: F401
        except ImportError:
            print("peer sklearn: not installed (pip install scikit-learn); skipped", file=out)
        else:
            factories.append(SklearnSubject)
    return factories


@dataclass
class Timing:
    """Median samples/s, every repeat's rate, steps per repeat, and the host's share."""

    rate: float
    rates: list[float]
    steps: int
    host_us_per_step: float


def calibrate(run: Callable[[int], None], sync: Callable[[], None], max_steps: int,
              min_time: float) -> int:
    """Warm up, then choose the steps per repeat so that one repeat lasts ``min_time``."""
    warm = min(3, max_steps)
    run(warm)  # first calls compile, allocate and (for torch.compile) record graphs
    sync()
    start = time.perf_counter()
    run(warm)
    sync()
    per_step = (time.perf_counter() - start) / warm
    return max(1, min(max_steps, math.ceil(min_time / max(per_step, 1e-9))))


def time_once(run: Callable[[int], None], sync: Callable[[], None], steps: int,
              batch: int) -> tuple[float, float]:
    """Samples/s of one repeat, and host µs per step (until ``run`` returns, launches
    queued; the rate counts until the device has finished too)."""
    sync()
    start = time.perf_counter()
    run(steps)
    queued = time.perf_counter()
    sync()
    return steps * batch / (time.perf_counter() - start), 1e6 * (queued - start) / steps


def _timing(rates: list[float], host: list[float], steps: int) -> Timing:
    return Timing(statistics.median(rates), rates, steps, statistics.median(host))


def run_plan(plan: Plan, out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    """Measure everything in ``plan``; returns one record per (config, batch, subject)."""
    X, y = load_pool(plan.dataset)
    factories = make_subjects(plan, out)
    results: list[dict[str, Any]] = []
    cells = len(plan.configs) * len(plan.batches)
    done = 0
    reported: set[tuple[str, str]] = set()  # a subject's failure is explained once
    for config in plan.configs:
        for batch in plan.batches:
            done += 1
            records = run_cell(factories, CONFIGS[config], batch, X, y, plan)
            for record in records:
                record.update(config=config, batch=batch)
                summary = _summary(record)
                if "error" in record:
                    key = (record["subject"], record["error"])
                    summary = "failed again (same error)" if key in reported else summary
                    reported.add(key)
                print(f"[{done:>2}/{cells}] {config} batch {batch:>5} "
                      f"{record['subject']:<22} {summary}", file=out, flush=True)
            results += records
    return results


def run_cell(factories: list[Callable[[], Subject]], sizes: list[int], batch: int,
             X: np.ndarray, y: np.ndarray, plan: Plan) -> list[dict[str, Any]]:
    """Every subject at one configuration and batch size, their repeats interleaved.

    Interleaving (A B C A B C ...) spreads drift in the machine's speed — other tenants,
    clocks, heat — over all subjects alike instead of favouring whichever ran first.
    """
    subjects, failed = [], []
    for factory in factories:
        subject = None
        try:
            subject = factory()
            subject.prepare(sizes, batch, X, y)
            subjects.append(subject)
        except Exception as exc:  # one failing subject must not lose the others' results
            failed.append({"subject": getattr(subject, "name", "subject"),
                           "error": f"{type(exc).__name__}: {exc}"})
    max_steps = len(X) // batch
    timings: dict[str, Timing] = {}
    for phase in ("train", "infer"):
        steps = {}
        for subject in list(subjects):
            try:
                steps[subject.name] = calibrate(getattr(subject, phase), subject.sync,
                                                max_steps, plan.min_time)
            except Exception as exc:
                subjects.remove(subject)
                failed.append({"subject": subject.name,
                               "error": f"{type(exc).__name__}: {exc}"})
        samples: dict[str, list[tuple[float, float]]] = {s.name: [] for s in subjects}
        for _ in range(plan.repeats):
            for subject in subjects:
                samples[subject.name].append(time_once(getattr(subject, phase), subject.sync,
                                                       steps[subject.name], batch))
        for subject in subjects:
            rates, host = zip(*samples[subject.name])
            timings[(subject.name, phase)] = _timing(list(rates), list(host),
                                                     steps[subject.name])
    records = []
    for subject in subjects:
        loss = subject.train_loss()
        if loss is not None and not math.isfinite(loss):
            failed.append({"subject": subject.name, "error": (
                f"training diverged (loss {loss} after the timed steps): its timing would be "
                "of inf/NaN arithmetic, not of training")})
            continue
        records.append(_record(subject, sizes, batch, timings[(subject.name, "train")],
                               timings[(subject.name, "infer")], loss, plan))
    return records + failed


def _record(subject: Subject, sizes: list[int], batch: int, train: Timing, infer: Timing,
            loss: float | None, plan: Plan) -> dict[str, Any]:
    record = {
        "subject": subject.name, "device": subject.device, "settings": subject.settings(),
        "train_samples_per_s": train.rate, "train_repeats": train.rates,
        "steps_per_repeat": train.steps, "host_us_per_step": train.host_us_per_step,
        "infer_samples_per_s": infer.rate, "infer_repeats": infer.rates,
        "train_gflops": train.rate * train_flops_per_sample(sizes) / 1e9,
        "infer_gflops": infer.rate * inference_flops_per_sample(sizes) / 1e9,
        "ms_per_epoch": 1e3 * EPOCH_SAMPLES / train.rate,
        "train_loss": loss,
    }
    if subject.name == "gpumlp-numpy" and batch >= 1024:
        record.update(outside_matmul_share(subject, plan))
    return record


def outside_matmul_share(subject: GpumlpSubject, plan: Plan) -> dict[str, float]:
    """Share of a NumPy training step spent outside its matrix products.

    The step and its matrix products alone are timed in alternation, ``plan.repeats`` times
    each, so that drift in the machine's speed touches both alike; the share is the median
    over repeats of ``1 - products / step``.  Everything but the products counts, whichever
    path runs it (compiled or NumPy): gather, bias, activations, loss, bias gradients,
    optimizer update.  Returns the share and both medians (ms per step).  A negative share
    is reported as measured: it says the products alone ran slower than the step.
    """
    calls, xp = step_products(subject), subject.backend.xp

    def products(steps: int) -> None:
        for _ in range(steps):
            for a, b, out in calls:
                xp.matmul(a, b, out=out)

    batch = subject.buffers.x.shape[0]
    max_steps = len(subject.indices)
    step_count = calibrate(subject.train, subject.sync, max_steps, plan.min_time)
    product_count = calibrate(products, subject.sync, max_steps, plan.min_time)
    step_s, products_s = [], []
    for _ in range(plan.repeats):
        step_s.append(batch / time_once(subject.train, subject.sync, step_count, batch)[0])
        products_s.append(batch / time_once(products, subject.sync, product_count, batch)[0])
    shares = [1.0 - p / s for s, p in zip(step_s, products_s)]
    return {"outside_matmul_fraction": statistics.median(shares),
            "step_ms": 1e3 * statistics.median(step_s),
            "matmul_ms": 1e3 * statistics.median(products_s)}


def step_products(subject: GpumlpSubject) -> list[tuple[Any, Any, Any]]:
    """``(A, B, out)`` of each matrix product of ``subject``'s training step.

    The same products, shapes and order as the step's (per layer ``A W`` forward; backward
    from the last layer ``A^T H`` and, but for the first layer, ``H W^T``), on the operands
    the step itself last wrote (its gathered batch, activations and deltas), into outputs of
    their own.  Never on buffers the step does not write: freshly allocated memory holds
    whatever was there, and denormal floats in it slow a product down a hundredfold.
    """
    net, ws, xp = subject.net, subject.buffers.workspace, subject.backend.xp
    inputs = [subject.buffers.x] + ws.a[1:net.n_layers]  # each layer's input
    calls = [(inputs[layer], w, xp.empty_like(ws.a[layer + 1]))
             for layer, w in enumerate(net.weights)]
    for layer in range(net.n_layers - 1, -1, -1):
        w, h = net.weights[layer], ws.h[layer + 1]
        calls.append((inputs[layer].T, h, xp.empty_like(w)))
        if layer > 0:
            calls.append((h, w.T, xp.empty_like(ws.h[layer])))
    return calls


def load_pool(dataset: str | None) -> tuple[np.ndarray, np.ndarray]:
    """The data every subject trains on: a real dataset's training set, or synthetic data."""
    if dataset:
        data = load_dataset(dataset)
        return data.X_train, data.y_train

    return synthetic_mnist(POOL_SIZE, seed=0)


def _summary(record: dict[str, Any]) -> str:
    if "error" in record:
        return f"failed: {record['error']}"
    return (f"train {record['train_samples_per_s']:>12,.0f}/s  "
            f"infer {record['infer_samples_per_s']:>12,.0f}/s")
