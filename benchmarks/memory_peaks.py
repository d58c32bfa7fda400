"""Peak memory of two operations whose memory must not grow with the data: loading a valid
model (against its parameter bytes) and predicting on a memory-mapped array of 1,000,000 rows
(against the output).

Each measurement runs in a fresh interpreter: the resident peak (VmHWM, reset after the
imports through /proc/self/clear_refs) and the traced peak of NumPy's allocations
(tracemalloc). A memory map's pages are the file's (page cache), counted in VmHWM but not
allocated by gpumlp: the traced peak is the figure for prediction. Linux only.

    PYTHONPATH=. python benchmarks/memory_peaks.py load      # a 95 MiB model (1000-4500-4500-10)
    PYTHONPATH=. python benchmarks/memory_peaks.py predict   # 1,000,000 x 784 float32 memmap
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

CHILD = textwrap.dedent("""
    import json, sys, time, tracemalloc, warnings
    import numpy as np
    import gpumlp
    warnings.simplefilter("ignore")
    what, path = sys.argv[1], sys.argv[2]

    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(l.split()[1]) * 1024 for l in lines if l.startswith(field + ":"))

    if what == "predict":
        n, d = 1_000_000, 784
        rng = np.random.default_rng(0)
        model = gpumlp.MLPClassifier(max_iter=1, backend="numpy", random_state=0).fit(
            rng.normal(size=(200, d)).astype(np.float32), np.arange(200) % 10)
        X = np.memmap(path, dtype=np.float32, mode="r", shape=(n, d))
    gpumlp.get_backend("numpy")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")
    before = status("VmRSS")
    tracemalloc.start()
    start = time.perf_counter()
    if what == "load":
        model = gpumlp.load(path)
        reference = model.network_.n_params * model.network_.dtype.itemsize
    else:
        reference = model.predict_proba(X).nbytes
    seconds = time.perf_counter() - start
    print(json.dumps({"operation": what, "reference_bytes": reference,
                      "traced_peak_bytes": tracemalloc.get_traced_memory()[1],
                      "resident_peak_growth_bytes": status("VmHWM") - before,
                      "seconds": round(seconds, 3)}))
""")


def run_child(what: str, path: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         *filter(None, [os.environ.get("PYTHONPATH")])]))
    out = subprocess.run([sys.executable, "-c", CHILD, what, path], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(what: str) -> None:
    with tempfile.TemporaryDirectory() as folder:
        if what == "load":
            import warnings

            import numpy as np

            import gpumlp

            warnings.simplefilter("ignore")  # one epoch is meant: only the size matters
            X = np.random.default_rng(0).normal(size=(20, 1000)).astype(np.float32)
            path = os.path.join(folder, "model.npz")
            gpumlp.MLPClassifier((4500, 4500), max_iter=1, backend="numpy", random_state=0,
                                 batch_size=20).fit(X, np.arange(20) % 10).save(path)
        else:
            path = os.path.join(folder, "rows.f32")
            with open(path, "wb") as handle:
                handle.truncate(1_000_000 * 784 * 4)  # sparse: reads as zeros
        result = run_child(what, path)
    result["traced_peak_ratio"] = round(result["traced_peak_bytes"]
                                        / result["reference_bytes"], 3)
    result["resident_peak_ratio"] = round(result["resident_peak_growth_bytes"]
                                          / result["reference_bytes"], 3)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("load", "predict"):
        sys.exit("usage: python benchmarks/memory_peaks.py load|predict")
    main(sys.argv[1])
