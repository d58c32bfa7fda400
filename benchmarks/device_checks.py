"""The checks that need a CUDA device, in priority order, within a time budget.

    benchmarks/device_checks.sh [--budget SECONDS] [--out DIR] [--data-dir DIR] [--dry-run]

Every step calls the ``gpumlp`` command line, pytest or compute-sanitizer in a subprocess,
so this file depends on no module path inside the package.  A step starts only when its
estimate fits the budget left; it then runs under a time limit of its own, never past the
budget.  A step whose prerequisite is absent (no compute-sanitizer, no Fashion-MNIST under
``--data-dir``/``$GPUMLP_DATA``) is *skipped* with the reason, which is not a failure.

The estimates are seconds on one H100 from a cold CuPy kernel cache; each run records what
every step really took (``device_checks.json``), which is what the estimates should follow
(``--estimates earlier/device_checks.json`` uses them).  A copy of the tree without ``.git``
(a device machine's) records ``--commit HASH`` as its commit.

Output in ``--out`` (default ``$OUT``): ``device_checks.json`` (machine, versions, commit and
every step's status, seconds and log name) and ``device_checks-logs.tar.gz`` (every log and
every file a step wrote).  Exit status: 0 when no step that ran failed, 1 when one failed or
ran out of time, 2 when there is no CUDA device (or no CuPy) to check.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUDGET_S = 480
#: Seconds a step gets to exit after SIGTERM before SIGKILL.
KILL_GRACE_S = 5
#: Seconds kept back for the environment probe (before the steps), and for a stopped step's
#: grace and the archive (after them).
PROBE_ESTIMATE_S = 15
FINISH_RESERVE_S = KILL_GRACE_S + 10
LOGS = "device_checks-logs"
FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
#: Where compute-sanitizer lives when the CUDA toolkit's bin folder is not on PATH.
SANITIZER_DIRS = ("/usr/local/cuda/bin", "/usr/local/cuda/compute-sanitizer")


@dataclass(frozen=True)
class Step:
    """One check: its command (built from the run's context), estimate and time limit."""

    name: str
    estimate_s: int
    timeout_s: int
    command: Callable[["Context"], list[str]]
    needs: tuple[str, ...] = ("device",)  # of "device", "sanitizer", "dataset"
    priority: bool = False  # one of the checks the budget is sized for


@dataclass
class Context:
    """What the commands are built from: interpreter, folders, tools found."""

    python: str
    logs: Path
    data_dir: Path | None = None  # a folder holding Fashion-MNIST's four IDX files
    sanitizer: str | None = None
    device: bool = True
    device_reason: str = ""


@dataclass
class Result:
    """A step's outcome: passed, failed, timeout or skipped."""

    step: str
    status: str
    estimate_s: int
    seconds: float = 0.0
    timeout_s: float | None = None
    exit_code: int | None = None
    reason: str = ""
    log: str | None = None
    command: list[str] = field(default_factory=list)


def gpumlp(*args: str, json_name: str | None = None,
           out: bool = False) -> Callable[[Context], list[str]]:
    """``python -m gpumlp.cli ARGS`` (the console script needs no install this way), with
    ``--json LOGS/json_name`` and/or ``--out LOGS`` added."""
    def command(ctx: Context) -> list[str]:
        extra = (["--json", str(ctx.logs / json_name)] if json_name else []) + (
            ["--out", str(ctx.logs)] if out else [])
        return [ctx.python, "-m", "gpumlp.cli", *args, *extra]
    return command


def sanitized(tool: str) -> Callable[[Context], list[str]]:
    """``compute-sanitizer --tool TOOL`` over ``gpumlp selftest --quick``."""
    selftest = gpumlp("selftest", "--quick", json_name=f"{tool}-selftest.json")
    return lambda ctx: [ctx.sanitizer or "compute-sanitizer", "--tool", tool,
                        "--error-exitcode", "99", *selftest(ctx)]


def pytest(marker: str, xml: str) -> Callable[[Context], list[str]]:
    return lambda ctx: [ctx.python, "-m", "pytest", "-m", marker, "-q", "-rs",
                        "-p", "no:cacheprovider", f"--junitxml={ctx.logs / xml}", "tests"]


#: In priority order.  The estimates are first guesses, no device run yet: the cold NVRTC
#: compile of every kernel, which the first step pays, took 80 s of CPU on a 2-core Xeon;
#: bench --kernels times 216 operations of about 0.15 s each; bench-table is 2 cells of 5
#: subjects plus two cold torch.compile builds.
STEPS: tuple[Step, ...] = (
    Step("selftest-quick", 90, 240, gpumlp("selftest", "--quick",
                                            json_name="selftest-quick.json"), priority=True),
    Step("pytest-gpu", 100, 240, pytest("gpu and not slow", "pytest-gpu.xml"), priority=True),
    Step("memcheck", 80, 200, sanitized("memcheck"), ("device", "sanitizer"), priority=True),
    Step("bench-kernels", 50, 150, gpumlp("bench", "--kernels", out=True), priority=True),
    # Graph vs eager (gpumlp-cupy-graph, gpumlp-cupy) vs PyTorch eager and torch.compile.
    Step("bench-table", 90, 200, gpumlp("bench", "--backends", "cupy", "--peers", "torch",
                                        "--batches", "256", out=True), priority=True),
    # Then whatever fits.
    Step("accuracy", 90, 200, pytest("gpu and slow", "pytest-gpu-slow.xml"),
         ("device", "dataset")),
    Step("racecheck", 150, 300, sanitized("racecheck"), ("device", "sanitizer")),
    Step("synccheck", 90, 200, sanitized("synccheck"), ("device", "sanitizer")),
    Step("tta", 120, 300, gpumlp("bench", "--tta", "--backends", "cupy", "--peers", "torch",
                                 out=True), ("device", "dataset")),
    Step("bench-full", 420, 600, gpumlp("bench", "--full", "--peers", "torch", out=True)),
)


# ------------------------------------------------------------------------ prerequisites
def find_sanitizer(search: tuple[str, ...] = SANITIZER_DIRS) -> str | None:
    """compute-sanitizer on PATH, else in the CUDA toolkit's usual folders."""
    return shutil.which("compute-sanitizer") or next(
        (str(Path(d) / "compute-sanitizer") for d in search
         if (Path(d) / "compute-sanitizer").is_file()), None)


def fashion_mnist_dir(data_dir: str | None) -> Path | None:
    """``data_dir/fashion-mnist`` or ``data_dir`` itself when it holds the four IDX files
    (each ``.gz`` or not); ``None`` otherwise.  No other place is searched."""
    if not data_dir:
        return None
    for folder in (Path(data_dir) / "fashion-mnist", Path(data_dir)):
        if all((folder / f).is_file() or (folder / f"{f}.gz").is_file()
               for f in FASHION_FILES):
            return folder
    return None


def skip_reason(step: Step, ctx: Context) -> str | None:
    """Why ``step`` cannot run here, or ``None``."""
    if "device" in step.needs and not ctx.device:
        return f"no CUDA device: {ctx.device_reason}"
    if "sanitizer" in step.needs and ctx.sanitizer is None:
        return ("compute-sanitizer not found (on PATH or in " + ", ".join(SANITIZER_DIRS)
                + "; it ships with the CUDA toolkit)")
    if "dataset" in step.needs and ctx.data_dir is None:
        return ("Fashion-MNIST not found: pass --data-dir (or set GPUMLP_DATA to) a folder "
                "holding fashion-mnist/ or its four IDX files; nothing is downloaded")
    return None


# ---------------------------------------------------------------------------- schedule
def schedule(steps: tuple[Step, ...], ctx: Context, budget_s: float,
             run: Callable[[Step, float], Result], clock: Callable[[], float],
             start: float, on_result: Callable[[Result], None] = lambda r: None
             ) -> list[Result]:
    """Run ``steps`` in order; start none whose estimate exceeds the budget left, and give
    each at most its own time limit and never more than the budget left."""
    results = []
    for step in steps:
        left = budget_s - FINISH_RESERVE_S - (clock() - start)
        reason = skip_reason(step, ctx)
        if reason is None and step.estimate_s > left:
            reason = f"budget: estimate {step.estimate_s} s, {max(left, 0):.0f} s left"
        if reason is not None:
            result = Result(step.name, "skipped", step.estimate_s, reason=reason,
                            command=step.command(ctx))
        else:
            result = run(step, min(step.timeout_s, left))
        results.append(result)
        on_result(result)
    return results


def run_step(step: Step, ctx: Context, timeout_s: float) -> Result:
    """Run one step's command in its own process group, its output in ``NAME.log``."""
    command = step.command(ctx)
    log = ctx.logs / f"{step.name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")])))
    env.pop("GPUMLP_DATA", None)  # the data folder reaches a step only through ctx.data_dir
    if ctx.data_dir is not None:
        env["GPUMLP_DATA"] = str(ctx.data_dir)
    started = time.monotonic()
    with open(log, "w") as out:
        out.write(f"$ {shlex.join(command)}\n")
        out.flush()
        try:
            process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            out.write(f"could not start: {exc}\n")
            return Result(step.name, "failed", step.estimate_s, time.monotonic() - started,
                          timeout_s, None, f"could not start: {exc}", log.name, command)
        try:
            code = process.wait(timeout=timeout_s)
            status, reason = ("passed", "") if code == 0 else ("failed", f"exit status {code}")
        except subprocess.TimeoutExpired:
            code = stop(process)
            status, reason = "timeout", f"stopped after its limit of {timeout_s:.0f} s"
            out.write(f"\n{reason}\n")
    return Result(step.name, status, step.estimate_s, round(time.monotonic() - started, 1),
                  round(timeout_s, 1), code, reason, log.name, command)


