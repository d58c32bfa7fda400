"""benchmarks/device_checks.py without a GPU: the plan and its budget, skipped vs failed,
per-step time limits, and the JSON and archive a run leaves."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "device_checks.py"


@pytest.fixture
def dc():
    spec = importlib.util.spec_from_file_location("device_checks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["device_checks"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["device_checks"]


def python_step(dc, name, code, estimate=1, timeout=30, needs=("device",)):
    return dc.Step(name, estimate, timeout, lambda ctx: [ctx.python, "-c", code], needs)


class FakeClock:
    """Each pretend step advances the clock by its estimate."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def pretend_runner(dc, clock, took=None):
    ran = []

    def run(step, timeout_s):
        ran.append((step.name, timeout_s))
        clock.now += (took or {}).get(step.name, step.estimate_s)
        return dc.Result(step.name, "passed", step.estimate_s, step.estimate_s, timeout_s)
    return run, ran


def test_dry_run_plan_fits_the_default_budget_in_priority_order(dc, capsys):
    assert dc.main(["--dry-run"]) == 0
    text = capsys.readouterr().out
    rows = [line.split() for line in text.splitlines() if line[:2].strip().isdigit()]
    assert [row[1] for row in rows[:5]] == ["selftest-quick", "pytest-gpu", "memcheck",
                                            "bench-kernels", "bench-table"]
    assert all("run" in row for row in rows[:5])  # every priority step is started
    priority = sum(s.estimate_s for s in dc.STEPS if s.priority)
    assert dc.PROBE_ESTIMATE_S + priority + dc.FINISH_RESERVE_S <= dc.DEFAULT_BUDGET_S
    assert "of 480 s: fits" in text
    assert "$ " in text and "'gpu and not slow'" in text  # the exact commands are shown
    assert not Path(dc.LOGS).exists()  # a dry run writes nothing


def test_dry_run_says_when_a_budget_is_too_small(dc, capsys):
    dc.main(["--dry-run", "--budget", "200"])
    text = capsys.readouterr().out
    assert "does NOT fit" in text
    assert "skip (budget: estimate" in text


def test_no_step_starts_past_the_budget_but_a_smaller_later_one_does(dc, tmp_path):
    steps = (python_step(dc, "a", "", estimate=50, timeout=100),
             python_step(dc, "big", "", estimate=60, timeout=100),
             python_step(dc, "small", "", estimate=20, timeout=100))
    clock = FakeClock()
    run, ran = pretend_runner(dc, clock)
    ctx = dc.Context(python=sys.executable, logs=tmp_path)
    budget = 50 + 30 + dc.FINISH_RESERVE_S  # 30 s left after "a"
    results = dc.schedule(steps, ctx, budget, run, clock, 0.0)
    assert [r.status for r in results] == ["passed", "skipped", "passed"]
    assert results[1].reason == "budget: estimate 60 s, 30 s left"
    # A step's limit is its own, cut to the budget left: the run never outlasts the budget.
    assert ran == [("a", 80.0), ("small", 30.0)]


def test_an_overrunning_step_leaves_less_budget_for_the_rest(dc, tmp_path):
    steps = (python_step(dc, "a", "", estimate=10), python_step(dc, "b", "", estimate=10))
    clock = FakeClock()
    run, ran = pretend_runner(dc, clock, took={"a": 95})
    ctx = dc.Context(python=sys.executable, logs=tmp_path)
    results = dc.schedule(steps, ctx, 100 + dc.FINISH_RESERVE_S, run, clock, 0.0)
    assert [r.status for r in results] == ["passed", "skipped"]
    assert results[1].reason == "budget: estimate 10 s, 5 s left"


