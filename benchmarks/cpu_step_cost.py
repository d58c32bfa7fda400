"""CPU cost of one default-recipe training step: the NumPy backend's NumPy passes, its compiled
passes (Numba) and PyTorch eager, interleaved in one process.

    PYTHONPATH=. python benchmarks/cpu_step_cost.py [--threads 1] [--repeats 9] [--out DIR]

The step is ``gpumlp train``'s: 784-512-512-10, ReLU, dropout 0.2, L2 1e-4 (PyTorch: Adam's
coupled ``weight_decay``, the same term), Adam, batch 128, rows gathered from Fashion-MNIST.
Each repeat runs every subject for 16 steps in turn.  Reported per subject: the median over
repeats of the calling thread's CPU time per step (``time.thread_time``) and of wall time.
On a machine shared with other work, CPU time is the steadier measure: it does not count the
time the thread waits for a core.  With ``--threads 1`` BLAS and PyTorch run on the calling
thread, so its CPU time is all of the step's work.  Writes ``cpu-step-DATE.json`` (with the
machine, versions, commit and load average) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

RECIPE = {"sizes": [784, 512, 512, 10], "batch": 128, "dropout": 0.2, "alpha": 1e-4,
          "lr": 1e-3}
STEPS = 16


def gpumlp_subject(mode: str, X, T, order):
    import gpumlp
    from gpumlp.backends.numpy_backend import NumpyBackend
    from gpumlp.network import Network
    from gpumlp.step import StepSettings, TrainingStep

    batch = RECIPE["batch"]
    backend = NumpyBackend(cpu_kernels=mode)
    backend.cpu_path.compile()  # never inside a timed repeat
    net = Network(RECIPE["sizes"], "relu", "softmax_xent", dtype=np.float32, backend=backend,
                  seed=0)
    optimizer = gpumlp.Adam(backend, net.params, RECIPE["lr"])
    # The trainer's own step: gather, forward, loss with its L2 term, backward, update.
    step = TrainingStep(net, optimizer, StepSettings(alpha=RECIPE["alpha"],
                                                     dropout=RECIPE["dropout"],
                                                     dropout_seed=1))
    buffers = step.new_buffers(batch, X.shape[1], T.shape[1])

    def run(steps: int, start: int) -> None:
        for number in range(start, start + steps):
            first = (number * batch) % (len(X) - batch)
            index = order[first:first + batch]

            def gather(b, index=index) -> None:
                backend.gather_rows(X, index, b.x)
                backend.gather_rows(T, index, b.t)

            step(gather, buffers, step=number)
    return run


def torch_subject(X, y, order):
    import torch

    torch.manual_seed(0)
    sizes, drop = RECIPE["sizes"], RECIPE["dropout"]
    model = torch.nn.Sequential(
        torch.nn.Linear(sizes[0], sizes[1]), torch.nn.ReLU(), torch.nn.Dropout(drop),
        torch.nn.Linear(sizes[1], sizes[2]), torch.nn.ReLU(), torch.nn.Dropout(drop),
        torch.nn.Linear(sizes[2], sizes[3]))
    optimizer = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"],
                                 weight_decay=RECIPE["alpha"], foreach=True)
    loss_fn = torch.nn.CrossEntropyLoss()
    X_t, y_t = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    order_t = torch.from_numpy(order)
    batch = RECIPE["batch"]

    def run(steps: int, start: int) -> None:
        for step in range(start, start + steps):
            first = (step * batch) % (len(X) - batch)
            index = order_t[first:first + batch]
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(X_t[index]), y_t[index]).backward()
            optimizer.step()
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=0,
                        help="BLAS and PyTorch threads (0: their defaults)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
        torch.set_num_threads(args.threads)
    from gpumlp.bench.environment import environment
    from gpumlp.data import load_dataset

    env = environment({"torch": torch})
    data = load_dataset("fashion-mnist")
    X = np.ascontiguousarray(data.X_train, dtype=np.float32)
    y = np.asarray(data.y_train)
    T = np.eye(10, dtype=np.float32)[y]
    order = np.random.default_rng(0).permutation(len(X)).astype(np.int64)
    subjects = {"gpumlp-numpy-passes": gpumlp_subject("off", X, T, order),
                "gpumlp-compiled": gpumlp_subject("on", X, T, order),
                "torch-eager-cpu": torch_subject(X, y, order)}
    for run in subjects.values():
        run(3, 0)  # warm-up
    cpu: dict[str, list[float]] = {name: [] for name in subjects}
    wall: dict[str, list[float]] = {name: [] for name in subjects}
    load_before = os.getloadavg()
    for repeat in range(args.repeats):
        for name, run in subjects.items():
            c, w = time.thread_time(), time.perf_counter()
            run(STEPS, (repeat + 1) * STEPS)
            cpu[name].append((time.thread_time() - c) / STEPS)
            wall[name].append((time.perf_counter() - w) / STEPS)
    env["load_average"] = [list(load_before), list(os.getloadavg())]
    results = [{"subject": name, "cpu_ms_per_step": 1e3 * statistics.median(cpu[name]),
                "cpu_ms_repeats": [1e3 * t for t in cpu[name]],
                "wall_ms_per_step": 1e3 * statistics.median(wall[name]),
                "wall_ms_repeats": [1e3 * t for t in wall[name]]} for name in subjects]
    base = results[-1]["cpu_ms_per_step"]
    print(f"default-recipe step, batch {RECIPE['batch']}, threads "
          f"{args.threads or 'default'}, {STEPS} steps x {args.repeats} repeats, load "
          f"{env['load_average']}")
    for r in results:
        r["torch_cpu_time_over_this"] = base / r["cpu_ms_per_step"]
        print(f"  {r['subject']:22} CPU {r['cpu_ms_per_step']:7.3f} ms/step   wall "
              f"{r['wall_ms_per_step']:7.3f} ms/step   PyTorch CPU time / this: "
              f"{r['torch_cpu_time_over_this']:.2f}x")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"cpu-step-{env['date'][:10]}-threads-{args.threads or 'default'}"
    path, number = stem.with_suffix(".json"), 2
    while path.exists():
        path, number = Path(f"{stem}-{number}.json"), number + 1
    record = {"environment": env, "recipe": RECIPE, "steps_per_repeat": STEPS,
              "threads": args.threads or "default", "results": results}
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"json: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