def stop(process: subprocess.Popen) -> int | None:
    """SIGTERM the step's process group, SIGKILL it if it outlives the grace period."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            return process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    return None


# ------------------------------------------------------------------------- environment
PROBE = r"""
import json, platform, sys
facts = {"python": platform.python_version()}
for name in ("numpy", "cupy", "torch", "pytest"):
    try:
        facts[name] = __import__(name).__version__
    except Exception:
        facts[name] = None
try:
    import cupy
    rt = cupy.cuda.runtime
    facts["cuda_runtime"] = rt.runtimeGetVersion()
    facts["cuda_driver"] = rt.driverGetVersion()
    count = rt.getDeviceCount()
    facts["device_count"] = count
    if count:
        props = rt.getDeviceProperties(0)
        facts["device"] = props["name"].decode() if isinstance(props["name"], bytes) \
            else props["name"]
        facts["compute_capability"] = f"{props['major']}.{props['minor']}"
        facts["multiprocessors"] = props["multiProcessorCount"]
        facts["memory_bytes"] = props["totalGlobalMem"]
except Exception as exc:
    facts["device_error"] = f"{type(exc).__name__}: {exc}"
print(json.dumps(facts))
"""


def probe_environment(python: str, timeout_s: float = 60) -> dict:
    """Versions and the device as the steps' interpreter sees them, plus nvidia-smi's view."""
    facts: dict = {}
    try:
        out = subprocess.run([python, "-c", PROBE], capture_output=True, text=True,
                             timeout=timeout_s, cwd=REPO).stdout
        facts.update(json.loads(out.strip().splitlines()[-1]))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        facts["device_error"] = f"probe failed: {type(exc).__name__}: {exc}"
    facts["nvidia_smi"] = command_output(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    return facts


def command_output(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def device_missing(facts: dict, python: str) -> str | None:
    """Why the steps that need a device cannot run, or ``None``."""
    if facts.get("cupy") is None:
        return f"CuPy is not importable by {python}"
    if facts.get("device_count"):
        return None
    return facts.get("device_error") or "CuPy sees no CUDA device"


def git_commit() -> str:
    commit = command_output(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    if commit is None:
        return "unknown"
    dirty = command_output(["git", "-C", str(REPO), "status", "--porcelain", "--",
                            "gpumlp", "kernels", "tests", "benchmarks"])
    return commit + ("-dirty" if dirty else "")


# ------------------------------------------------------------------------------ output
def write_json(path: Path, payload: dict) -> None:
    """Atomically: a reader (or a run stopped half-way) sees the old file or the new one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    partial.replace(path)


