"""The shape of the code: imports run one way, and one module moves jobs.

fluxq → tasks → workers → config; the simulator stands beside them and may use only ``config``.
Every import counts, those inside functions too; a function-level import of a first-party module
is allowed only for a heavy optional part, with a ``# lazy:`` comment saying why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RANK = {"config": 0, "workers": 1, "tasks": 2, "fluxq": 3}
"""A package may import its own rank or lower, never higher."""
SIMULATOR_MAY_IMPORT = {"config", "simulator"}
PACKAGES = [*RANK, "simulator"]


def modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def first_party(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The first-party top-level packages an import statement names."""
    if isinstance(node, ast.ImportFrom):
        names = [node.module or ""] if node.level == 0 else []
    else:
        names = [alias.name for alias in node.names]
    tops = {name.split(".")[0] for name in names}
    return sorted(tops & set(PACKAGES))


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, package, inside a function) for every first-party import of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.extend((child.lineno, top, in_function) for top in first_party(child))
            visit(child, nested)

    visit(tree, False)
    return found


def package_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    own = package_of(path)
    for line, top, _ in imports(path):
        where = f"{path.relative_to(ROOT)}:{line} imports {top}"
        if own == "simulator":
            assert top in SIMULATOR_MAY_IMPORT, where
        else:
            assert top != "simulator" or own == "fluxq", where
            assert top == "simulator" or RANK[top] <= RANK[own], where


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_level_import_dodges_a_cycle(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    for line, top, in_function in imports(path):
        if in_function:
            assert "# lazy:" in lines[line - 1], f"{path.relative_to(ROOT)}:{line} imports {top}"


def test_the_layer_check_sees_a_violation() -> None:
    bad = ast.parse("def f():\n    from tasks import lifecycle\n")
    node = bad.body[0].body[0]  # type: ignore[attr-defined]
    assert first_party(node) == ["tasks"]


def test_only_the_lifecycle_module_moves_a_job() -> None:
    callers = sorted(
        str(path.relative_to(ROOT))
        for path in modules()
        if "store.transition(" in path.read_text(encoding="utf-8")
    )
    assert callers == ["tasks/lifecycle.py"]
