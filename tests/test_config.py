"""Environment variables: parsed once in gpumlp/config.py, bad values refused by name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from gpumlp import cli, config
from gpumlp.backends.numpy_backend import NumpyBackend
from gpumlp.backends.threads import default_threads

ROOT = Path(__file__).resolve().parents[1]

BAD_VALUES = [
    ("GPUMLP_NUM_THREADS", "garbage", "a whole number of 1 or more"),
    ("GPUMLP_NUM_THREADS", "-3", "a whole number of 1 or more"),
    ("GPUMLP_NUM_THREADS", "0", "a whole number of 1 or more"),
    ("GPUMLP_NUM_THREADS", "2.5", "a whole number of 1 or more"),
    ("GPUMLP_NUM_THREADS", "+2", "a whole number of 1 or more"),
    ("GPUMLP_IDLE_GRAPHS", "many", "a whole number of 0 or more"),
    ("GPUMLP_IDLE_GRAPHS", "-1", "a whole number of 0 or more"),
    ("GPUMLP_GEMM", "cuda", "allowed: auto, fused, cublas"),
    ("GPUMLP_GEMM", "fused,cublas", "allowed: auto, fused, cublas"),
    ("GPUMLP_CPU_KERNELS", "fast", "allowed: auto, on, off"),
    ("GPUMLP_KERNELS", "maybe", "on (on/1/true/yes) or off (off/0/false/no)"),
    ("GPUMLP_KERNELS", "2", "on (on/1/true/yes) or off (off/0/false/no)"),
]


@pytest.mark.parametrize("name, value, allowed", BAD_VALUES)
def test_bad_value_names_variable_value_and_what_is_allowed(monkeypatch, name, value, allowed):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as info:
        config.get(name)
    message = str(info.value)
    assert f"{name}={value!r}" in message
    assert allowed in message


def test_a_file_is_not_a_data_directory(monkeypatch, tmp_path):
    not_a_dir = tmp_path / "mnist.npz"
    not_a_dir.write_bytes(b"")
    monkeypatch.setenv("GPUMLP_DATA", str(not_a_dir))
    with pytest.raises(ValueError, match=re.escape(f"GPUMLP_DATA={str(not_a_dir)!r}") +
                       ".*a directory"):
        config.get("GPUMLP_DATA")
    monkeypatch.setenv("GPUMLP_DATA", str(tmp_path / "not-yet"))
    config.reset()
    assert config.get("GPUMLP_DATA") == tmp_path / "not-yet"


def test_thread_count_garbage_is_refused_not_all_cores(monkeypatch):
    """These values used to mean "every core" without a word."""
    for value in ("garbage", "-3", "0"):
        monkeypatch.setenv("GPUMLP_NUM_THREADS", value)
        config.reset()
        with pytest.raises(ValueError, match="GPUMLP_NUM_THREADS"):
            NumpyBackend()
        with pytest.raises(ValueError, match="GPUMLP_NUM_THREADS"):
            default_threads()


def test_good_values_and_defaults(monkeypatch):
    for name in ("GPUMLP_GEMM", "GPUMLP_KERNELS", "GPUMLP_IDLE_GRAPHS", "GPUMLP_NUM_THREADS",
                 "GPUMLP_DATA"):
        monkeypatch.delenv(name, raising=False)
    assert config.get("GPUMLP_GEMM") == "auto"
    assert config.get("GPUMLP_KERNELS") is True
    assert config.get("GPUMLP_IDLE_GRAPHS") == config.DEFAULT_IDLE_GRAPHS
    assert config.get("GPUMLP_NUM_THREADS") is None
    assert config.get("GPUMLP_DATA") is None
    monkeypatch.setenv("GPUMLP_GEMM", " Fused ")
    monkeypatch.setenv("GPUMLP_KERNELS", "OFF")
    monkeypatch.setenv("GPUMLP_IDLE_GRAPHS", "0")
    monkeypatch.setenv("GPUMLP_NUM_THREADS", "3")
    monkeypatch.setenv("GPUMLP_DATA", "")  # empty is unset
    config.reset()
    assert config.get("GPUMLP_GEMM") == "fused"
    assert config.get("GPUMLP_KERNELS") is False
    assert config.get("GPUMLP_IDLE_GRAPHS") == 0
    assert config.get("GPUMLP_NUM_THREADS") == 3
    assert config.get("GPUMLP_DATA") is None
    assert NumpyBackend().chunks.threads == 3


def test_values_are_kept_until_reset(monkeypatch):
    monkeypatch.setenv("GPUMLP_GEMM", "fused")
    assert config.get("GPUMLP_GEMM") == "fused"
    monkeypatch.setenv("GPUMLP_GEMM", "not-a-route")
    assert config.get("GPUMLP_GEMM") == "fused"  # parsed once
    config.reset()
    with pytest.raises(ValueError, match="not-a-route"):
        config.get("GPUMLP_GEMM")


def test_other_programs_variables_follow_their_rules(monkeypatch, tmp_path):
    monkeypatch.delenv("GPUMLP_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # one count per nesting level
    assert config.get("OMP_NUM_THREADS") == 4
    assert default_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")  # OpenMP ignores it; so do we
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # invalid by the XDG spec
    config.reset()
    assert config.get("OMP_NUM_THREADS") is None
    assert config.get("XDG_CACHE_HOME") is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    config.reset()
    assert config.get("XDG_CACHE_HOME") == tmp_path


def test_unknown_name_is_a_key_error():
    with pytest.raises(KeyError, match="GPUMLP_GEMMS.*GPUMLP_GEMM"):
        config.get("GPUMLP_GEMMS")


def test_cli_reports_a_bad_variable_as_one_line(monkeypatch, capsys):
    monkeypatch.setenv("GPUMLP_NUM_THREADS", "garbage")
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("gpumlp info: error: environment variable "
                          "GPUMLP_NUM_THREADS='garbage' is not valid; allowed: a whole number "
                          "of 1 or more")


def test_nothing_else_reads_the_environment():
    """Every read goes through config.get, so every variable is validated there."""
    readers = []
    for path in sorted((ROOT / "gpumlp").rglob("*.py")):
        if path.name == "config.py" and path.parent.name == "gpumlp":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            name = (node.attr if isinstance(node, ast.Attribute) else
                    node.id if isinstance(node, ast.Name) else None)
            if name in ("environ", "getenv", "environb", "getenvb"):
                readers.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert readers == []


def test_readme_documents_every_variable():
    """Adding a variable is one entry in config.VARIABLES plus its README row."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([A-Z_]+)` \|", section, flags=re.MULTILINE)
    assert rows == [variable.name for variable in config.VARIABLES]
