"""``gpumlp bench --tta``: wall-clock time to a test accuracy (default 89.5 % on Fashion-MNIST).

Every subject trains the default recipe of ``gpumlp train`` (784-512-512-10, ReLU, dropout 0.2
on the hidden layers, Adam from 1e-3 with the step cosine-annealed over 30 epochs, L2 1e-4 as
``alpha / rows * W`` added to each weight gradient, batch 128 with the remainder batch kept,
a fresh shuffle every epoch) from the same initial weights (gpumlp's He-uniform draw from the
seed), and after every epoch its test accuracy is measured.  The clock starts before the
model and the data are put on the subject's device and stops at the end of the first epoch
whose test accuracy reaches the target; the evaluations are timed separately and subtracted
(and reported).  Training stops there, or after the recipe's 30 epochs (then the target was
not reached and the time is ``None``).

Seed policy: each subject and seed starts from the same weights; shuffling and dropout masks
come from each framework's own generator seeded with that seed, so the runs are alike in
distribution, not bit for bit.  Time to accuracy moves with the seed (an epoch more or less),
so ``--seeds`` runs several and the table shows each.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np

from ..atomic import atomic_write
from ..backends import available_backends, get_backend
from .. import data as datasets  # called through the module: tests substitute a loader
from ..estimators import ConvergenceWarning, MLPClassifier
from ..network import Network
from ..recipe import RECIPE
from .environment import environment
from .subjects import TorchRuntime

DEFAULT_TARGET = 0.895
DEFAULT_DATASET = "fashion-mnist"


def default_recipe() -> dict[str, Any]:
    """The recipe of ``gpumlp train`` (its ``RECIPE``), with the hidden sizes as a tuple."""
    recipe = dict(RECIPE)
    recipe["hidden"] = tuple(int(s) for s in str(recipe["hidden"]).split(","))
    recipe.setdefault("init", "he")
    return recipe


def _check_recipe(recipe: dict[str, Any]) -> None:
    if recipe.get("solver") != "adam" or recipe.get("schedule") not in ("cosine", "constant"):
        raise ValueError(f"recipe solver={recipe.get('solver')!r}, schedule="
                         f"{recipe.get('schedule')!r}: time to accuracy runs Adam with a "
                         "cosine or constant step (the peers implement only those)")
    if recipe.get("init", "he") != "he":
        raise ValueError(f"recipe init={recipe.get('init')!r}: every subject starts from "
                         "gpumlp's 'he' draw (He-uniform weights, zero biases)")
    if recipe.get("activation") != "relu":
        raise ValueError(f"recipe activation={recipe.get('activation')!r}: only 'relu' is "
                         "implemented by every subject")


def cosine_rate(recipe: dict[str, Any], epochs_done: int) -> float:
    """The step size after ``epochs_done`` epochs, as :class:`gpumlp.optim.Schedule`."""
    lr0 = recipe["lr"]
    if recipe["schedule"] != "cosine":
        return lr0
    progress = min(epochs_done / recipe["epochs"], 1.0)
    return lr0 * 0.5 * (1 + math.cos(math.pi * progress))


class EpochTimer:
    """Training seconds to the first epoch whose accuracy reaches ``target``.

    A subject calls :meth:`start` where training begins and :meth:`epoch_end` after every
    epoch; ``epoch_end`` waits for the device (``sync``), reads the clock, evaluates
    (``evaluate() -> accuracy``, timed apart and excluded) and returns True once the target
    is reached, when the subject should stop.

    Parameters
    ----------
    evaluate : callable
        Returns the current test accuracy in [0, 1].
    target : float
        Accuracy to reach, in (0, 1].
    sync : callable
        Waits until queued device work is done (a no-op on the CPU).
    clock : callable
        Seconds, monotonic (``time.perf_counter``).
    report : callable or None
        ``report(epoch, accuracy, train_seconds, eval_seconds)`` after each epoch (progress).
    """

    def __init__(self, evaluate: Callable[[], float], target: float,
                 sync: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.perf_counter,
                 report: Callable[[int, float, float, float], None] | None = None,
                 turn: "Turns | None" = None, index: int = 0):
        if not 0 < target <= 1:
            raise ValueError(f"target={target!r} must be an accuracy in (0, 1]")
        self.evaluate, self.target, self.sync, self.clock = evaluate, target, sync, clock
        self.report = report
        self.started: float | None = None
        self.turn, self.index = turn, index
        self._active = 0.0  # seconds of training so far (evaluation and waiting excluded)
        self._resumed = 0.0
        self.eval_seconds = 0.0
        self.accuracy: list[float] = []
        self.train_seconds: list[float] = []  # cumulative, at the end of each epoch
        self.reached_epoch: int | None = None

    def start(self) -> None:
        if self.turn is not None:
            self.turn.wait(self.index)
        self.started = self._resumed = self.clock()

    def epoch_end(self) -> bool:
        if self.started is None:
            raise RuntimeError("EpochTimer.epoch_end called before start")
        self.sync()
        now = self.clock()
        self._active += now - self._resumed
        trained = self._active
        accuracy = float(self.evaluate())
        self.eval_seconds += self.clock() - now
        self.accuracy.append(accuracy)
        self.train_seconds.append(trained)
        if self.reached_epoch is None and accuracy >= self.target:
            self.reached_epoch = len(self.accuracy)
        if self.report is not None:
            self.report(len(self.accuracy), accuracy, trained, self.eval_seconds)
        done = self.reached_epoch is not None
        if self.turn is not None and not done:  # the other subjects' epochs, not timed
            self.turn.pass_on(self.index)
            self.turn.wait(self.index)
        self._resumed = self.clock()
        return done

    def record(self) -> dict[str, Any]:
        """What the results file keeps of one run."""
        reached = self.reached_epoch
        epochs = len(self.accuracy)
        return {
            "reached": reached is not None,
            "epochs_to_target": reached,
            "seconds_to_target": self.train_seconds[reached - 1] if reached else None,
            "epochs_run": epochs,
            "train_seconds_per_epoch": self.train_seconds[-1] / epochs if epochs else None,
            "eval_seconds": self.eval_seconds,
            "accuracy_per_epoch": list(self.accuracy),
            "train_seconds_cumulative": list(self.train_seconds),
            "best_accuracy": max(self.accuracy) if self.accuracy else None,
        }


class Turns:
    """Round-robin epochs of several subjects training at once (one thread each): a subject
    trains an epoch only on its turn, so drift in the machine's speed (other tenants, clocks)
    hits every subject alike instead of whichever ran while the machine was busy."""

    def __init__(self, count: int):
        self._active = list(range(count))
        self._turn = 0 if count else None
        self._changed = threading.Condition()

    def wait(self, index: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._turn == index)

    def pass_on(self, index: int) -> None:
        """``index`` finished an epoch: the next active subject's turn."""
        with self._changed:
            position = self._active.index(index)
            self._turn = self._active[(position + 1) % len(self._active)]
            self._changed.notify_all()

    def finish(self, index: int) -> None:
        """``index`` stopped training (reached the target, ran out of epochs or failed)."""
        with self._changed:
            if index not in self._active:
                return
            position = self._active.index(index)
            self._active.remove(index)
            if self._turn == index:
                self._turn = (self._active[position % len(self._active)] if self._active
                              else None)
            self._changed.notify_all()