def test_missing_prerequisites_are_skipped_with_the_reason(dc, tmp_path):
    ctx = dc.Context(python=sys.executable, logs=tmp_path, sanitizer=None, data_dir=None)
    by_name = {s.name: s for s in dc.STEPS}
    assert "compute-sanitizer not found" in dc.skip_reason(by_name["memcheck"], ctx)
    for name in ("accuracy", "tta"):
        reason = dc.skip_reason(by_name[name], ctx)
        assert "--data-dir" in reason and "GPUMLP_DATA" in reason
    assert dc.skip_reason(by_name["selftest-quick"], ctx) is None
    ctx.device, ctx.device_reason = False, "CuPy sees no CUDA device"
    assert dc.skip_reason(by_name["selftest-quick"], ctx) == \
        "no CUDA device: CuPy sees no CUDA device"


def test_sanitizer_is_found_on_path_or_in_the_toolkit_folder(dc, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert dc.find_sanitizer(search=(str(tmp_path),)) is None
    tool = tmp_path / "compute-sanitizer"
    tool.write_text("#!/bin/sh\n")
    assert dc.find_sanitizer(search=(str(tmp_path),)) == str(tool)


def test_dataset_is_read_only_from_the_given_folder(dc, tmp_path):
    assert dc.fashion_mnist_dir(None) is None
    assert dc.fashion_mnist_dir(str(tmp_path)) is None
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    for name in dc.FASHION_FILES[:3]:
        (folder / f"{name}.gz").write_bytes(b"")
    assert dc.fashion_mnist_dir(str(tmp_path)) is None  # one file missing
    (folder / dc.FASHION_FILES[3]).write_bytes(b"")
    assert dc.fashion_mnist_dir(str(tmp_path)) == folder
    assert dc.fashion_mnist_dir(str(folder)) == folder


def test_run_step_records_failure_and_stops_a_step_at_its_limit(dc, tmp_path):
    ctx = dc.Context(python=sys.executable, logs=tmp_path)
    failed = dc.run_step(python_step(dc, "fails", "print('out'); raise SystemExit(3)"), ctx, 30)
    assert (failed.status, failed.exit_code, failed.reason) == ("failed", 3, "exit status 3")
    assert "out" in (tmp_path / "fails.log").read_text()
    # The child's own child must die too: the whole process group is stopped.
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(60)']); time.sleep(60)")
    start = time.monotonic()
    slow = dc.run_step(python_step(dc, "slow", code), ctx, 1.0)
    assert time.monotonic() - start < 1.0 + dc.KILL_GRACE_S
    assert slow.status == "timeout"
    assert slow.reason == "stopped after its limit of 1 s"


def fake_run(dc, monkeypatch, tmp_path, steps, facts, sanitizer=None):
    monkeypatch.setattr(dc, "STEPS", steps)
    monkeypatch.setattr(dc, "probe_environment", lambda python: facts)
    monkeypatch.setattr(dc, "find_sanitizer", lambda: sanitizer)
    monkeypatch.delenv("GPUMLP_DATA", raising=False)
    out = tmp_path / "out"
    code = dc.main(["--out", str(out), "--budget", "120", "--commit", "abc123"])
    return code, out


DEVICE = {"python": "3.12.3", "numpy": "2.5.2", "cupy": "14.2.0", "torch": "2.11.0",
          "pytest": "8.0", "cuda_runtime": 13000, "cuda_driver": 13000, "device_count": 1,
          "device": "NVIDIA H100 80GB HBM3", "nvidia_smi": "NVIDIA H100 80GB HBM3, 580, 81559"}


def test_a_missing_sanitizer_is_not_a_failure_and_json_shape(dc, monkeypatch, tmp_path):
    steps = (python_step(dc, "selftest-quick", "print('all matched')"),
             python_step(dc, "memcheck", "", needs=("device", "sanitizer")),
             python_step(dc, "accuracy", "", needs=("device", "dataset")))
    code, out = fake_run(dc, monkeypatch, tmp_path, steps, DEVICE)
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["device_checks-logs.tar.gz",
                                                     "device_checks.json"]
    report = json.loads((out / "device_checks.json").read_text())
    assert report["device"] == "NVIDIA H100 80GB HBM3"
    assert report["commit"] == "abc123"
    assert report["versions"] == {k: DEVICE[k] for k in ("python", "numpy", "cupy", "torch",
                                                         "pytest")}
    assert report["cuda"] == {"runtime": 13000, "driver": 13000}
    assert report["budget_s"] == 120 and report["exit_status"] == 0
    assert [(s["step"], s["status"]) for s in report["steps"]] == [
        ("selftest-quick", "passed"), ("memcheck", "skipped"), ("accuracy", "skipped")]
    first = report["steps"][0]
    assert set(first) >= {"step", "status", "seconds", "estimate_s", "timeout_s", "exit_code",
                          "reason", "log", "command"}
    assert first["log"] == "selftest-quick.log" and report["steps"][1]["log"] is None
    assert "compute-sanitizer not found" in report["steps"][1]["reason"]
    with tarfile.open(out / "device_checks-logs.tar.gz") as tar:
        names = set(tar.getnames())
        log = tar.extractfile("device_checks-logs/selftest-quick.log").read().decode()
    assert {"device_checks-logs/environment.log", "device_checks-logs/device_checks.json",
            "device_checks-logs/selftest-quick.log"} <= names
    assert "all matched" in log


def test_exit_status_reflects_failures_only(dc, monkeypatch, tmp_path):
    steps = (python_step(dc, "good", ""), python_step(dc, "bad", "raise SystemExit(1)"),
             python_step(dc, "memcheck", "", needs=("device", "sanitizer")))
    code, out = fake_run(dc, monkeypatch, tmp_path, steps, DEVICE)
    report = json.loads((out / "device_checks.json").read_text())
    assert code == 1 and report["exit_status"] == 1
    assert [s["status"] for s in report["steps"]] == ["passed", "failed", "skipped"]


def test_no_device_skips_every_device_step_and_exits_2(dc, monkeypatch, tmp_path):
    facts = {"python": "3.12.3", "numpy": "2.5.2", "cupy": None}
    steps = (python_step(dc, "selftest-quick", "raise SystemExit(1)"),)
    code, out = fake_run(dc, monkeypatch, tmp_path, steps, facts)
    report = json.loads((out / "device_checks.json").read_text())
    assert code == 2
    assert report["steps"][0]["status"] == "skipped"
    assert report["steps"][0]["reason"].startswith("no CUDA device: CuPy is not importable")


def test_the_shell_wrapper_runs_the_dry_run():
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "device_checks.sh"), "--dry-run"],
                          capture_output=True, text=True, timeout=60,
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert "of 480 s: fits" in done.stdout


