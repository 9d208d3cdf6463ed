"""``python -m memsvc.experiments NAME [--full] [--seed N] [--out-dir DIR]``."""

from __future__ import annotations

import sys

import typer

from memsvc.experiments import load

if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python -m memsvc.experiments NAME [--full] [--seed N]")
    name = sys.argv.pop(1)
    typer.run(load(name).cli)
