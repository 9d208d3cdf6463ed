"""Several ``memsvc bench memory`` runs side by side: one column per run, counts and rates.

Each ``LABEL=PATH`` names a run's ``memory.json``. Every row is one measure of issue
13's protocol, ``ok/n (rate)``; the last columns give differences in facts (each run
against the first, or with ``--pairs`` each second run against the one before it), so a
change of one or two facts reads as what it is on 70 users.

    PYTHONPATH=. python scripts/memory_compare.py --pairs \\
        --out docs/bench/memory-hybrid/query-adapter.md \\
        "stock MiniLM, seed 13=docs/bench/memory-hybrid/stock-minilm/memory.json" \\
        "query adapter, seed 13=docs/bench/memory-hybrid/before-contrast/memory.json"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MEASURES = (
    ("recall_trained", "recall, trained kinds"),
    ("recall_other", "recall, kinds absent from memory training"),
    ("declines", "declines when never told"),
    ("latest", "latest value after an update"),
    ("forget_removes", '"please forget …": that fact gone'),
    ("forget_keeps", '"please forget …": the other facts kept'),
    ("cross_user", "another user of the tenant gets the fact"),
)


def cell(measure: dict) -> str:
    """``88/105 (0.84)``."""
    return f"{measure['ok']}/{measure['n']} ({measure['rate']:.2f})"


def table(runs: list[tuple[str, dict]], pairs: bool = False) -> list[str]:
    """Markdown rows: measure, each run's cell, then the differences in facts: each
    later run minus the first, or (``pairs``) each second run minus the one before it."""
    if pairs and len(runs) % 2:
        raise ValueError("--pairs needs an even number of runs (before, after, ...)")
    against = (
        [(runs[i], runs[i + 1]) for i in range(0, len(runs), 2)]
        if pairs
        else [(runs[0], run) for run in runs[1:]]
    )
    head = ["measure", *(label for label, _ in runs)]
    head += [f"{after[0]} − {before[0]}" for before, after in against]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, name in MEASURES:
        cells = [cell(summary["measures"][key]) for _, summary in runs]
        diffs = [
            f"{after[1]['measures'][key]['ok'] - before[1]['measures'][key]['ok']:+d}"
            for before, after in against
        ]
        out.append("| " + " | ".join([name, *cells, *diffs]) + " |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="LABEL=PATH of a memory.json")
    ap.add_argument("--out", type=Path, help="write the table here (default: print)")
    ap.add_argument("--pairs", action="store_true", help="runs are (before, after) pairs")
    args = ap.parse_args()
    runs, commands = [], []
    for spec in args.runs:
        label, _, path = spec.partition("=")
        if not path:
            ap.error(f"{spec!r}: expected LABEL=PATH")
        bench = json.loads(Path(path).read_text())
        runs.append((label, bench["summary"]))
        commands.append(f"- {label}: `{bench['meta']['command']}` ([{path}]({path}))")
    text = "\n".join(
        ["# Memory bench runs side by side", "", *commands, "", *table(runs, args.pairs), ""]
    )
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
