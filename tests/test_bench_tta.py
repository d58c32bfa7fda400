"""Time to accuracy (``gpumlp bench --tta``): the timer, the runner on tiny synthetic data,
the PyTorch subject's starting point, and the command's outputs (speed is not asserted)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gpumlp.bench import tta
from gpumlp.cli import main

TINY = {"hidden": (32,), "activation": "relu", "solver": "adam", "epochs": 4,
        "batch_size": 64, "lr": 3e-3, "schedule": "cosine", "alpha": 1e-4, "dropout": 0.1}


@pytest.fixture
def tiny_data(make_blobs):
    """Four overlapping classes: the test accuracy climbs over the first epochs."""
    X, y = make_blobs(200, 4, 20, 5, spread=1.0)
    return X[:600], y[:600], X[600:], y[600:]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_timer_excludes_evaluation_and_stops_at_first_epoch_on_target():
    clock = FakeClock()
    scores = iter([0.5, 0.8, 0.9, 0.95])

    def evaluate():
        clock.now += 100.0  # a slow evaluation must not count as training
        return next(scores)

    timer = tta.EpochTimer(evaluate, target=0.85, clock=clock)
    timer.start()
    stops = []
    for _ in range(3):
        clock.now += 2.0  # an epoch of training
        stops.append(timer.epoch_end())
    assert stops == [False, False, True]
    record = timer.record()
    assert record["epochs_to_target"] == 3
    assert record["seconds_to_target"] == pytest.approx(6.0)
    assert record["eval_seconds"] == pytest.approx(300.0)
    assert record["train_seconds_cumulative"] == pytest.approx([2.0, 4.0, 6.0])
    assert record["train_seconds_per_epoch"] == pytest.approx(2.0)


def test_timer_rejects_bad_target_and_epoch_end_before_start():
    with pytest.raises(ValueError, match="target=1.5 must be an accuracy"):
        tta.EpochTimer(lambda: 0.0, target=1.5)
    with pytest.raises(RuntimeError, match="before start"):
        tta.EpochTimer(lambda: 0.0, target=0.5).epoch_end()


def test_numpy_subject_stops_at_the_first_epoch_reaching_the_target(tiny_data):
    X, y, X_test, y_test = tiny_data
    # Learn the accuracy curve of the seed first, then set the target between two epochs.
    [free] = tta.run_tta([lambda: tta.GpumlpTta("numpy")], X, y, X_test, y_test, TINY,
                         target=1.0)
    curve = free["accuracy_per_epoch"]
    assert len(curve) == TINY["epochs"] and not free["reached"]
    assert free["seconds_to_target"] is None
    assert curve[-1] > 0.5  # the tiny model learns: the timed runs are real training
    target = max(curve[:2]) + 1e-9  # first reached at epoch 3 or later
    expected = next(i for i, a in enumerate(curve, 1) if a >= target)
    [run] = tta.run_tta([lambda: tta.GpumlpTta("numpy")], X, y, X_test, y_test, TINY,
                        target=target)
    assert run["accuracy_per_epoch"] == curve[:expected]  # same seed, same run, stopped there
    assert run["epochs_to_target"] == expected and run["reached"]
    assert run["seconds_to_target"] == run["train_seconds_cumulative"][-1] > 0
    assert np.all(np.diff(run["train_seconds_cumulative"]) > 0)
    assert run["speedup_vs_baseline"] == 1.0


def test_failing_subject_is_recorded_and_the_others_run(tiny_data):
    class Broken(tta.TtaSubject):
        name = "broken"

        def train(self, X, y, recipe, seed, timer):
            raise RuntimeError("no device")

    X, y, X_test, y_test = tiny_data
    results = tta.run_tta([Broken, lambda: tta.GpumlpTta("numpy")], X, y, X_test, y_test,
                          {**TINY, "epochs": 1}, seeds=(0, 1), target=0.2)
    assert [(r["subject"], r["seed"]) for r in results] == [
        ("broken", 0), ("gpumlp-numpy", 0), ("broken", 1), ("gpumlp-numpy", 1)]
    assert results[0]["error"] == "RuntimeError: no device"
    assert all(r["reached"] for r in results[1::2])


def test_recipes_the_peers_cannot_follow_are_rejected(tiny_data):
    X, y, X_test, y_test = tiny_data
    with pytest.raises(ValueError, match="schedule='invscaling'"):
        tta.run_tta([], X, y, X_test, y_test, {**TINY, "schedule": "invscaling"})
    with pytest.raises(ValueError, match="activation='tanh'"):
        tta.run_tta([], X, y, X_test, y_test, {**TINY, "activation": "tanh"})


def test_default_recipe_is_gpumlp_train_recipe():
    recipe = tta.default_recipe()
    assert recipe["hidden"] == (512, 512) and recipe["epochs"] == 30
    assert recipe["schedule"] == "cosine" and recipe["dropout"] == 0.2
    assert tta.cosine_rate(recipe, 0) == recipe["lr"]
    assert tta.cosine_rate(recipe, 15) == pytest.approx(recipe["lr"] / 2)
    assert tta.cosine_rate(recipe, 30) == pytest.approx(0.0)


def test_torch_starts_from_gpumlp_weights_and_architecture(tiny_data):
    pytest.importorskip("torch")
    X, y, X_test, y_test = tiny_data
    # A step size of ~0 leaves both models at their initial weights: after one epoch their
    # test accuracy is that of the shared starting point (equal up to near-tie rounding).
    frozen = {**TINY, "epochs": 1, "lr": 1e-12}
    gp, torch_run = tta.run_tta([lambda: tta.GpumlpTta("numpy"), lambda: tta.TorchTta("cpu")],
                                X, y, X_test, y_test, frozen, target=1.0)
    assert torch_run["subject"] == "torch-eager-cpu" and "error" not in torch_run, torch_run
    assert torch_run["accuracy_per_epoch"][0] == pytest.approx(
        gp["accuracy_per_epoch"][0], abs=1.5 / len(y_test))
    # and with the real step size it trains as well as gpumlp does on this problem
    [trained] = tta.run_tta([lambda: tta.TorchTta("cpu")], X, y, X_test, y_test, TINY,
                            target=1.0)
    assert trained["accuracy_per_epoch"][-1] > 0.5


def test_unused_stem_never_reuses_a_results_file(tmp_path):
    assert tta.unused_stem(tmp_path, "tta-x") == tmp_path / "tta-x"
    (tmp_path / "tta-x.json").write_text("{}")
    assert tta.unused_stem(tmp_path, "tta-x") == tmp_path / "tta-x-2"
    (tmp_path / "tta-x-2.md").write_text("")
    assert tta.unused_stem(tmp_path, "tta-x") == tmp_path / "tta-x-3"


def test_tta_command_writes_json_and_markdown_without_overwriting(tmp_path, capsys,
                                                                  monkeypatch, tiny_data):
    import gpumlp.data

    X, y, X_test, y_test = tiny_data
    data = type("Data", (), {"X_train": X, "y_train": y, "X_test": X_test, "y_test": y_test})
    monkeypatch.setattr(gpumlp.data, "load_dataset", lambda name, path=None: data)
    monkeypatch.setattr(tta, "default_recipe", lambda: dict(TINY))
    argv = ["bench", "--tta", "--backends", "numpy", "--peers", "torch", "--target-accuracy",
            "0.3", "--out", str(tmp_path)]
    for _ in range(2):
        assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| gpumlp-numpy | 0 |" in printed
    assert len(list(tmp_path.glob("tta-*.json"))) == 2  # the second run did not overwrite
    document = json.loads(sorted(tmp_path.glob("tta-*.json"))[0].read_text())
    for key in ("cpu", "numpy", "commit", "date", "threads"):
        assert key in document["environment"]
    assert document["settings"]["target"] == 0.3
    assert document["settings"]["recipe"]["hidden"] == [32]
    subjects = [r["subject"] for r in document["results"]]
    assert subjects[0] == "gpumlp-numpy" and document["results"][0]["reached"]
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "peer torch: not installed" in printed
    else:
        assert "torch-eager-cpu" in subjects and "torch" in document["environment"]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "1,x"], "--seeds value 'x' is not a non-negative integer"),
    (["--target-accuracy", "89.5"], "--target-accuracy=89.5 must be in (0, 1]"),
    (["--peers", "sklearn"], "--peers 'sklearn' has no time-to-accuracy subject"),
    (["--backends", "jax"], "--backends has unknown 'jax'"),
])
def test_tta_command_rejects_bad_arguments(argv, message, capsys):
    assert main(["bench", "--tta", *argv]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.kernels
@pytest.mark.parametrize("cuda_graph", ["off", "on"])
def test_cupy_subjects_train_like_numpy_on_the_emulated_gpu(cuda_graph, host, monkeypatch,
                                                            tiny_data):
    """The GPU rows (CuPy eager and CUDA graphs) run the same training as the NumPy row:
    on the emulated CuPy their per-epoch test accuracy follows NumPy's."""
    import sys

    from conftest import load_support
    from gpumlp.backends.cuda import kernels

    emulated = load_support("emulated_cupy")
    module, get_kernel = emulated.make_cupy(host)
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setattr(kernels, "get_kernel", get_kernel)
    monkeypatch.setattr(kernels, "load_module", lambda source: None)
    from gpumlp.backends.cuda.backend import CupyBackend

    X, y, X_test, y_test = tiny_data
    recipe = {**TINY, "epochs": 3}
    subject = tta.GpumlpTta(CupyBackend(gemm_path="fused"), cuda_graph=cuda_graph)
    gpu, cpu = tta.run_tta([lambda: subject, lambda: tta.GpumlpTta("numpy")], X, y, X_test,
                           y_test, recipe, target=1.0)
    assert gpu["subject"] == ("gpumlp-cupy-graph" if cuda_graph == "on" else "gpumlp-cupy")
    assert "error" not in gpu, gpu
    assert gpu["epochs_run"] == 3
    np.testing.assert_allclose(gpu["accuracy_per_epoch"], cpu["accuracy_per_epoch"],
                               atol=1.5 / len(y_test))
    emulated.reset()


