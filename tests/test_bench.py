"""The benchmark runner: records, outputs and arguments (speed itself is not asserted)."""

import json

import pytest

from gpumlp.bench.protocol import CONFIGS, inference_flops_per_sample, train_flops_per_sample
from gpumlp.bench.runner import Plan, run_plan
from gpumlp.cli import main


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
    assert 0 <= results[0]["outside_matmul_fraction"] < 1


def test_bench_command_writes_json_and_markdown(tmp_path, capsys):
    code = main(["bench", "--configs", "mlp-256", "--batches", "64", "--repeats", "1",
                 "--min-time", "0.01", "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| mlp-256 | 64 | gpumlp-numpy |" in printed
    [json_path] = tmp_path.glob("bench-*.json")
    document = json.loads(json_path.read_text())
    env = document["environment"]
    for key in ("cpu", "cpu_cores", "numpy", "blas", "commit", "date", "threads"):
        assert key in env
    assert document["results"][0]["subject"] == "gpumlp-numpy"
    assert list(tmp_path.glob("bench-*.md"))


@pytest.mark.parametrize("argv, message", [
    (["--configs", "mlp-9"], "--configs has unknown ['mlp-9']"),
    (["--batches", "0"], "--batches value 0 must be positive"),
    (["--peers", "jax"], "--peers has unknown ['jax']"),
    (["--repeats", "0"], "--repeats=0 must be at least 1"),
])
def test_bench_rejects_bad_arguments(argv, message, capsys):
    assert main(["bench", *argv]) == 1
    assert message in capsys.readouterr().err