# ------------------------------------------------------------------------------- subjects
class TtaSubject:
    """One implementation trained to the target; :meth:`train` drives an :class:`EpochTimer`."""

    name = "subject"
    device = "cpu"

    def prepare(self, X_test: np.ndarray, y_test: np.ndarray) -> None:
        """Untimed set-up: the test set on the device, imports."""

    def train(self, X: np.ndarray, y: np.ndarray, recipe: dict[str, Any], seed: int,
              timer: EpochTimer) -> None:
        raise NotImplementedError

    def accuracy(self) -> float:
        raise NotImplementedError

    def sync(self) -> None:
        """Wait for queued device work."""

    def settings(self) -> dict[str, Any]:
        return {}


class GpumlpTta(TtaSubject):
    """gpumlp's ``MLPClassifier`` exactly as ``gpumlp train`` builds it."""

    def __init__(self, backend: Any, cuda_graph: str = "off"):
        self.backend_spec = backend  # a name, or a Backend instance
        self.cuda_graph = cuda_graph
        name = backend if isinstance(backend, str) else backend.name
        self.name = f"gpumlp-{name}" + ("-graph" if cuda_graph == "on" else "")
        self.device = "cpu" if name == "numpy" else "gpu"

    def prepare(self, X_test, y_test):
        self.backend = get_backend(self.backend_spec)
        self.backend.warm_up()  # compiled (or loaded from cache) before any timing
        self.X_test = self.backend.asarray(X_test)
        self.y_test = np.asarray(y_test)

    def train(self, X, y, recipe, seed, timer):
        self.model = MLPClassifier(
            recipe["hidden"], activation=recipe["activation"], solver=recipe["solver"],
            alpha=recipe["alpha"], batch_size=recipe["batch_size"],
            learning_rate=recipe["schedule"], learning_rate_init=recipe["lr"],
            max_iter=recipe["epochs"], random_state=seed, backend=self.backend,
            dropout=recipe["dropout"], n_iter_no_change=recipe["epochs"] + 1,
            cuda_graph=self.cuda_graph, callbacks=[lambda epoch, history: timer.epoch_end()],
            **_init_option(recipe))
        timer.start()
        self.model.fit(X, y)  # run_tta ignores the ConvergenceWarning: the budget is intended

    def accuracy(self):
        return self.model.score(self.X_test, self.y_test)

    def sync(self):
        self.backend.synchronize()

    def settings(self):
        return {"cuda_graph": self.cuda_graph} if self.device == "gpu" else {}


