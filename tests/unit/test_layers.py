"""The shape of the code: imports run one way, and one module moves jobs.

fluxq → fluxq.tasks → fluxq.workers → fluxq.config; fluxq.simulator stands beside them and may
use only ``fluxq.config``. Nothing imports ``config``, ``tasks``, ``workers`` or ``simulator`` as a
top-level name: those are the user's names (their folders here are reached as ``fluxq.*``).
Every import counts, those inside functions too; a function-level import of a first-party module
is allowed only for a heavy optional part, with a ``# lazy:`` comment saying why.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RANK = {"config": 0, "workers": 1, "tasks": 2, "fluxq": 3}
"""A layer may import its own rank or lower, never higher."""
SIMULATOR_MAY_IMPORT = {"config", "simulator"}
LAYERS = [*RANK, "simulator"]
FOLDERS = {"config": "config", "workers": "workers", "tasks": "tasks", "fluxq": "fluxq"}
"""The real folders; fluxq/config, fluxq/tasks and fluxq/workers are links to the first three."""


def modules() -> list[Path]:
    found = {
        p
        for folder in FOLDERS.values()
        for p in (ROOT / folder).rglob("*.py")
        if not any((ROOT / folder / q).is_symlink() for q in p.relative_to(ROOT / folder).parents)
    }
    return sorted(found)


def layer_of_name(name: str) -> str | None:
    """The layer a dotted module name belongs to; "top-level" for a bare user-space name."""
    parts = name.split(".")
    if parts[0] in ("config", "workers", "tasks", "simulator"):
        return "top-level"
    if parts[0] != "fluxq":
        return None
    if len(parts) > 1 and parts[1] in SIMULATOR_MAY_IMPORT | {"workers", "tasks"}:
        return parts[1]
    return "fluxq"


def first_party(node: ast.Import | ast.ImportFrom) -> list[str]:
    """The first-party layers an import statement names ("top-level" for a bare name)."""
    if isinstance(node, ast.ImportFrom):
        names = [node.module or ""] if node.level == 0 else []
    else:
        names = [alias.name for alias in node.names]
    return sorted({layer for name in names if (layer := layer_of_name(name)) is not None})


def imports(path: Path) -> list[tuple[range, str, bool]]:
    """(lines, layer, inside a function) for every first-party import of a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[range, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import | ast.ImportFrom):
                lines = range(child.lineno, (child.end_lineno or child.lineno) + 1)
                found.extend((lines, top, in_function) for top in first_party(child))
            visit(child, nested)

    visit(tree, False)
    return found


def package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).parts
    return "simulator" if parts[:2] == ("fluxq", "simulator") else parts[0]


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    own = package_of(path)
    for lines, top, _ in imports(path):
        where = f"{path.relative_to(ROOT)}:{lines.start} imports {top}"
        assert top != "top-level", f"{where}: import it as fluxq.*"
        if own == "simulator":
            assert top in SIMULATOR_MAY_IMPORT, where
        else:
            assert top != "simulator" or own == "fluxq", where
            assert top == "simulator" or RANK[top] <= RANK[own], where


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_function_level_import_dodges_a_cycle(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    for at, top, in_function in imports(path):
        if in_function:
            statement = "\n".join(lines[n - 1] for n in at)
            assert "# lazy:" in statement, f"{path.relative_to(ROOT)}:{at.start} imports {top}"


def test_the_layer_check_sees_a_violation() -> None:
    bad = ast.parse("def f():\n    from fluxq.tasks import lifecycle\n")
    node = bad.body[0].body[0]  # type: ignore[attr-defined]
    assert first_party(node) == ["tasks"]
    bare = ast.parse("import config.settings\nfrom fluxq.simulator import app\n")
    assert first_party(bare.body[0]) == ["top-level"]  # type: ignore[arg-type]
    assert first_party(bare.body[1]) == ["simulator"]  # type: ignore[arg-type]


def test_only_the_lifecycle_module_moves_a_job() -> None:
    callers = sorted(
        str(path.relative_to(ROOT))
        for path in modules()
        if "store.transition(" in path.read_text(encoding="utf-8")
    )
    assert callers == ["tasks/lifecycle.py"]
