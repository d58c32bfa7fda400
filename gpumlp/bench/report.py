"""Benchmark output: the JSON record, a markdown table and a throughput plot."""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..atomic import atomic_write


def ratios(results: list[dict[str, Any]], baseline: str = "gpumlp-numpy") -> None:
    """Add ``vs_baseline``: each subject's training rate over gpumlp-numpy's, same cell."""
    base = {(r["config"], r["batch"]): r["train_samples_per_s"] for r in results
            if r.get("subject") == baseline and "error" not in r}
    for r in results:
        key = (r.get("config"), r.get("batch"))
        if "error" not in r and key in base:
            r["vs_baseline"] = r["train_samples_per_s"] / base[key]


def percent_of_peak(results: list[dict[str, Any]], environment: dict[str, Any]) -> None:
    """Add ``percent_of_fp32_peak`` to GPU records when the device's peak is known."""
    peak = environment.get("gpu", {}).get("fp32_peak_tflops")
    for r in results:
        if peak and r.get("device") == "gpu" and "error" not in r:
            r["percent_of_fp32_peak"] = 100 * r["train_gflops"] / (peak * 1e3)


def markdown_table(results: list[dict[str, Any]], environment: dict[str, Any]) -> str:
    gpu = environment.get("gpu", {}).get("device_name")
    lines = [f"Device: {gpu or 'no GPU'}; CPU: {environment['cpu']} "
             f"({environment['cpu_cores']} cores); {environment['date']}; "
             f"commit {environment['commit'][:12]}{_load(environment)}", "",
             "| config | batch | subject | train samples/s | infer samples/s | "
             "train GFLOP/s | % FP32 peak | ms/epoch | host µs/step | vs gpumlp-numpy |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['config']} | {r['batch']} | {r['subject']} | failed: "
                         f"{r['error'][:60]} | | | | | | |")
            continue
        ratio = f"{r['vs_baseline']:.2f}x" if "vs_baseline" in r else ""
        peak = f"{r['percent_of_fp32_peak']:.1f}" if "percent_of_fp32_peak" in r else ""
        # On the CPU the host time is the whole step; it tells something only for a GPU.
        host = f"{r['host_us_per_step']:.1f}" if r.get("device") == "gpu" else ""
        lines.append(f"| {r['config']} | {r['batch']} | {r['subject']} | "
                     f"{r['train_samples_per_s']:,.0f} | {r['infer_samples_per_s']:,.0f} | "
                     f"{r['train_gflops']:.1f} | {peak} | {r['ms_per_epoch']:.1f} | "
                     f"{host} | {ratio} |")
    shares = [r for r in results if "outside_matmul_fraction" in r]
    if shares:
        lines.append("")
        lines += [f"gpumlp-numpy {r['config']} batch {r['batch']}: "
                  f"{100 * r['outside_matmul_fraction']:.1f} % of the step outside matrix "
                  f"products (step {r['step_ms']:.2f} ms, its matrix products alone "
                  f"{r['matmul_ms']:.2f} ms; medians of interleaved repeats)" for r in shares]
    return "\n".join(lines) + "\n"


def _load(environment: dict[str, Any]) -> str:
    before, after = environment.get("load_average"), environment.get("load_average_after")
    if not before:
        return ""
    text = f"; load average {before[0]:.2f} before"
    return text + (f", {after[0]:.2f} after" if after else "")


def write_outputs(results: list[dict[str, Any]], environment: dict[str, Any],
                  plan: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and (with matplotlib) ``<stem>.png``.

    The stem is ``bench-DATE-DEVICE``, or ``bench-DATE-DEVICE-2``, ``-3``, ... when a file of
    that name exists: a run never overwrites an earlier run's results.
    """
    device = environment.get("gpu", {}).get("device_name") or environment["cpu"]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()[:40]
    stem = reserve_stem(out_dir, f"bench-{environment['date'][:10]}-{slug}",
                        (".json", ".md", ".png"))
    paths = {"json": stem.with_name(stem.name + ".json"),
             "markdown": stem.with_name(stem.name + ".md")}
    document = {"environment": environment, "plan": plan, "results": results}
    try:
        write_text(paths["json"], json.dumps(document, indent=2))
    except BaseException:  # leave no empty reservation behind
        with contextlib.suppress(OSError):
            if paths["json"].stat().st_size == 0:
                paths["json"].unlink()
        raise
    write_text(paths["markdown"], markdown_table(results, environment))
    png = stem.with_name(stem.name + ".png")
    if plot(results, png):
        paths["plot"] = png
    return paths


def reserve_stem(out_dir: str | Path, stem: str, suffixes: tuple[str, ...]) -> Path:
    """``out_dir/stem`` (or ``stem-2``, ``stem-3``, ...) such that no ``stem + suffix`` exists.

    The first suffix's file is created empty, exclusively, so that two runs finishing at the
    same moment cannot pick the same name; the caller then writes it (atomically) for real.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = out_dir / (stem if n == 1 else f"{stem}-{n}")
        n += 1
        if any(candidate.with_name(candidate.name + s).exists() for s in suffixes):
            continue
        try:
            fd = os.open(candidate.with_name(candidate.name + suffixes[0]),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:  # taken between the check and here
            continue
        os.close(fd)
        return candidate


def write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_write(path) as handle:
        handle.write(text.encode())


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Throughput against batch size, one line per subject, a panel per config."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ok = [r for r in results if "error" not in r]
    configs = sorted({r["config"] for r in ok})
    if not configs:
        return False
    fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4.5), squeeze=False)
    for ax, config in zip(axes[0], configs):
        for subject in sorted({r["subject"] for r in ok if r["config"] == config}):
            points = sorted((r["batch"], r["train_samples_per_s"]) for r in ok
                            if r["config"] == config and r["subject"] == subject)
            ax.plot(*zip(*points), marker="o", label=subject)
        ax.set(xscale="log", yscale="log", xlabel="batch size",
               ylabel="training samples/s", title=config)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return True
