"""The package's shape: imports run one way between floors, functions stay short, public
signatures are typed. These read the source (``ast``); nothing is imported."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "xsam"

FLOORS = {
    "config": 0,
    "processing": 1,
    "tokens": 1,
    "modeling": 2,
    "tasks": 2,
    "data": 2,
    "losses": 2,
    "inference": 3,
    "train": 3,
    "eval": 3,
    "convert": 3,
    "distributed": 2,  # ends multi-process runs; imports nothing of xsam
    "cli": 4,
    "demo": 4,
    "serve": 4,
    "__init__": 5,
}
"""Every top-level part of ``xsam`` and its floor: a part may import parts of lower floors only."""

SIBLING_EDGES = {("data", "tasks"), ("eval", "inference"), ("cli", "serve"), ("cli", "demo")}
"""The imports allowed between parts of one floor (each pair runs one way only)."""


def _part(module: str) -> str:
    """``xsam.tasks.generic`` -> ``tasks``; ``xsam`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` of every import of xsam in ``path`` (whose module name is ``module``, by
    default its place in the package), lazy and TYPE_CHECKING ones included."""
    module = module or _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "xsam"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "xsam":
                found.append((node.lineno, target))
    return found


def _edges() -> list[tuple[str, str, str]]:
    """``(importing part, imported part, where)`` for every import that crosses parts."""
    edges = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _part(_module_name(path))
        for line, target in _imports(path):
            imported = _part(target)
            if imported != source:
                edges.append((source, imported, f"{path.relative_to(PACKAGE.parent)}:{line}"))
    return edges


def test_every_part_has_a_floor():
    parts = {_part(_module_name(path)) for path in PACKAGE.rglob("*.py")}
    assert parts <= set(FLOORS), f"give these parts a floor in FLOORS: {sorted(parts - set(FLOORS))}"


def test_imports_run_down_the_floors():
    wrong = [
        f"{where}: {source} (floor {FLOORS[source]}) imports {imported} (floor {FLOORS[imported]})"
        for source, imported, where in _edges()
        if FLOORS[imported] > FLOORS[source]
        or (FLOORS[imported] == FLOORS[source] and (source, imported) not in SIBLING_EDGES)
    ]
    assert not wrong, "\n".join(wrong)


def test_the_ground_floor_imports_only_the_config():
    ground = {part for part, floor in FLOORS.items() if floor <= 1}
    wrong = [
        f"{where}: {source} imports {imported}" for source, imported, where in _edges() if source in ground
    ]
    assert all(imported == "config" for source, imported, _ in _edges() if source in ground), wrong


def test_the_faces_sit_on_the_predictor_and_the_task_table_only():
    """The server and the demo answer through ``XSamPredictor`` and the task table, never the model's
    or the data's internals (the ground floor is everyone's)."""
    allowed = {"config", "processing", "tokens", "tasks", "inference"}
    wrong = [
        f"{where}: {source} imports {imported}"
        for source, imported, where in _edges()
        if source in ("serve", "demo") and imported not in allowed
    ]
    assert not wrong, "\n".join(wrong)


def test_command_modules_stay_short():
    """One module per verb, each under 300 lines: a verb's logic lives in the library, not the CLI."""
    long = {
        path.name: n
        for path in (PACKAGE / "cli").glob("*.py")
        if (n := len(path.read_text().splitlines())) > 300
    }
    assert not long, f"cli modules over 300 lines: {long}"


def test_test_modules_have_unique_names():
    """pytest imports test files by their base name (no packages here): two alike would not collect."""
    names = [path.name for path in (PACKAGE.parents[1] / "tests").rglob("test_*.py")]
    assert not sorted({name for name in names if names.count(name) > 1})


def test_the_walk_sees_relative_lazy_and_type_checking_imports(tmp_path):
    """The checker itself: an import written in each style is found and resolved."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..modeling.xsam import XSamModel\n"
        "def f():\n    from xsam.data import samples\n"
        "from ..inference import predictor\n"
        "from . import base\n"
    )
    targets = sorted(target for _, target in _imports(probe, "xsam.tasks.probe"))
    assert targets == ["xsam.data", "xsam.inference", "xsam.modeling.xsam", "xsam.tasks"]


# ------------------------------------------------------------------------------------------ code
def _functions() -> list[tuple[int, str]]:
    lengths = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}"
                lengths.append((node.end_lineno - node.lineno + 1, where))
    return sorted(lengths)


def test_functions_stay_short():
    """90 % of functions fit in 30 lines (docstring included) and none exceeds 100."""
    lengths = _functions()
    p90 = lengths[math.ceil(0.9 * len(lengths)) - 1][0]
    assert p90 <= 30, f"p90 function length is {p90} lines; longest: {lengths[-5:]}"
    assert lengths[-1][0] <= 100, f"longest function: {lengths[-1]}"


def _public_functions(tree: ast.Module, public: bool = True, prefix: str = ""):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.ClassDef):
            yield from _public_functions(node, public and not node.name.startswith("_"), f"{node.name}.")
        elif (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and public
            and (not node.name.startswith("_") or node.name in ("__init__", "__call__"))
        ):
            yield f"{prefix}{node.name}", node


@pytest.mark.parametrize(
    "path", sorted(PACKAGE.rglob("*.py")), ids=lambda path: str(path.relative_to(PACKAGE))
)
def test_public_signatures_are_typed(path):
    untyped = []
    for name, node in _public_functions(ast.parse(path.read_text())):
        arguments = node.args
        every = [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]
        every += [argument for argument in (arguments.vararg, arguments.kwarg) if argument is not None]
        bare = [a.arg for a in every if a.annotation is None and a.arg not in ("self", "cls")]
        if bare or node.returns is None:
            untyped.append(
                f"{name}:{node.lineno} (untyped: {bare or ''}{' return' if node.returns is None else ''})"
            )
    assert not untyped, untyped
