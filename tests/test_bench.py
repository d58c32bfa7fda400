"""The benchmark runner: records, outputs and arguments (speed itself is not asserted)."""

import io
import json
import math

import numpy as np
import pytest

from gpumlp.backends import available_backends
from gpumlp.bench.protocol import CONFIGS, inference_flops_per_sample, train_flops_per_sample
from gpumlp.bench.report import reserve_stem, write_outputs
from gpumlp.bench.runner import Plan, run_plan
from gpumlp.cli import main
from gpumlp.data import synthetic_mnist


def test_flop_counts():
    sizes = CONFIGS["mlp-256"]
    forward = 2 * (784 * 256 + 256 * 256 + 256 * 10)
    assert inference_flops_per_sample(sizes) == forward
    # forward + weight gradients + input gradients of every layer but the first
    assert train_flops_per_sample(sizes) == 3 * forward - 2 * 784 * 256


def test_run_plan_records_every_subject_with_repeats():
    pytest.importorskip("sklearn")
    plan = Plan(["mlp-256"], [1024], ["numpy"], ["sklearn"], repeats=2, min_time=0.01)
    results = run_plan(plan)
    assert [r["subject"] for r in results] == ["gpumlp-numpy", "sklearn"]
    for r in results:
        assert "error" not in r, r
        assert len(r["train_repeats"]) == 2 and r["train_samples_per_s"] > 0
        assert r["ms_per_epoch"] == pytest.approx(60000 * 1e3 / r["train_samples_per_s"])
        assert r["train_gflops"] == pytest.approx(
            r["train_samples_per_s"] * train_flops_per_sample(CONFIGS["mlp-256"]) / 1e9)
    assert all(math.isfinite(r["train_loss"]) for r in results)
    share = results[0]
    assert math.isfinite(share["outside_matmul_fraction"]), share
    assert share["step_ms"] > 0 and share["matmul_ms"] > 0