def archive(logs: Path, target: Path) -> None:
    """Every file under ``logs`` into ``target`` (tar.gz), then ``logs`` is removed."""
    partial = target.with_name(target.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(logs, arcname=logs.name)
    partial.replace(target)
    shutil.rmtree(logs)


def summary_table(results: list[Result]) -> str:
    lines = [f"{'step':<16}{'status':<9}{'seconds':>8}{'estimate':>10}  reason / log"]
    for r in results:
        lines.append(f"{r.step:<16}{r.status:<9}{r.seconds:>8.1f}{r.estimate_s:>10}  "
                     f"{r.reason or r.log or ''}")
    return "\n".join(lines)


def exit_status(results: list[Result], device: bool) -> int:
    if any(r.status in ("failed", "timeout") for r in results):
        return 1
    return 0 if device else 2


def measured_estimates(steps: tuple[Step, ...], path: str) -> tuple[Step, ...]:
    """``steps`` with the estimate of each step that finished in an earlier run's JSON set
    to its seconds there plus a fifth (rounded up), its limit at least twice that; other
    steps keep theirs."""
    try:
        earlier = json.loads(Path(path).read_text())["steps"]
        seconds = {s["step"]: float(s["seconds"]) for s in earlier
                   if s["status"] in ("passed", "failed")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SystemExit(f"--estimates {path}: not a device_checks.json ({exc})") from None
    steps_now = []
    for step in steps:
        if step.name in seconds:
            estimate = math.ceil(1.2 * seconds[step.name])
            step = replace(step, estimate_s=estimate,
                           timeout_s=max(step.timeout_s, 2 * estimate))
        steps_now.append(step)
    return tuple(steps_now)


# ------------------------------------------------------------------------------- plans
def dry_run(steps: tuple[Step, ...], ctx: Context, budget_s: float) -> str:
    """The plan on a GPU machine with every prerequisite present, each step taking its
    estimate and passing; prerequisites missing on *this* machine are noted per step."""
    present = replace(ctx, device=True, sanitizer=ctx.sanitizer or "compute-sanitizer",
                      data_dir=ctx.data_dir or Path("DATA_DIR/fashion-mnist"))
    missing_here = {"sanitizer": ctx.sanitizer is None, "dataset": ctx.data_dir is None,
                    "device": False}
    clock = [float(PROBE_ESTIMATE_S)]

    def pretend(step: Step, timeout_s: float) -> Result:
        clock[0] += step.estimate_s
        return Result(step.name, "passed", step.estimate_s, step.estimate_s, timeout_s)

    results = schedule(steps, present, budget_s, pretend, lambda: clock[0], 0.0)
    lines = [f"Device check plan, budget {budget_s:.0f} s: estimates for one H100 from a cold "
             f"kernel cache; {PROBE_ESTIMATE_S} s for the probe and {FINISH_RESERVE_S} s for a "
             "stopped step and the archive kept back; assumes compute-sanitizer and Fashion-MNIST (--data-dir) are there, "
             "else those steps are skipped, not failed.",
             f"{'#':>2}  {'step':<15}{'estimate':>9}{'limit':>7}{'ends by':>9}  plan"]
    at = PROBE_ESTIMATE_S
    for i, (step, result) in enumerate(zip(steps, results), 1):
        if result.status == "skipped":
            plan, ends = f"skip ({result.reason})", ""
        else:
            at += step.estimate_s
            plan, ends = "run" + (" (priority)" if step.priority else ""), f"{at} s"
        absent = [need for need in step.needs if missing_here[need]]
        if absent:
            plan += f" [{', '.join(absent)} not found here]"
        limit = "" if result.timeout_s is None else f"{result.timeout_s:.0f} s"
        lines.append(f"{i:>2}  {step.name:<15}{step.estimate_s:>7} s{limit:>7}{ends:>9}  "
                     f"{plan}")
        lines.append(f"{'':>4}$ {shlex.join(step.command(present))}")
    priority = sum(s.estimate_s for s in steps if s.priority)
    total = PROBE_ESTIMATE_S + priority + FINISH_RESERVE_S
    fits = "fits" if total <= budget_s else "does NOT fit"
    lines.append(f"Priority steps {priority} s + probe and reserve "
                 f"{PROBE_ESTIMATE_S + FINISH_RESERVE_S} s = {total} s of {budget_s:.0f} s: "
                 f"{fits}. With the extras that fit, the plan ends by "
                 f"{at + FINISH_RESERVE_S} s.")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="benchmarks/device_checks.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, metavar="SECONDS",
                        help=f"wall-clock seconds for the whole check (default "
                             f"{DEFAULT_BUDGET_S})")
    parser.add_argument("--out", default=os.environ.get("OUT"), metavar="DIR",
                        help="folder for device_checks.json and the log archive "
                             "(default: $OUT)")
    parser.add_argument("--data-dir", default=os.environ.get("GPUMLP_DATA"), metavar="DIR",
                        help="folder holding fashion-mnist/ or its IDX files (default: "
                             "$GPUMLP_DATA); without it the accuracy steps are skipped")
    parser.add_argument("--commit", default=None,
                        help="commit to record when the tree has no .git (default: git's)")
    parser.add_argument("--estimates", default=None, metavar="JSON",
                        help="take each step's estimate from an earlier run's "
                             "device_checks.json (its seconds plus a fifth)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and its estimates; run nothing")
    args = parser.parse_args(argv)
    if not args.budget > 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget:g}")
    if not args.dry_run and not args.out:
        parser.error("--out DIR (or $OUT) is required: where the results go")
    return args


