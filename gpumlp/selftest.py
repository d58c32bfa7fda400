"""``gpumlp selftest`` / ``python -m gpumlp.selftest``: check a GPU install end to end.

The checks live with the CUDA backend (:mod:`gpumlp.backends.cuda.selftest`).
"""

import sys

from .backends.cuda.selftest import *  # noqa: F401,F403
from .backends.cuda.selftest import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
