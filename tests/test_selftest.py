"""``gpumlp selftest``: one line and exit status 2 without a device; the whole self-test run
on the emulated CuPy (small shapes) passes, and a planted mismatch makes it fail."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from gpumlp import selftest
from gpumlp.cli import main as cli_main

SMALL = {"tiny": [12, 16, 8, 3]}


def test_without_a_device_one_line_and_exit_status_2(monkeypatch, capsys):
    monkeypatch.setattr(selftest, "unavailable_reason",
                        lambda: "CuPy found no usable CUDA driver or device\n(details)")
    assert cli_main(["selftest"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert lines == ["gpumlp selftest: cannot run here: CuPy found no usable CUDA driver or "
                     "device (details)"]


@pytest.mark.skipif(selftest.unavailable_reason() is None, reason="a CUDA device is present")
def test_the_installed_command_exits_2_on_this_machine():
    result = subprocess.run([sys.executable, "-m", "gpumlp.cli", "selftest"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result
    assert result.stdout == "" and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("gpumlp selftest: cannot run here: ")


@pytest.mark.kernels
def test_selftest_passes_on_the_emulated_gpu(emulated_gpu, tmp_path, capsys, monkeypatch):
    from gpumlp.backends.cuda import routes as capture_paths

    from conftest import load_support

    api = load_support("emulated_cublas").EmulatedBlas(emulated_gpu[1])
    monkeypatch.setattr(capture_paths, "new_api", lambda: api)
    path = tmp_path / "selftest.json"
    assert selftest.run(shapes=SMALL, batch=16, json_path=str(path)) == 0
    out = capsys.readouterr().out
    assert "MISMATCH" not in out and "checks passed" in out
    report = json.loads(path.read_text())
    assert report["passed"] is True
    names = {check["name"] for check in report["checks"]}
    assert {"affine_act (relu)", "backprop_hidden (relu)", "weight_grads (dw)",
            "softmax_xent (loss)", "adam_step", "sgd_step", "gather_rows",
            "graph vs eager (weights)", "graph replays allocate nothing"} <= names
    paths = {(c["path"], c["dtype"]) for c in report["checks"] if c["name"] == "affine_act (relu)"}
    assert paths == {(p, d) for p in ("fused", "cublas") for d in ("float32", "float64")}
    assert report["environment"]["device_name"] == "Emulated GPU (CPU harness)"
    # The captured steps ran on cuBLAS and cuBLASLt too, not only on the fused GEMMs.
    graphs = {(c["path"], c["dropout"]) for c in report["checks"]
              if c["name"] == "graph vs eager (weights)"}
    assert graphs == {("fused", "keep=0.9"), ("cublas", "keep=0.9"), ("cublas", "keep=1")}
    assert [c["passed"] for c in report["checks"]
            if c["name"] == "captured GEMMs on cuBLAS(Lt)"] == [True, True]
    for call in ("cublasSgemm_v2", "cublasLtMatmul[bgrada]", "cublasLtMatmul[relu_aux_bias]",
                 "cublasLtMatmul[drelu]"):
        assert api.calls[call] > 0, (call, api.calls)


@pytest.mark.kernels
def test_a_wrong_result_is_a_mismatch(emulated_gpu, monkeypatch, capsys):
    from gpumlp.backends.cuda.backend import CupyBackend

    original = CupyBackend.softmax

    def off_by_a_little(self, z, out):
        original(self, z, out)
        out *= out.dtype.type(1.001)
        return out

    monkeypatch.setattr(CupyBackend, "softmax", off_by_a_little)
    assert selftest.run(shapes=SMALL, batch=16) == 1
    out = capsys.readouterr().out
    assert any(line.startswith("softmax ") and "MISMATCH" in line for line in out.splitlines())


def test_atomic_sum_tolerance_grows_with_blocks():
    small = selftest.atomic_sum_tolerance(np.float32, "softmax_xent", (16, 10))
    large = selftest.atomic_sum_tolerance(np.float32, "sigmoid_bce", (8192, 784))
    assert small == selftest.tolerance(np.float32) < large < 1e-3
