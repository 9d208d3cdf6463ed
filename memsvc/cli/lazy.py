"""Command groups whose subcommands are the ``cli(...)`` functions of a package's modules.

``memsvc bench X`` runs ``memsvc.bench.X.cli`` and ``memsvc experiment X`` runs
``memsvc.experiments.X.cli``. A module becomes a command as soon as it defines a
top-level ``def cli(``; nothing is registered for modules that do not exist. Listing
the commands (``memsvc bench --help``) reads the modules' source with :mod:`ast`
instead of importing them, so help stays fast; a module is imported only to run it
(or to show its own ``--help``).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

import typer
import typer.main
from typer.core import TyperCommand, TyperGroup


def command_name(module: str) -> str:
    """``cross_session`` → ``cross-session`` (typer's spelling of names)."""
    return module.replace("_", "-")


@cache
def _cli_doc(path: Path) -> str | None:
    """The docstring of ``path``'s top-level ``cli`` function, or None when it has none."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "cli":
            return ast.get_docstring(node) or ""
    return None


def package_commands(package: str) -> dict[str, tuple[str, str]]:
    """{command name: (module path, one-line help)} for modules of ``package`` with a cli."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return {}
    found = {}
    for folder in spec.submodule_search_locations:
        for path in sorted(Path(folder).glob("*.py")):
            if path.stem.startswith("_"):
                continue
            doc = _cli_doc(path)
            if doc is not None:
                summary = " ".join(doc.strip().split("\n\n")[0].split())
                found[command_name(path.stem)] = (f"{package}.{path.stem}", summary)
    return found


class LazyCommand(TyperCommand):
    """Stands for a module's ``cli`` and imports the module only when it is invoked."""

    def __init__(self, name: str, module: str, summary: str) -> None:
        super().__init__(name, help=summary, short_help=summary)
        self.module = module
        self._real: Any = None

    def real(self) -> Any:
        """The typer command built from ``module.cli`` (imported on first use)."""
        if self._real is None:
            sub = typer.Typer(add_completion=False)
            sub.command(self.name)(importlib.import_module(self.module).cli)
            self._real = typer.main.get_command(sub)
        return self._real

    def make_context(self, info_name, args, parent=None, **extra) -> Any:
        return self.real().make_context(info_name, args, parent=parent, **extra)

    def invoke(self, ctx: Any) -> Any:
        return self.real().invoke(ctx)


class LazyModuleGroup(TyperGroup):
    """A group whose commands are discovered from :attr:`package` (see module doc)."""

    package = ""

    def list_commands(self, ctx: Any) -> list[str]:
        return sorted({*super().list_commands(ctx), *package_commands(self.package)})

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        known = super().get_command(ctx, cmd_name)
        if known is not None:
            return known
        name = command_name(cmd_name)
        entry = package_commands(self.package).get(name)
        return None if entry is None else LazyCommand(name, *entry)


class BenchGroup(LazyModuleGroup):
    package = "memsvc.bench"


class ExperimentGroup(LazyModuleGroup):
    package = "memsvc.experiments"