def _init_option(recipe: dict[str, Any]) -> dict[str, Any]:
    """``init=`` for ``MLPClassifier`` where it has the option (it draws "he" where not)."""
    import inspect

    if "init" in inspect.signature(MLPClassifier).parameters:
        return {"init": recipe.get("init", "he")}
    return {}


class TorchTta(TorchRuntime, TtaSubject):
    """PyTorch, the same recipe written as a user would: ``nn.Sequential`` with ``Dropout``,
    ``Adam`` (foreach on the CPU, fused on CUDA) with the L2 term as weight decay on the
    weights only, the step set per epoch from the cosine; data on the device, batches
    indexed from a ``randperm`` per epoch, the epoch's loss summed on the device."""

    def __init__(self, device: str, compiled: bool = False):
        import torch

        self.torch = torch
        self.torch_device = device
        self.device = "gpu" if device == "cuda" else "cpu"
        self.compiled = compiled
        self.name = f"torch-{'compile' if compiled else 'eager'}-{self.device}"

    def prepare(self, X_test, y_test):
        torch = self.torch
        self.X_test = torch.from_numpy(np.ascontiguousarray(X_test)).to(self.torch_device)
        self.y_test = torch.from_numpy(np.asarray(y_test, np.int64)).to(self.torch_device)

    def train(self, X, y, recipe, seed, timer):
        torch = self.torch

        timer.start()
        torch.manual_seed(seed)
        sizes = [X.shape[1], *recipe["hidden"], int(y.max()) + 1]
        start = Network(sizes, "relu", "softmax_xent", backend="numpy", seed=seed)
        layers: list[Any] = []
        for i, (w, b) in enumerate(zip(start.weights, start.biases)):
            linear = torch.nn.Linear(*w.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                linear.bias.copy_(torch.from_numpy(np.asarray(b)))
            layers.append(linear)
            if i < len(start.weights) - 1:
                layers += [torch.nn.ReLU(), torch.nn.Dropout(recipe["dropout"])]
        self.model = model = torch.nn.Sequential(*layers).to(self.torch_device)
        weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
        biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
        batch = recipe["batch_size"]
        fused = self.torch_device == "cuda"
        optimizer = torch.optim.Adam(
            [{"params": weights, "weight_decay": recipe["alpha"] / batch},
             {"params": biases, "weight_decay": 0.0}],
            lr=recipe["lr"], foreach=not fused, fused=fused or None)
        forward = torch.compile(model, mode="reduce-overhead") if self.compiled else model
        loss_fn = torch.nn.CrossEntropyLoss()
        X_d = torch.from_numpy(np.ascontiguousarray(X)).to(self.torch_device)
        y_d = torch.from_numpy(np.asarray(y, np.int64)).to(self.torch_device)
        generator = torch.Generator().manual_seed(seed)
        n = X_d.shape[0]
        for epoch in range(1, recipe["epochs"] + 1):
            model.train()
            order = torch.randperm(n, generator=generator).to(self.torch_device)
            total = torch.zeros((), device=self.torch_device)
            for first in range(0, n, batch):
                index = order[first:first + batch]
                rows = index.shape[0]
                if rows != batch:  # gpumlp's decay is alpha / rows for the remainder batch
                    optimizer.param_groups[0]["weight_decay"] = recipe["alpha"] / rows
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(forward(X_d[index]), y_d[index])
                loss.backward()
                optimizer.step()
                optimizer.param_groups[0]["weight_decay"] = recipe["alpha"] / batch
                total += loss.detach() * rows
            float(total)  # the epoch's loss read once, as gpumlp does
            for group in optimizer.param_groups:
                group["lr"] = cosine_rate(recipe, epoch)
            if timer.epoch_end():
                return

    def accuracy(self):
        torch = self.torch
        self.model.eval()
        with torch.inference_mode():
            predicted = self.model(self.X_test).argmax(dim=1)
            return float((predicted == self.y_test).float().mean())



def make_tta_subjects(backends: Sequence[str], peers: Sequence[str],
                      out: TextIO | None = None) -> list[Callable[[], TtaSubject]]:
    """Factories for the subjects that can run here: gpumlp on each backend (CuPy eager and
    with CUDA graphs), PyTorch on the CPU and, with CUDA, eager and ``torch.compile``."""
    out = out or sys.stdout
    factories: list[Callable[[], TtaSubject]] = []
    for backend in backends:
        if backend not in ("numpy", "cupy"):
            raise ValueError(f"--backends has unknown {backend!r}; choose numpy, cupy")
        factories.append(lambda b=backend: GpumlpTta(b))
        if backend == "cupy":
            factories.append(lambda: GpumlpTta("cupy", cuda_graph="on"))
    for peer in peers:
        if peer != "torch":
            raise ValueError(f"--peers {peer!r} has no time-to-accuracy subject (it has no "
                             "dropout or cosine step); allowed with --tta: torch")
        try:
            import torch
        except ImportError:
            print("peer torch: not installed (pip install torch); skipped", file=out)
            continue
        factories.append(lambda: TorchTta("cpu"))
        if torch.cuda.is_available():
            factories.append(lambda: TorchTta("cuda"))
            factories.append(lambda: TorchTta("cuda", compiled=True))
    return factories


def run_tta(factories: Sequence[Callable[[], TtaSubject]], X: np.ndarray, y: np.ndarray,
            X_test: np.ndarray, y_test: np.ndarray, recipe: dict[str, Any] | None = None,
            seeds: Sequence[int] = (0,), target: float = DEFAULT_TARGET,
            out: TextIO | None = None, clock: Callable[[], float] = time.perf_counter,
            interleave: bool = True) -> list[dict[str, Any]]:
    """Train every subject once per seed to ``target``; one record per (subject, seed).

    With ``interleave`` the subjects of a seed train at once, one epoch each in turn
    (:class:`Turns`; each timer counts only its own epochs), so a busy spell of the machine
    slows them alike.  A subject that fails is recorded with its error; the others go on.
    """
    out = out or sys.stdout
    recipe = dict(default_recipe() if recipe is None else recipe)
    _check_recipe(recipe)
    results: list[dict[str, Any]] = []
    for seed in seeds:
        results += _train_seed(factories, X, y, X_test, y_test, recipe, seed, target, out,
                               clock, interleave)
    add_ratios(results)
    return results


def _train_seed(factories: Sequence[Callable[[], TtaSubject]], X: np.ndarray, y: np.ndarray,
                X_test: np.ndarray, y_test: np.ndarray, recipe: dict[str, Any], seed: int,
                target: float, out: TextIO, clock: Callable[[], float],
                interleave: bool) -> list[dict[str, Any]]:
    records: list[dict[str, Any] | None] = [None] * len(factories)
    subjects: dict[int, TtaSubject] = {}
    for i, factory in enumerate(factories):
        subject = None
        try:
            subject = factory()
            subject.prepare(X_test, y_test)
            subjects[i] = subject
        except Exception as exc:  # one failing subject must not lose the others' results
            records[i] = _failure(subject, seed, exc)
    order = list(subjects)
    turns = Turns(len(order)) if interleave and len(order) > 1 else None

    def train(position: int, i: int) -> None:
        subject = subjects[i]

        def report(epoch, accuracy, trained, evaluated):
            print(f"{subject.name:<20} seed {seed} epoch {epoch:>2}: accuracy {accuracy:.4f}"
                  f"  {trained:8.2f} s training  ({evaluated:.2f} s evaluating)",
                  file=out, flush=True)

        timer = EpochTimer(subject.accuracy, target, subject.sync, clock, report, turns,
                           position)
        try:
            subject.train(X, y, recipe, seed, timer)
            records[i] = {"subject": subject.name, "device": subject.device, "seed": seed,
                          "settings": subject.settings(), **timer.record()}
        except Exception as exc:
            records[i] = _failure(subject, seed, exc)
        finally:
            if turns is not None:
                turns.finish(position)

    # Warning filters are process-wide: set here, around every subject's thread, not in them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed budget is intended
        if turns is None:
            for position, i in enumerate(order):
                train(position, i)
        else:
            threads = [threading.Thread(target=train, args=(position, i), daemon=True)
                       for position, i in enumerate(order)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    return [r for r in records if r is not None]


def _failure(subject: TtaSubject | None, seed: int, exc: Exception) -> dict[str, Any]:
    return {"subject": getattr(subject, "name", "subject"), "seed": seed,
            "error": f"{type(exc).__name__}: {exc}"}


def add_ratios(results: list[dict[str, Any]], baseline: str = "gpumlp-numpy") -> None:
    """``speedup_vs_baseline``: the baseline's seconds to target over each run's, same seed."""
    base = {r["seed"]: r["seconds_to_target"] for r in results
            if r.get("subject") == baseline and r.get("seconds_to_target")}
    for r in results:
        if r.get("seconds_to_target") and r["seed"] in base:
            r["speedup_vs_baseline"] = base[r["seed"]] / r["seconds_to_target"]


def markdown(results: list[dict[str, Any]], environment: dict[str, Any], target: float,
             dataset: str) -> str:
    """One row per run, then the median seconds to target per subject."""
    gpu = environment.get("gpu", {}).get("device_name")
    pct = f"{100 * target:g} %"
    lines = [f"Time to {pct} test accuracy on {dataset} (default recipe; evaluation time "
             f"excluded). Device: {gpu or 'no GPU'}; CPU: {environment['cpu']} "
             f"({environment['cpu_cores']} cores); {environment['date']}; "
             f"commit {environment['commit'][:12]}", "",
             f"| subject | seed | epochs to {pct} | seconds to {pct} | train s/epoch | "
             "eval s (excluded) | best accuracy | vs gpumlp-numpy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['subject']} | {r['seed']} | failed: {r['error'][:60]} "
                         "| | | | | |")
            continue
        seconds = (f"{r['seconds_to_target']:.1f}" if r["reached"]
                   else f"not reached in {r['epochs_run']}")
        ratio = f"{r['speedup_vs_baseline']:.2f}x" if "speedup_vs_baseline" in r else ""
        lines.append(f"| {r['subject']} | {r['seed']} | {r['epochs_to_target'] or ''} | "
                     f"{seconds} | {r['train_seconds_per_epoch']:.2f} | "
                     f"{r['eval_seconds']:.1f} | {r['best_accuracy']:.4f} | {ratio} |")
    load = environment.get("load_average")
    if load:
        lines += ["", f"Load average (1, 5, 15 min) before and after the run: {load}"]
    medians = median_seconds(results)
    if len({r["seed"] for r in results}) > 1 and medians:
        lines.append("")
        lines += [f"{name}: median {seconds:.1f} s to {pct}"
                  for name, seconds in medians.items()]
    return "\n".join(lines) + "\n"


def median_seconds(results: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds to target per subject over the seeds that reached it."""
    times: dict[str, list[float]] = {}
    for r in results:
        if r.get("seconds_to_target"):
            times.setdefault(r["subject"], []).append(r["seconds_to_target"])
    return {name: statistics.median(values) for name, values in times.items()}


def unused_stem(out_dir: Path, stem: str) -> Path:
    """``out_dir / stem``, or with ``-2``, ``-3``, ... so that no results file is
    overwritten."""
    candidate, n = out_dir / stem, 1
    while any(candidate.with_name(candidate.name + ext).exists() for ext in (".json", ".md")):
        n += 1
        candidate = out_dir / f"{stem}-{n}"
    return candidate


def write_tta_outputs(results: list[dict[str, Any]], environment: dict[str, Any],
                      settings: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``tta-<date>-<device>.json`` and ``.md`` (atomic; never over an existing file)."""
    import json

    device = environment.get("gpu", {}).get("device_name") or environment["cpu"]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()[:40]
    stem = unused_stem(Path(out_dir), f"tta-{environment['date'][:10]}-{slug}")
    paths = {"json": stem.with_name(stem.name + ".json"),
             "markdown": stem.with_name(stem.name + ".md")}
    document = {"environment": environment, "settings": settings, "results": results}
    with atomic_write(paths["json"]) as handle:
        handle.write(json.dumps(document, indent=2).encode())
    with atomic_write(paths["markdown"]) as handle:
        handle.write(markdown(results, environment, settings["target"],
                              settings["dataset"]).encode())
    return paths


# ------------------------------------------------------------------------- command line
def add_tta_arguments(bench: Any, otherwise: Callable[[Any], int]) -> None:
    """Add ``--tta`` and its options to the ``bench`` parser; without ``--tta`` the command
    runs ``otherwise`` (the throughput benchmark)."""
    bench.add_argument("--tta", action="store_true",
                       help="instead: time to --target-accuracy on Fashion-MNIST (default "
                            "recipe of `gpumlp train`) for gpumlp on each backend and PyTorch "
                            "(--peers defaults to torch here)")
    bench.add_argument("--target-accuracy", type=float, default=DEFAULT_TARGET,
                       help="with --tta: test accuracy to reach")
    bench.add_argument("--seeds", default="0", help="with --tta: comma-separated seeds")
    bench.set_defaults(run=lambda args: run_tta_command(args) if args.tta else otherwise(args))


def _load_average() -> list[float] | None:
    """The host's 1, 5 and 15-minute load averages, where the OS reports them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def run_tta_command(args: Any, out: TextIO | None = None) -> int:
    """``gpumlp bench --tta``: measure, print the table, write the JSON and markdown."""
    out = out or sys.stdout
    seeds = []
    for part in (p.strip() for p in args.seeds.split(",")):
        if not part.isdigit():
            raise ValueError(f"--seeds value {part!r} is not a non-negative integer")
        seeds.append(int(part))
    if not 0 < args.target_accuracy <= 1:
        raise ValueError(f"--target-accuracy={args.target_accuracy} must be in (0, 1]")
    if args.backends == "available":
        backends = [name for name, reason in available_backends().items() if reason is None]
    else:
        backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    peers = [p.strip() for p in (args.peers or "torch").split(",") if p.strip()]
    factories = make_tta_subjects(backends, peers, out)
    peer_modules = {}
    if "torch" in peers:
        try:
            peer_modules["torch"] = __import__("torch")
        except ImportError:
            pass
    dataset = args.dataset or DEFAULT_DATASET
    data = datasets.load_dataset(dataset)
    env = environment(peer_modules)  # before the run: the commit and tree it measures
    recipe = default_recipe()
    load_before = _load_average()
    results = run_tta(factories, data.X_train, data.y_train, data.X_test, data.y_test,
                      recipe, seeds, args.target_accuracy, out)
    # Other processes slow a CPU run down: the load around it says how much to trust it.
    env["load_average"] = [load_before, _load_average()]
    settings = {"target": args.target_accuracy, "dataset": dataset, "seeds": seeds,
                "recipe": {**recipe, "hidden": list(recipe["hidden"])}}
    print(file=out)
    print(markdown(results, env, args.target_accuracy, dataset), file=out)
    paths = write_tta_outputs(results, env, settings, args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}", file=out)
    return 0
