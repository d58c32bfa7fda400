"""``python -m gpumlp``: the ``gpumlp`` command, for a source tree that is not installed."""

import sys

from .cli import main

sys.exit(main())
