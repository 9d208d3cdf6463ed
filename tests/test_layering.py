"""DESIGN.md's import rules, checked on the source: retnet_core imports neither storage nor
memsvc, storage never imports memsvc, and retnet_core never imports triton at module level
(the CPU path must not need it)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path, top_level_only: bool = False) -> set[str]:
    """Top-level package names imported anywhere in a file (or only at module level)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("retnet_core", {"storage", "memsvc"}), ("storage", {"memsvc"})],
)
def test_package_does_not_import_upwards(package: str, forbidden: set[str]) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no source files"
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_modules(f) & forbidden)
        for f in files
        if imported_modules(f) & forbidden
    }
    assert offenders == {}


def test_retnet_core_never_imports_triton_at_module_level() -> None:
    offenders = [
        str(f.relative_to(ROOT))
        for f in sorted((ROOT / "retnet_core").rglob("*.py"))
        if imported_modules(f, top_level_only=True) & {"triton", "fla"}
    ]
    assert offenders == []


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from memsvc.app import create_app\n")
    assert "memsvc" in imported_modules(bad)
    assert "memsvc" not in imported_modules(bad, top_level_only=True)