def test_bench_command_writes_json_and_markdown(tmp_path, capsys):
    code = main(["bench", "--configs", "mlp-256", "--batches", "64", "--repeats", "1",
                 "--min-time", "0.01", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| mlp-256 | 64 | gpumlp-numpy |" in printed
    [json_path] = tmp_path.glob("bench-*.json")
    document = json.loads(json_path.read_text())
    env = document["environment"]
    for key in ("cpu", "cpu_cores", "numpy", "blas", "commit", "date", "threads",
                "load_average", "load_average_after", "run_seconds"):
        assert key in env
    assert document["results"][0]["subject"] == "gpumlp-numpy"
    assert list(tmp_path.glob("bench-*.md"))
    assert printed.count(f"json: {json_path}") == 1


@pytest.mark.parametrize("argv, message", [
    (["--configs", "mlp-9"], "--configs has unknown 'mlp-9'; choose from mlp-256, mlp-512"),
    (["--batches", "0"], "--batches must be >= 1, got 0"),
    (["--batches", "64,x"], "--batches must be an integer, got 'x'"),
    (["--peers", "jax"], "--peers has unknown 'jax'; choose from torch, sklearn"),
    (["--backends", "tpu"], "--backends has unknown 'tpu'"),
    (["--repeats", "0"], "--repeats must be >= 1, got 0"),
    (["--min-time", "-1"], "--min-time must be > 0, got -1"),
    (["--dataset", "cifar"], "invalid choice: 'cifar'"),
])
def test_bench_rejects_bad_arguments(argv, message, capsys, tmp_path):
    assert main(["bench", *argv, "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and captured.err.count("\n") == 1
    assert "Traceback" not in captured.err
    assert captured.out == "" and list(tmp_path.iterdir()) == []  # nothing was measured


def test_bench_refuses_unavailable_cupy_once_and_fails(capsys, tmp_path):
    reason = available_backends()["cupy"]
    if reason is None:
        pytest.skip("CuPy runs here; the refusal needs a machine without it")
    assert main(["bench", "--backends", "numpy,cupy", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.out == ""
    assert "--backends cupy is unavailable" in captured.err
    assert " ".join(reason.split()) in captured.err  # the reason, said once
    assert list(tmp_path.iterdir()) == []


def test_bench_out_that_is_a_file_fails_before_measuring(capsys, tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    assert main(["bench", "--backends", "numpy", "--out", str(blocker / "sub")]) == 2
    captured = capsys.readouterr()
    assert "--out" in captured.err and "is a file" in captured.err and captured.out == ""


def _environment():
    return {"cpu": "Test CPU 9000", "cpu_cores": 2, "date": "2026-11-30T12:00:00",
            "commit": "0123456789abcdef", "gpu": {}}


def _records(rate):
    return [{"subject": "gpumlp-numpy", "device": "cpu", "config": "mlp-256", "batch": 64,
             "train_samples_per_s": rate, "infer_samples_per_s": 2 * rate,
             "train_gflops": 1.0, "ms_per_epoch": 6e7 / rate, "host_us_per_step": 1.0}]


def test_results_files_are_never_overwritten(tmp_path):
    first = write_outputs(_records(1000.0), _environment(), {}, tmp_path)
    before = {kind: path.read_bytes() for kind, path in first.items()}
    second = write_outputs(_records(5.0), _environment(), {}, tmp_path)
    assert first["json"].name == "bench-2026-11-30-test-cpu-9000.json"
    assert second["json"].name == "bench-2026-11-30-test-cpu-9000-2.json"
    assert second["markdown"].name == "bench-2026-11-30-test-cpu-9000-2.md"
    assert {kind: path.read_bytes() for kind, path in first.items()} == before
    assert json.loads(second["json"].read_text())["results"][0]["train_samples_per_s"] == 5.0
    # a stray file of any of the run's kinds also moves the next run on
    (tmp_path / "bench-2026-11-30-test-cpu-9000-3.md").write_text("hand-written notes")
    third = write_outputs(_records(7.0), _environment(), {}, tmp_path)
    assert third["json"].name == "bench-2026-11-30-test-cpu-9000-4.json"
    assert (tmp_path / "bench-2026-11-30-test-cpu-9000-3.md").read_text() == "hand-written notes"


def test_reserve_stem_claims_the_name(tmp_path):
    one = reserve_stem(tmp_path, "kernels-x", (".json", ".md"))
    two = reserve_stem(tmp_path, "kernels-x", (".json", ".md"))
    assert one.name == "kernels-x" and two.name == "kernels-x-2"
    assert (tmp_path / "kernels-x.json").exists()  # claimed, so a concurrent run moves on


def test_bench_where_every_measurement_fails_writes_nothing(capsys, tmp_path, monkeypatch):
    import gpumlp.bench.runner as runner

    monkeypatch.setattr(runner, "run_plan", lambda plan: [
        {"subject": "gpumlp-numpy", "config": "mlp-256", "batch": 64,
         "error": "RuntimeError: out of device memory"}])
    code = main(["bench", "--backends", "numpy", "--configs", "mlp-256", "--batches", "64",
                 "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "every measurement failed" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_a_failing_subject_is_explained_once(monkeypatch):
    import io

    from gpumlp.bench import subjects

    def broken(self, sizes, batch, X, y):
        raise RuntimeError("no device memory left")

    monkeypatch.setattr(subjects.GpumlpSubject, "prepare", broken)
    out = io.StringIO()
    plan = Plan(["mlp-256"], [64, 256], ["numpy"], repeats=1, min_time=0.01)
    results = run_plan(plan, out=out)
    assert [r["error"] for r in results] == ["RuntimeError: no device memory left"] * 2
    assert out.getvalue().count("no device memory left") == 1
    assert "failed again (same error)" in out.getvalue()


def _poisoned_empty(shape, dtype):
    """What ``empty`` may hand out: old memory, here the largest float, so that a product
    reading a buffer nobody wrote overflows (denormals there slow BLAS down a hundredfold)."""
    dtype = np.dtype(dtype)
    return np.full(shape, np.finfo(dtype).max if dtype.kind == "f" else 0, dtype)


@pytest.mark.parametrize("cpu_kernels", ["on", "off"])
def test_outside_matmul_share_counts_every_pass_on_real_operands(cpu_kernels, monkeypatch):
    from gpumlp.backends.numpy_backend import NumpyBackend
    from gpumlp.bench import subjects

    backend = NumpyBackend(cpu_kernels=cpu_kernels)
    monkeypatch.setattr(backend, "empty", _poisoned_empty)
    monkeypatch.setattr(subjects, "get_backend", lambda name: backend)
    plan = Plan(["mlp-256"], [1024], ["numpy"], repeats=5, min_time=0.05)
    with np.errstate(over="raise", invalid="raise"):
        [record] = run_plan(plan)
    assert (backend.cpu_path.kernels is not None) == (cpu_kernels == "on")
    # A timing on a shared machine: the bounds leave room for its noise, not for products
    # that read unwritten memory (a hundredfold slower with denormals there: share < -10).
    assert -0.5 < record["outside_matmul_fraction"] < 1, record
    assert record["matmul_ms"] > 0 and record["step_ms"] > 0


@pytest.mark.parametrize("cpu_kernels", ["on", "off"])
def test_the_share_times_every_matrix_product_of_the_step_on_its_buffers(cpu_kernels):
    from gpumlp.backends.numpy_backend import NumpyBackend
    from gpumlp.bench.runner import step_products
    from gpumlp.bench.subjects import GpumlpSubject

    sizes, batch = CONFIGS["mlp-512"], 256
    X, y = synthetic_mnist(2 * batch, seed=0)
    subject = GpumlpSubject(NumpyBackend(cpu_kernels=cpu_kernels))
    subject.prepare(sizes, batch, X, y)
    subject.train(1)
    calls = step_products(subject)
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b, _ in calls)
    assert flops == batch * train_flops_per_sample(sizes)  # the protocol's count
    ws = subject.buffers.workspace
    written = [subject.buffers.x, subject.net.params] + ws.a[1:] + ws.h[1:]
    for a, b, out in calls:
        for operand in (a, b):
            assert any(np.shares_memory(operand, buffer) for buffer in written)
        assert not any(np.shares_memory(out, buffer) for buffer in written)
        assert out.shape == (a.shape[0], b.shape[1]) and out.dtype == np.float32


def test_a_diverging_subject_is_reported_not_timed(monkeypatch):
    from gpumlp.bench import subjects

    monkeypatch.setattr(subjects, "LEARNING_RATE", 1e30)  # weights overflow after a step
    plan = Plan(["mlp-256"], [1024], ["numpy"], repeats=1, min_time=0.01)
    with np.errstate(all="ignore"):
        [record] = run_plan(plan)
    assert record["error"].startswith("training diverged (loss nan after the timed steps): "
                                      "its timing would be of inf/NaN arithmetic"), record
    assert "train_samples_per_s" not in record


def test_every_subject_keeps_learning_at_the_smallest_full_batch():
    """The protocol's subjects train on the same synthetic data at the same learning rate;
    at batch 64 they take the most steps per sample, and their loss must stay finite (a
    diverged run times inf/NaN arithmetic) and fall."""
    from gpumlp.bench.runner import make_subjects

    X, y = synthetic_mnist(64 * 200, seed=0)
    plan = Plan(["mlp-512"], [64], ["numpy"], ["torch", "sklearn"])
    for factory in make_subjects(plan, io.StringIO()):
        subject = factory()
        subject.prepare(CONFIGS["mlp-512"], 64, X, y)
        subject.train(200)
        subject.train(200)
        loss = subject.train_loss()
        assert math.isfinite(loss) and loss < 0.5 * math.log(10), (subject.name, loss)
