"""scripts/memory_compare.py puts memory bench runs side by side."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.memory_compare import MEASURES, table

ROOT = Path(__file__).resolve().parents[2]


def _summary(ok: int) -> dict:
    return {"measures": {k: {"ok": ok, "n": 70, "rate": ok / 70} for k, _ in MEASURES}}


def test_pairs_give_each_after_minus_its_before() -> None:
    runs = [("a", _summary(60)), ("b", _summary(63)), ("c", _summary(50)), ("d", _summary(48))]
    head, _, first, *_ = table(runs, pairs=True)
    assert head.endswith("| b − a | d − c |")
    assert first.endswith("| 60/70 (0.86) | 63/70 (0.90) | 50/70 (0.71) | 48/70 (0.69) | +3 | -2 |")
    against_first = table(runs)[2]
    assert against_first.endswith("| +3 | -10 | -12 |")
    with pytest.raises(ValueError, match="even number"):
        table(runs[:3], pairs=True)


def test_the_script_reads_memory_json_files(tmp_path: Path) -> None:
    paths = []
    for name, ok in (("before", 61), ("after", 64)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"summary": _summary(ok), "meta": {"command": f"run {name}"}}))
        paths.append(f"{name}={path}")
    out = tmp_path / "side.md"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "memory_compare.py"), "--pairs", *paths,
         "--out", str(out)],
        check=True, cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    text = out.read_text()
    assert "- before: `run before`" in text and "| after − before |" in text
    assert text.count("| +3 |") == len(MEASURES)
