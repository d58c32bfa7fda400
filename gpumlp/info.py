"""What ``gpumlp info`` reports: versions, backends (and why one is unavailable), devices,
BLAS, kernels and the datasets found on this machine; or, given a saved model, what the
model is (:func:`format_model`)."""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from .backends import available_backends, get_backend
from .backends.numpy_backend import _blas_name
from .data import find_datasets
from .version import __version__


def collect_info() -> dict[str, Any]:
    """Everything ``gpumlp info`` shows, as a JSON-friendly dictionary."""
    info: dict[str, Any] = {
        "gpumlp": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "numpy": np.__version__,
        "blas": _blas_name(),
        "blas_threads": blas_threads(),
        "cpu_path": cpu_path(),
        "backends": available_backends(),
        "datasets": find_datasets(),
    }
    if info["backends"]["cupy"] is None:
        info["gpu"] = get_backend("cupy").describe()
    return info


def cpu_path() -> dict[str, Any]:
    """How the NumPy backend's elementwise work runs, with the kernels compiled (or loaded
    from Numba's cache) now: a warm-up no later timing pays for."""
    path = get_backend("numpy").cpu_path
    warm_up = path.compile()
    return {"path": path.describe(), "warm_up": warm_up}


def blas_threads() -> list[dict[str, Any]] | None:
    """BLAS and OpenMP thread pools loaded in this process (threadpoolctl, when installed)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [{"library": p.get("internal_api"), "version": p.get("version"),
             "threads": p.get("num_threads"), "architecture": p.get("architecture")}
            for p in threadpool_info()]


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def format_info(info: dict[str, Any]) -> str:
    lines = [f"gpumlp {info['gpumlp']} (Python {info['python']}, {info['platform']})",
             f"CPU: {info['cpu']} ({info['cpu_cores']} logical cores)",
             f"NumPy {info['numpy']}, BLAS: {info['blas']}"]
    for pool in info.get("blas_threads") or []:
        lines.append(f"  thread pool: {pool['library']} {pool['version']} "
                     f"({pool['architecture']}), {pool['threads']} threads")
    lines.append(f"CPU path: {info['cpu_path']['path']}")
    lines.append("backends:")
    for name, reason in info["backends"].items():
        lines.append(f"  {name:6} {'available' if reason is None else 'unavailable: ' + reason}")
    for key, value in info.get("gpu", {}).items():
        lines.append(f"  gpu {key}: {value}")
    lines.append("datasets:")
    for name, where in info["datasets"].items():
        lines.append(f"  {name:14} {where or 'not found (downloaded on first use if online)'}")
    return "\n".join(lines)


def format_model(path: str, model: Any) -> str:
    """What ``gpumlp info MODEL`` prints: the estimator, what it was trained for, and its
    network's summary (:meth:`gpumlp.network.Network.summary`)."""
    name = type(model).__name__
    classes = getattr(model, "classes_", None)
    task = (f"{len(classes)} classes" if classes is not None else
            f"{getattr(model, 'n_outputs_', 1)} output(s)")
    lines = [f"{path}: {name}, {model.n_features_in_} features, {task}, "
             f"trained {model.n_iter_} epoch(s)"]
    network = getattr(model, "network_", None)
    if network is None:  # the single-layer perceptron keeps coef_ and intercept_
        coef = np.asarray(model.coef_)
        lines.append(f"one hard-limit layer {coef.shape[1]} -> {coef.shape[0]}: "
                     f"{coef.size + np.size(model.intercept_):,} parameters, dtype {coef.dtype}")
        return "\n".join(lines)
    lines.append(str(network.summary(optimizer=model.solver)))
    return "\n".join(lines)
