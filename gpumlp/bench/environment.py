"""What a benchmark result records about the machine it ran on."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..backends import available_backends
from ..backends.numpy_backend import _blas_name
from ..info import cpu_model


def environment(peers: dict[str, Any]) -> dict[str, Any]:
    """Device, versions, threads and commit for a results file."""
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "gpumlp": __version__,
        "commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "numpy": np.__version__,
        "blas": _blas_name(),
        "threads": thread_counts(),
        "backends": available_backends(),
    }
    if env["backends"]["cupy"] is None:
        from ..backends import get_backend

        env["gpu"] = get_backend("cupy").describe()
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


def thread_counts() -> dict[str, Any]:
    """Thread settings that change CPU results: the environment and the BLAS pool."""
    counts: dict[str, Any] = {k: os.environ.get(k) for k in
                              ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    try:
        from threadpoolctl import threadpool_info

        counts["blas_pools"] = [{"api": p.get("internal_api"), "threads": p.get("num_threads")}
                                for p in threadpool_info()]
    except ImportError:
        pass
    return counts
