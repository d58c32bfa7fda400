"""The package's shape: layers point down, no import cycles (imports inside functions
counted), nothing outside gpumlp/backends/cuda/ imports CuPy or loads a CUDA library, and no
file cites a document outside the repository."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gpumlp"
CUDA = PACKAGE / "backends" / "cuda"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported gpumlp module, line, at module level)`` for every import in ``path``; a
    ``from package import name`` counts as an import of the submodule where ``name`` is one."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in MODULES
                       else module for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.append((target, node.lineno, id(node) in top_level))
    return found


def graph() -> dict[str, set[str]]:
    """Every gpumlp module and the gpumlp modules it imports anywhere (a package's import
    also runs its ``__init__``, which is an edge of its own)."""
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, _, _ in imports_of(path):
            edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def without_package_inits(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without the edges into a package's ``__init__`` that only a submodule's own
    import implies: ``gpumlp.backends.base`` importing ``gpumlp.backends`` (its parent) is how
    Python loads a submodule, not a dependency."""
    return {name: {t for t in targets if not name.startswith(t + ".")}
            for name, targets in edges.items()}


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles_counting_imports_inside_functions():
    assert cycles(without_package_inits(graph())) == []


def test_imports_of_own_modules_inside_functions_say_why():
    """An import of a gpumlp module inside a function has a comment on its line or the line
    above saying why it is not at module level."""
    unexplained = []
    for name, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for target, line, top in imports_of(path):
            if top:
                continue
            here, above = lines[line - 1], lines[line - 2] if line > 1 else ""
            if "#" not in here and not above.strip().startswith("#"):
                unexplained.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert unexplained == []


