"""Public access to the captured-step runners kept between fits.

``gpumlp.graph_pool.clear()`` frees them; the pool itself lives with the CUDA backend
(:mod:`gpumlp.backends.cuda.graph_pool`).
"""

from .backends.cuda.graph_pool import clear

__all__ = ["clear"]