def main(argv: list[str] | None = None) -> int:
    started, begun = time.monotonic(), datetime.datetime.now(datetime.timezone.utc)
    args = parse_args(argv)
    ctx = Context(python=sys.executable, logs=Path(args.out or ".") / LOGS,
                  data_dir=fashion_mnist_dir(args.data_dir), sanitizer=find_sanitizer())
    steps = measured_estimates(STEPS, args.estimates) if args.estimates else STEPS
    if args.dry_run:
        print(dry_run(steps, ctx, args.budget))
        return 0
    out = Path(args.out)
    shutil.rmtree(ctx.logs, ignore_errors=True)  # left by a run that was stopped
    ctx.logs.mkdir(parents=True)
    facts = probe_environment(ctx.python)
    reason = device_missing(facts, ctx.python)
    ctx.device, ctx.device_reason = reason is None, reason or ""
    (ctx.logs / "environment.log").write_text(
        json.dumps(facts, indent=2) + "\n\n" + (command_output(["nvidia-smi"]) or
                                                "nvidia-smi: not available") + "\n")
    report = {"started": begun.isoformat(timespec="seconds"), "budget_s": args.budget,
              "commit": args.commit or git_commit(), "interpreter": ctx.python,
              "device": facts.get("device"), "nvidia_smi": facts.get("nvidia_smi"),
              "device_missing": reason,
              "cuda": {"runtime": facts.get("cuda_runtime"), "driver": facts.get("cuda_driver")},
              "versions": {k: facts.get(k) for k in ("python", "numpy", "cupy", "torch",
                                                      "pytest")},
              "compute_sanitizer": ctx.sanitizer,
              "data_dir": None if ctx.data_dir is None else str(ctx.data_dir),
              "steps": [], "archive": f"{LOGS}.tar.gz"}

    def record(result: Result) -> None:
        report["steps"].append(vars(result))
        print(f"[{time.monotonic() - started:5.0f} s] {result.step}: {result.status}"
              f"{' (' + result.reason + ')' if result.reason else ''}", flush=True)
        write_json(out / "device_checks.json", report)

    results = schedule(steps, ctx, args.budget, lambda s, t: run_step(s, ctx, t),
                       time.monotonic, started, record)
    report["seconds"] = round(time.monotonic() - started, 1)
    report["exit_status"] = exit_status(results, ctx.device)
    write_json(out / "device_checks.json", report)
    write_json(ctx.logs / "device_checks.json", report)
    archive(ctx.logs, out / f"{LOGS}.tar.gz")
    print(summary_table(results))
    print(f"{out / 'device_checks.json'}, {out / (LOGS + '.tar.gz')}: exit status "
          f"{report['exit_status']}")
    return report["exit_status"]


if __name__ == "__main__":
    sys.exit(main())