def test_a_bad_budget_is_a_one_line_error(dc, capsys):
    with pytest.raises(SystemExit) as exc:
        dc.main(["--dry-run", "--budget", "0"])
    assert exc.value.code == 2
    assert "--budget must be a positive number of seconds, got 0" in capsys.readouterr().err


def test_estimates_follow_an_earlier_run(dc, tmp_path, capsys):
    earlier = tmp_path / "device_checks.json"
    earlier.write_text(json.dumps({"steps": [
        {"step": "selftest-quick", "status": "passed", "seconds": 50.0},
        {"step": "pytest-gpu", "status": "failed", "seconds": 150.0},
        {"step": "memcheck", "status": "skipped", "seconds": 0.0}]}))
    steps = {s.name: s for s in dc.measured_estimates(dc.STEPS, str(earlier))}
    defaults = {s.name: s for s in dc.STEPS}
    assert (steps["selftest-quick"].estimate_s, steps["selftest-quick"].timeout_s) == (60, 240)
    assert (steps["pytest-gpu"].estimate_s, steps["pytest-gpu"].timeout_s) == (180, 360)
    assert steps["memcheck"] == defaults["memcheck"]  # skipped: nothing measured
    assert dc.main(["--dry-run", "--estimates", str(earlier)]) == 0
    assert "selftest-quick      60 s" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="--estimates .*bad.json: not a device_checks.json"):
        dc.measured_estimates(dc.STEPS, str(tmp_path / "bad.json"))