def test_interleaved_subjects_take_turns_and_time_only_their_own_epochs():
    """Two subjects train at once, one epoch each in turn; each timer counts only its own
    epochs (a shared clock moves 1 s per epoch of A and 5 s per epoch of B)."""
    now = [0.0]
    epochs: list[str] = []

    class Fake(tta.TtaSubject):
        def __init__(self, name, seconds, curve):
            self.name, self.seconds, self.curve = name, seconds, curve

        def train(self, X, y, recipe, seed, timer):
            self.epoch = 0
            timer.start()
            for _ in range(recipe["epochs"]):
                epochs.append(self.name)
                now[0] += self.seconds
                self.epoch += 1
                if timer.epoch_end():
                    return

        def accuracy(self):
            return self.curve[self.epoch - 1]

    subjects = [Fake("A", 1.0, [0.1, 0.9, 0.9, 0.9]), Fake("B", 5.0, [0.1, 0.2, 0.3, 0.95])]
    a, b = tta.run_tta([lambda s=s: s for s in subjects], None, None, None, None,
                       {**TINY, "epochs": 4}, target=0.85, clock=lambda: now[0])
    assert epochs == ["A", "B", "A", "B", "B", "B"]  # A stops at its target, B goes on
    assert a["epochs_to_target"] == 2 and a["seconds_to_target"] == pytest.approx(2.0)
    assert b["epochs_to_target"] == 4 and b["seconds_to_target"] == pytest.approx(20.0)
