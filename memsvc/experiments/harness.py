"""Shared harness of the Retention Layer experiments.

Every experiment module has ``run(out_dir, full=False, seed=0) -> dict`` and writes
``<name>.json`` (the full result, with the command that made it), ``<name>.md`` (a
Markdown table) and ``<name>.png`` (a plot) into ``out_dir`` through :func:`save`.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

DEFAULT_OUT = Path("docs/experiments")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python and torch; returns a generator for the data stream."""
    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_threads() -> None:
    """One thread unless MEMSVC_EXP_THREADS says otherwise: these machines are shared."""
    torch.set_num_threads(int(os.environ.get("MEMSVC_EXP_THREADS", "1")))


def budget(n: int) -> int:
    """n scaled by MEMSVC_EXP_SMOKE (default 1): smoke runs shrink steps and evaluations."""
    return max(2, round(n * float(os.environ.get("MEMSVC_EXP_SMOKE", "1"))))


def device() -> torch.device:
    """CUDA when MEMSVC_EXP_DEVICE=cuda and available, else CPU (the default)."""
    want = os.environ.get("MEMSVC_EXP_DEVICE", "cpu")
    return torch.device("cuda" if want == "cuda" and torch.cuda.is_available() else "cpu")


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    """``with timer() as t: ...`` then ``t["s"]`` holds the wall seconds."""
    t: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield t
    finally:
        t["s"] = time.perf_counter() - start


def command_line(name: str, full: bool, seed: int) -> str:
    """The command that reproduces a run, as it is recorded in its results."""
    cmd = f"memsvc experiment {name}"
    if full:
        cmd += " --full"
    if seed:
        cmd += f" --seed {seed}"
    return cmd


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """Rows of dicts -> a GitHub Markdown table (floats to 4 significant digits)."""
    if not rows:
        return "(no rows)\n"
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))  # union, in order

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def save(
    name: str,
    out_dir: Path,
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    plot: Callable[[Any], None],
    summary: str,
    full: bool,
    seed: int,
) -> dict[str, Any]:
    """Write <name>.json, <name>.md and <name>.png; returns the result with its metadata."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-full" if full else ""
    stem = out_dir / f"{name}{suffix}"
    meta = {
        "experiment": name,
        "command": command_line(name, full, seed),
        "full": full,
        "seed": seed,
        "finished_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": str(device()),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }
    result = {**meta, **result, "rows": rows}
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    md = [
        f"# {name}{suffix}",
        "",
        f"Command: `{meta['command']}`  ",
        f"Seed {seed}, "
        f"{meta['threads']} thread(s), {meta['device']}, torch {meta['torch']}, "
        f"finished {meta['finished_utc']}.",
        "",
        summary.strip(),
        "",
        markdown_table(rows),
    ]
    stem.with_suffix(".md").write_text("\n".join(md))
    fig = plt.figure(figsize=(7, 4.5))
    plot(fig)
    fig.tight_layout()
    fig.savefig(stem.with_suffix(".png"), dpi=110)
    plt.close(fig)
    return result
