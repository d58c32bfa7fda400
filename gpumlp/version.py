"""The package version (one place: the package, ``gpumlp --version`` and exported files)."""

__version__ = "0.1.0"
