"""Retention Layer experiments: ``memsvc experiment NAME [--full] [--seed N]``.

Each module has ``run(out_dir, full=False, seed=0) -> dict`` and a typer-compatible
``cli(out_dir, full, seed)``; results (JSON, Markdown, PNG) go to docs/experiments/.
``python -m memsvc.experiments NAME ...`` runs one without the main CLI.
"""

from __future__ import annotations

import importlib
from types import ModuleType

EXPERIMENTS: dict[str, str] = {
    "sanity": "memsvc.experiments.sanity",
    "write-modes": "memsvc.experiments.write_modes",
    "cross-session": "memsvc.experiments.cross_session",
    "drift": "memsvc.experiments.drift",
    "scale": "memsvc.experiments.scale",
    "frozen": "memsvc.experiments.frozen",
}


def load(name: str) -> ModuleType:
    """The module of experiment ``name`` (imported only when asked for: torch is slow)."""
    if name not in EXPERIMENTS:
        raise KeyError(f"unknown experiment {name!r}; choose from {sorted(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name])
