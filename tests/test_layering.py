"""DESIGN.md's import rules, checked on the source: retnet_core imports neither storage nor
memsvc, storage never imports memsvc, and retnet_core never imports triton at module level
(the CPU path must not need it): only retnet_core/fla_ops.py, loaded lazily on CUDA, may."""

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


def test_only_the_cuda_module_imports_triton_and_nobody_imports_it_eagerly() -> None:
    """fla/triton live in retnet_core/fla_ops.py alone, which is imported lazily on CUDA."""
    offenders = []
    for f in sorted((ROOT / "retnet_core").rglob("*.py")):
        if f.name == "fla_ops.py":
            continue
        eager = imported_modules(f, top_level_only=True)
        if eager & {"triton", "fla"} or "retnet_core.fla_ops" in _from_imports(f):
            offenders.append(str(f.relative_to(ROOT)))
    assert offenders == []


def _from_imports(path: Path) -> set[str]:
    """Dotted ``module`` and ``module.name`` strings of module-level from-imports."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from memsvc.app import create_app\n")
    assert "memsvc" in imported_modules(bad)
    assert "memsvc" not in imported_modules(bad, top_level_only=True)


def test_model_files_never_import_training() -> None:
    """retnet_core/training may import the model; the model never imports training."""
    offenders = []
    for f in sorted((ROOT / "retnet_core").glob("*.py")):
        modules = _all_from_imports(f)
        if any(m.split(".")[:2] == ["retnet_core", "training"] for m in modules):
            offenders.append(str(f.relative_to(ROOT)))
    assert offenders == []


def _all_from_imports(path: Path) -> set[str]:
    """Dotted module names of every import in a file, at any depth."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return out


def test_import_retnet_core_loads_no_training_corpus_or_plotting() -> None:
    """A fresh interpreter: `import retnet_core` loads no training, chitchat or matplotlib."""
    import subprocess
    import sys

    probe = (
        "import sys, retnet_core\n"
        "bad = [m for m in sys.modules if m.startswith(('retnet_core.training', "
        "'chitchat_dataset', 'matplotlib'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""


def _module_graph(package: str) -> dict[str, set[str]]:
    """{module: modules of the same package it imports (at any depth)} from the source."""
    graph: dict[str, set[str]] = {}
    for f in sorted((ROOT / package).rglob("*.py")):
        parts = f.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[name] = {m for m in _all_from_imports(f) if m.startswith(package + ".")}
    return {m: {d for d in deps if d in graph} for m, deps in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (each reported once, from its first module)."""
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        for dep in sorted(graph[node]):
            if dep in path:
                found.append(path[path.index(dep) :] + [dep])
            elif dep not in done:
                visit(dep, path + [dep])
        done.add(node)

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return found


def test_retnet_core_modules_have_no_import_cycles() -> None:
    """checkpoint imports model, never the reverse; no module of the model imports back."""
    graph = _module_graph("retnet_core")
    assert "retnet_core.model" in graph["retnet_core.checkpoint"]
    assert _cycles(graph) == []


def test_cycle_finder_sees_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def test_only_the_http_layer_imports_http() -> None:
    """fastapi, starlette and memsvc.api are for memsvc/api/ and memsvc/app.py alone."""
    offenders = {}
    for f in sorted((ROOT / "memsvc").rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        if rel.startswith("memsvc/api/") or rel == "memsvc/app.py":
            continue
        modules = _all_from_imports(f)
        bad = sorted(
            m
            for m in modules
            if m.split(".")[0] in ("fastapi", "starlette") or m.startswith("memsvc.api")
        )
        if bad:
            offenders[rel] = bad
    assert offenders == {}


#: the one storage seam of memsvc (benchmarks and experiments set up data directly): the
#: store adapter, split into ``memsvc/store_adapter*.py`` files (the adapter and its mixins
#: for memories and keyed items, one class: ``StorageStore``) so each file stays readable,
#: and the container that builds it
STORAGE_SEAM = {"memsvc/store_adapter.py", "memsvc/services/container.py"}


def _in_seam(rel: str) -> bool:
    return rel in STORAGE_SEAM or (rel.startswith("memsvc/store_adapter_") and "/" not in rel[7:])


def test_only_the_store_adapter_and_the_container_import_storage() -> None:
    offenders = []
    for f in sorted((ROOT / "memsvc").rglob("*.py")):
        rel = f.relative_to(ROOT)
        if _in_seam(str(rel)) or rel.parts[1] in ("bench", "experiments"):
            continue
        if "storage" in imported_modules(f):
            offenders.append(str(rel))
    assert offenders == []