def test_nothing_outside_the_cuda_folder_imports_cupy_or_loads_a_cuda_library():
    offenders = []
    for name, path in MODULES.items():
        if path.is_relative_to(CUDA):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                       else [])
            if any(m.split(".")[0] in ("cupy", "cupy_backends", "cupyx", "ctypes", "nvmath",
                                       "cuda") for m in modules):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_importing_gpumlp_imports_no_cupy():
    code = ("import sys, gpumlp, gpumlp.cli, gpumlp.backends.cuda.backend, "
            "gpumlp.backends.cuda.graphs, gpumlp.selftest; sys.exit('cupy' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_the_import_contracts_hold():
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(lint).exists():
        pytest.skip("import-linter is not installed (pip install import-linter)")
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(ROOT), "PATH": str(Path(sys.executable).parent)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_file_cites_a_document_outside_the_repository():
    """The design notes the project grew from are not part of it; nothing may send a reader
    there."""
    cited = []
    for path in ROOT.rglob("*"):
        if (".git" in path.parts or not path.is_file() or path.suffix not in
                {".py", ".md", ".toml", ".cu", ".cuh", ".sh", ".txt", ".cfg", ".h", ".cpp"}):
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if "DESIGN" + ".md" in text or "design " + "guide" in text.lower():
            cited.append(str(path.relative_to(ROOT)))
    assert cited == []


def trainer_field_writes(path: Path) -> list[str]:
    """``file:line target`` for every assignment (or ``setattr``) in ``path`` to an attribute
    of a trainer or of something reached through one, such as its history.

    A name counts as a trainer where it contains "trainer" or is bound, in the same function,
    from an expression that mentions one (``history = model._trainer_.history``); an
    assignment *to* ``self.trainer`` or ``model._trainer_`` names the trainer, not a field.
    The network and optimizer a trainer drives have their own state, which callbacks may
    change (a scheduler sets ``trainer.optimizer.schedule.learning_rate``)."""

    def mentions_trainer(node: ast.AST, tainted: set[str]) -> bool:
        if any(isinstance(part, ast.Attribute) and part.attr in ("network", "optimizer")
               for part in ast.walk(node)):
            return False
        for part in ast.walk(node):
            text = (part.id if isinstance(part, ast.Name) else part.attr
                    if isinstance(part, ast.Attribute) else part.value
                    if isinstance(part, ast.Constant) and isinstance(part.value, str) else "")
            if "trainer" in text.lower() or (isinstance(part, ast.Name) and part.id in tainted):
                return True
        return False

    def targets(node: ast.AST) -> list[ast.AST]:
        if isinstance(node, ast.Assign):
            found = []
            for target in node.targets:
                found += target.elts if isinstance(target, (ast.Tuple, ast.List)) else [target]
            return found
        if isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            return [node.target]
        return []

    tree = ast.parse(path.read_text(encoding="utf-8"))
    scopes = [tree] + [node for node in ast.walk(tree)
                       if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    found = set()
    for scope in scopes:
        tainted: set[str] = set()
        for node in ast.walk(scope):  # names bound from a trainer, anywhere in the scope
            if isinstance(node, ast.Assign) and mentions_trainer(node.value, set()):
                tainted |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in ast.walk(scope):
            where = f"{path.relative_to(path.parents[1])}:{getattr(node, 'lineno', 0)}"
            for target in targets(node):
                if isinstance(target, ast.Attribute) and mentions_trainer(target.value, tainted):
                    found.add(f"{where} {ast.unparse(target)}")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "setattr" and node.args
                    and mentions_trainer(node.args[0], tainted)):
                found.add(f"{where} setattr({ast.unparse(node.args[0])}, ...)")
    return sorted(found)


def test_the_trainer_finder_finds_field_writes(tmp_path):
    source = tmp_path / "package" / "example.py"
    source.parent.mkdir()
    source.write_text("def f(model, previous):\n"
                      "    trainer = make()\n"
                      "    trainer.owner = model\n"
                      "    history = model._trainer_.history\n"
                      "    history.n_iter += 1\n"
                      "    model._trainer_ = trainer\n"
                      "    setattr(trainer, 'epochs', 3)\n"
                      "    optimizer = trainer.optimizer\n"
                      "    optimizer.schedule.learning_rate = 0.5\n"
                      "    trainer.network.params[...] = 0\n")
    assert trainer_field_writes(source) == [
        "package/example.py:3 trainer.owner", "package/example.py:5 history.n_iter",
        "package/example.py:7 setattr(trainer, ...)"]


def test_configuration_reaches_the_trainer_at_construction():
    """Nothing outside gpumlp/training.py writes a Trainer's fields (or its history's): the
    estimators give settings, a warm start's history and step count, and the validation score
    to the constructor, and the owner the callbacks see to ``fit``/``run_epoch``."""
    writes = []
    for name, path in MODULES.items():
        if name != "gpumlp.training":
            writes += trainer_field_writes(path)
    assert writes == []


def backend_name_branches(path: Path) -> list[str]:
    """``file:line`` of every comparison of a backend's ``name`` with ``"numpy"`` or
    ``"cupy"`` in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Compare):
            continue
        sides = [node.left, *node.comparators]
        names = [side for side in sides if isinstance(side, ast.Attribute)
                 and side.attr == "name" and "backend" in ast.unparse(side.value).lower()]
        kinds = [side for side in sides if isinstance(side, ast.Constant)
                 and side.value in ("numpy", "cupy")]
        if names and kinds:
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return found


def test_model_training_and_bench_code_never_branch_on_the_backend_name():
    """What differs between backends is a backend operation or attribute (``warm_up``,
    ``arrays_on_host``, the capture protocol), not an ``if backend.name == ...``."""
    backends = PACKAGE / "backends"
    branches = []
    for path in MODULES.values():
        if not path.is_relative_to(backends):
            branches += backend_name_branches(path)
    assert branches == []


def trainer_private_reads(path: Path) -> list[str]:
    """``file:line expression`` for every private attribute (``_name``, not dunder) read
    from something whose expression mentions a trainer (``trainers["on"]._graph_runner``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and "trainer" in ast.unparse(node.value).lower()):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    return found


def test_nothing_outside_the_trainer_reads_its_private_attributes():
    """The self-test replays a trainer's captured steps through ``Trainer.step_graphs``,
    not by reaching into ``_graph_runner``."""
    reads = []
    for name, path in MODULES.items():
        if name != "gpumlp.training":
            reads += trainer_private_reads(path)
    assert reads == []


def batch_gathers(path: Path) -> list[str]:
    """``file:line function`` of every function in ``path`` that gathers both halves of a
    step's batch itself: ``gather_rows(..., b.x)`` and ``gather_rows(..., b.t)`` (a call
    counts for its innermost function)."""
    outs: dict[ast.AST, set[str]] = {}

    def visit(node: ast.AST, function: ast.AST | None) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            function = node
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "gather_rows" and len(node.args) == 3
                and isinstance(node.args[2], ast.Attribute) and function is not None):
            outs.setdefault(function, set()).add(node.args[2].attr)
        for child in ast.iter_child_nodes(node):
            visit(child, function)

    visit(ast.parse(path.read_text(encoding="utf-8")), None)
    return [f"{path.relative_to(ROOT)}:{function.lineno} {function.name}"
            for function, attrs in outs.items() if {"x", "t"} <= attrs]


def test_an_eager_steps_batch_gather_is_written_once():
    """The trainer's eager loop, the eager steps ``cuda_graph="auto"`` times and the
    benchmark subject gather a batch by rows with ``TrainingStep.gather_rows``, the one
    definition (gpumlp/step.py)."""
    gathers = []
    for path in MODULES.values():
        gathers += batch_gathers(path)
    assert [where.split(":")[0] for where in gathers] == ["gpumlp/step.py"], gathers


def unused_imports(path: Path) -> list[str]:
    """``file:line name`` of every name ``path`` imports and never uses (a name exported
    in ``__all__``, used in a quoted annotation, or imported on a ``# noqa: F401`` line for
    its side effect or to check that it is installed, counts as used)."""
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            try:  # a quoted annotation such as "Trainer" or "list[Backend]"
                used |= {n.id for n in ast.walk(ast.parse(node.value, mode="eval"))
                         if isinstance(n, ast.Name)}
            except SyntaxError:
                pass
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                 for t in node.targets)):
            used |= {n.value for n in ast.walk(node.value)
                     if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or "noqa: F401" in \
                lines[node.lineno - 1]:
            continue
        for alias in node.names:
            name = (alias.asname or alias.name).split(".")[0]
            if name not in used and name != "annotations":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}")
    return found


def test_no_module_imports_a_name_it_does_not_use():
    unused = []
    for path in MODULES.values():
        if path.name != "__init__.py":  # a package's __init__ imports to re-export
            unused += unused_imports(path)
    assert unused == []
