"""What a benchmark result records about the machine it ran on."""

from __future__ import annotations

import datetime
import os
import subprocess
from pathlib import Path
from typing import Any

from .. import config
from ..info import collect_info


def environment(peers: dict[str, Any]) -> dict[str, Any]:
    """Device, versions, threads and commit for a results file: ``gpumlp info``'s facts
    (without the datasets) plus the date, the commit and the thread settings."""
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "threads": thread_counts(),
        "load_average": load_average(),
    }
    env.update({k: v for k, v in collect_info().items() if k != "datasets"})
    for name, module in peers.items():
        env[name] = getattr(module, "__version__", "unknown")
    return env


def git_commit() -> str:
    """The commit of the source tree gpumlp runs from, or ``"unknown"`` when installed."""
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "gpumlp",
                                "kernels"], capture_output=True, text=True, timeout=10).stdout
        return out + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages: other work on the machine slows a CPU run."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # not available on this platform
        return None


def thread_counts() -> dict[str, Any]:
    """Thread settings that change CPU results: the environment and the BLAS pool."""
    counts: dict[str, Any] = {k: config.text(k) for k in
                              ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        from threadpoolctl import threadpool_info

        counts["blas_pools"] = [{"api": p.get("internal_api"), "threads": p.get("num_threads")}
                                for p in threadpool_info()]
    except ImportError:
        pass
    return counts
