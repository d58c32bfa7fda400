"""Every ```python block of README.md (and docs/*.md) runs as written, on its own.

Each block is saved as a script and run by a fresh interpreter in an empty folder, so a
block that leans on an earlier one, on a file it did not write, or on a name it did not
define fails here as it would for a reader.  A block may declare what it needs in a comment
line of its own, ``# needs: gpu``, ``# needs: fashion-mnist`` (any dataset name of
``gpumlp.data``) or ``# needs: <module>`` (e.g. ``dask.distributed``); without it the
block is skipped and the reason says which.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
NEEDS = re.compile(r"^\s*#\s*needs:\s*(.+?)\s*$", re.MULTILINE)
#: Seconds one example may take (they train a few epochs at most).
TIMEOUT_S = 600


def python_blocks(path: Path, root: Path = ROOT) -> list[tuple[str, str]]:
    """``(id, code)`` of each python block in ``path``; the id is ``FILE:LINE``."""
    text = path.read_text(encoding="utf-8")
    return [(f"{path.relative_to(root)}:{text.count(chr(10), 0, m.start()) + 1}", m.group(1))
            for m in BLOCK.finditer(text)]


EXAMPLES = [block for path in DOCUMENTS for block in python_blocks(path)]


def missing(need: str) -> str | None:
    """Why ``need`` is not met here, or ``None``."""
    if need == "gpu":
        from gpumlp.backends import available_backends

        reason = available_backends().get("cupy")
        return None if reason is None else f"needs a CUDA GPU: {reason}"
    from gpumlp.data import DATASETS, find_datasets

    if need in DATASETS:
        return None if find_datasets().get(need) else (
            f"needs the {need} dataset (GPUMLP_DATA, ~/.cache/gpumlp or "
            f"/usr/share/datasets/{need}; nothing is downloaded in the tests)")
    try:
        found = importlib.util.find_spec(need) is not None
    except ModuleNotFoundError:  # its parent package is missing
        found = False
    return None if found else f"needs the Python module {need!r}, not installed"


def test_the_readme_has_examples_and_every_need_is_known():
    assert len(EXAMPLES) >= 3, [ident for ident, _ in EXAMPLES]
    from gpumlp.data import DATASETS

    for ident, code in EXAMPLES:
        for need in NEEDS.findall(code):
            assert need == "gpu" or need in DATASETS or re.fullmatch(r"[\w.]+", need), \
                f"{ident}: unknown need {need!r}"


def test_the_extraction_finds_blocks_and_their_needs(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n```python\nx = 1\n```\n```bash\nls\n```\n"
                    "```python\n# needs: gpu\nimport cupy\n```\n")
    blocks = python_blocks(page, root=tmp_path)
    assert blocks == [("page.md:2", "x = 1\n"), ("page.md:8", "# needs: gpu\nimport cupy\n")]
    assert NEEDS.findall(blocks[1][1]) == ["gpu"]


@pytest.mark.parametrize("code", [code for _, code in EXAMPLES],
                         ids=[ident for ident, _ in EXAMPLES])
def test_example_runs_on_its_own(code, tmp_path):
    for need in NEEDS.findall(code):
        reason = missing(need)
        if reason is not None:
            pytest.skip(reason)
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, f"exit status {done.returncode}\n{done.stderr[-3000:]}"
