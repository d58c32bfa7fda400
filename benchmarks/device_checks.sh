#!/usr/bin/env bash
# The checks that need a CUDA device, in priority order, within a time budget (default 480 s):
#
#   benchmarks/device_checks.sh [--budget SECONDS] [--out DIR] [--data-dir DIR] [--dry-run]
#
# selftest --quick, pytest -m "gpu and not slow", compute-sanitizer memcheck, bench --kernels,
# graph vs eager vs PyTorch throughput, then whatever else fits.  Results in --out (or $OUT):
# device_checks.json and device_checks-logs.tar.gz.  benchmarks/device_checks.py holds the
# logic and says more (`--help`).  PYTHON picks the interpreter (default python3).
set -eu
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/device_checks.py "$@"
