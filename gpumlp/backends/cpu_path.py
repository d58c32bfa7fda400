"""Which path the NumPy backend's elementwise work takes: Numba-compiled passes or NumPy.

``GPUMLP_CPU_KERNELS`` (or ``NumpyBackend(cpu_kernels=...)``) chooses: ``auto`` (the default)
uses the compiled passes of :mod:`gpumlp.backends.cpu_kernels` where Numba imports, ``on``
requires them, ``off`` keeps the NumPy passes.  Numba is imported on the first operation that
needs it, not when gpumlp is imported.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from .. import config

CPU_KERNEL_SETTINGS = config.CPU_KERNEL_SETTINGS


def check_cpu_kernels(value: Any, name: str = "cpu_kernels") -> str:
    """``value`` as one of :data:`CPU_KERNEL_SETTINGS`, else a ``ValueError`` naming it."""
    setting = value.strip().lower() if isinstance(value, str) else value
    if setting not in CPU_KERNEL_SETTINGS:
        raise ValueError(f"{name}={value!r} is not valid; allowed: "
                         f"{', '.join(CPU_KERNEL_SETTINGS)}")
    return setting


def choose_cpu_path(setting: str | None = None) -> "CpuPath":
    """The path for ``setting``, or for ``GPUMLP_CPU_KERNELS`` (default ``auto``) when None."""
    if setting is None:
        return CpuPath(config.get("GPUMLP_CPU_KERNELS"), "GPUMLP_CPU_KERNELS")
    return CpuPath(check_cpu_kernels(setting), "cpu_kernels")


class CpuPath:
    """The compiled kernels module (loaded on first use) or ``None`` with the reason.

    ``source`` names where ``setting`` came from (``"GPUMLP_CPU_KERNELS"``, the environment,
    or ``"cpu_kernels"``, the backend's argument), so messages point at the right one."""

    def __init__(self, setting: str, source: str = "cpu_kernels"):
        self.setting = setting
        self.source = source
        self._lock = threading.Lock()
        self._loaded = setting == "off"
        self._kernels: Any = None
        self.reason = self._named(setting) if setting == "off" else ""
        self.warm_up: dict | None = None

    def _named(self, setting: str) -> str:
        """``setting`` as the user wrote it: ``GPUMLP_CPU_KERNELS=off`` or
        ``cpu_kernels='off'``."""
        if self.source == "GPUMLP_CPU_KERNELS":
            return f"GPUMLP_CPU_KERNELS={setting}"
        return f"{self.source}={setting!r}"

    @property
    def kernels(self) -> Any:
        """:mod:`gpumlp.backends.cpu_kernels`, or ``None`` for the NumPy passes."""
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    self._load()
        return self._kernels

    def _load(self) -> None:
        try:
            cpu_kernels = importlib.import_module(f"{__package__}.cpu_kernels")
        except ImportError as exc:
            if self.setting == "on":
                raise ImportError(f"{self._named('on')} needs Numba, which does not import "
                                  f"({exc}); install numba or use {self._named('auto')}") \
                    from exc
            self.reason = f"Numba is not importable ({exc})"
        else:
            self._kernels = cpu_kernels
        self._loaded = True

    def compile(self) -> dict | None:
        """Compile (or load from Numba's cache) every kernel now, outside any timed region;
        returns the seconds the first such call took and how many signatures it compiled
        (``None`` on the NumPy path)."""
        kernels = self.kernels
        if kernels is not None and self.warm_up is None:
            self.warm_up = kernels.compile_all()  # later calls find every kernel compiled
        return self.warm_up

    def describe(self) -> str:
        """One line for ``gpumlp info`` and benchmark records."""
        kernels = self.kernels
        if kernels is None:
            return f"NumPy passes ({self.reason})"
        import numba

        line = f"Numba {numba.__version__} compiled passes, one per operation"
        if self.warm_up is not None:
            w = self.warm_up
            line += (f"; warm-up {w['seconds']:.2f} s ({w['cache_misses']} signatures "
                     f"compiled, {w['cache_hits']} loaded from the cache)")
        return line
