#!/usr/bin/env bash
# The checks that need a CUDA device, in one run, from a source tree (no install needed):
#
#   OUT=/some/folder benchmarks/device_checks.sh
#
# 1. environment (nvidia-smi, CuPy's configuration, gpumlp info)
# 2. gpumlp selftest (full protocol shapes)            -> selftest.log, selftest.json
# 3. pytest -m gpu                                      -> pytest-gpu.log, pytest-gpu.xml
# 4. compute-sanitizer memcheck, racecheck, synccheck over `gpumlp selftest --quick`
#                                                       -> sanitizer-<tool>.log
# 5. with BENCH=1 (the default; BENCH=0 skips them) the benchmarks, results in $OUT:
#    gpumlp bench --kernels (fused GEMM vs cuBLAS + epilogue per layer shape, SGEMM 4096^3),
#    gpumlp bench --full --peers torch (graph vs eager, PyTorch eager and torch.compile) and
#    gpumlp bench --tta --backends cupy --peers torch (time to 89.5 % on Fashion-MNIST)
# and a summary, device_checks.json: each step's exit status and seconds, the commit, the
# device.  Every step runs even when an earlier one fails; the script exits 1 if any failed,
# 2 if there is no CuPy or no device here.  Per-step time limits (seconds) can be changed with
# SELFTEST_TIMEOUT, PYTEST_TIMEOUT, SANITIZER_TIMEOUT and BENCH_TIMEOUT; PYTHON picks the
# interpreter.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder that receives the logs}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SELFTEST_TIMEOUT="${SELFTEST_TIMEOUT:-300}"
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-600}"
SANITIZER_TIMEOUT="${SANITIZER_TIMEOUT:-900}"
BENCH="${BENCH:-1}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-600}"
STEPS="$OUT/steps.tsv"
: > "$STEPS"

step() {  # step NAME TIMEOUT COMMAND...: run, log, record status and seconds
    local name="$1" limit="$2"
    shift 2
    local start end status
    start=$(date +%s)
    echo "== $name: $*" | tee -a "$OUT/device_checks.log"
    timeout --kill-after=30 "$limit" "$@" > "$OUT/$name.log" 2>&1
    status=$?
    end=$(date +%s)
    printf '%s\t%s\t%s\n' "$name" "$status" "$((end - start))" >> "$STEPS"
    echo "   exit $status after $((end - start)) s (log: $name.log)" | tee -a "$OUT/device_checks.log"
    return 0
}

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    git rev-parse HEAD 2>/dev/null || echo "commit unknown"
    git status --porcelain -- gpumlp kernels 2>/dev/null | head -20
    nvidia-smi 2>&1 || echo "nvidia-smi not found"
    "$PYTHON" -c "import cupy; cupy.show_config()" 2>&1
    "$PYTHON" -m gpumlp.cli info 2>&1
} > "$OUT/environment.log"

if ! "$PYTHON" -c "import sys, gpumlp.selftest as s; sys.exit(0 if s.unavailable_reason() is None else 2)" \
        > "$OUT/unavailable.log" 2>&1; then
    "$PYTHON" -c "import gpumlp.selftest as s; print(s.unavailable_reason())" >> "$OUT/unavailable.log" 2>&1
    echo "no CuPy or no CUDA device here: see $OUT/unavailable.log" | tee -a "$OUT/device_checks.log"
    exit 2
fi

step selftest "$SELFTEST_TIMEOUT" "$PYTHON" -m gpumlp.selftest --json "$OUT/selftest.json"
step pytest-gpu "$PYTEST_TIMEOUT" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider -rs \
    --junitxml="$OUT/pytest-gpu.xml" tests
if command -v compute-sanitizer > /dev/null 2>&1; then
    for tool in memcheck racecheck synccheck; do
        step "sanitizer-$tool" "$SANITIZER_TIMEOUT" compute-sanitizer --tool "$tool" \
            --error-exitcode 99 "$PYTHON" -m gpumlp.selftest --quick \
            --json "$OUT/selftest-$tool.json"
    done
else
    echo "compute-sanitizer not found (it ships with the CUDA toolkit)" | tee -a "$OUT/device_checks.log"
    printf 'sanitizer\tmissing\t0\n' >> "$STEPS"
fi
if [ "$BENCH" = 1 ]; then
    step bench-kernels "$BENCH_TIMEOUT" "$PYTHON" -m gpumlp.cli bench --kernels --out "$OUT"
    step bench-full "$BENCH_TIMEOUT" "$PYTHON" -m gpumlp.cli bench --full --peers torch --out "$OUT"
    step bench-tta "$BENCH_TIMEOUT" "$PYTHON" -m gpumlp.cli bench --tta --backends cupy \
        --peers torch --out "$OUT"
fi

"$PYTHON" - "$OUT" <<'PY'
import json, subprocess, sys
from pathlib import Path

out = Path(sys.argv[1])
steps = []
for line in (out / "steps.tsv").read_text().splitlines():
    name, status, seconds = line.split("\t")
    steps.append({"step": name, "exit_status": status, "seconds": int(seconds)})
def run(*command):
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
selftest = out / "selftest.json"
summary = {
    "commit": run("git", "rev-parse", "HEAD"),
    "device": run("nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                  "--format=csv,noheader"),
    "steps": steps,
    "selftest_passed": json.loads(selftest.read_text()).get("passed") if selftest.exists() else None,
    "all_passed": all(s["exit_status"] == "0" for s in steps),
}
partial = out / "device_checks.json.partial"
partial.write_text(json.dumps(summary, indent=2) + "\n")
partial.replace(out / "device_checks.json")
print(json.dumps(summary, indent=2))
sys.exit(0 if summary["all_passed"] else 1)
PY
