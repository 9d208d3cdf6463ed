"""Why the memory bench's questions missed: one table from its ``memory.json``.

Each missed question of the measures that ask for a value (recall, latest, kept) falls
in the first of these that fits its reply:

- ``refuses``: the reply says it does not know (``memsvc.bench.memory.DECLINE``);
- ``names the replaced value``: the value an update replaced (the latest question, and
  a kept question about the updated fact);
- ``names another told value``: a value the same user told about something else;
- ``other``: anything else (a value never told, a broken reply).

A missed decline is counted as ``names a value``. The table also gives recall by kind.

    PYTHONPATH=. python scripts/memory_misses.py docs/bench/memory-hybrid/memory.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

from memsvc.bench.memory import DECLINE

ASKS_A_VALUE = ("recall_trained", "recall_other", "latest", "forget_keeps")
CAUSES = ("refuses", "names the replaced value", "names another told value", "other")


def _named(value: str, reply: str) -> bool:
    """Whole-word, case-insensitive, as the bench scores a recall."""
    return re.search(rf"\b{re.escape(value)}\b", reply, re.I) is not None


def miss_cause(item: dict, plan: dict) -> str:
    """The first of :data:`CAUSES` that fits a missed question's reply."""
    reply = item["reply"]
    if DECLINE.search(reply):
        return "refuses"
    update = plan.get("update")
    changed = plan["facts"][update["fact"]] if update else None
    if changed and changed["kind"] == item["kind"] and _named(changed["value"], reply):
        return "names the replaced value"
    told = [f["value"] for f in plan["facts"] if f["kind"] != item["kind"]]
    if changed and changed["kind"] != item["kind"]:
        told.append(update["value"])
    if any(_named(v, reply) for v in told):
        return "names another told value"
    return "other"


def miss_table(bench: dict) -> dict[str, Counter]:
    """``{measure: Counter(cause)}`` over the memory-on items of one bench run."""
    plans = {p["user"]: p for p in bench["plans"]}
    table: dict[str, Counter] = {m: Counter() for m in (*ASKS_A_VALUE, "declines")}
    for user in bench["memory_on"]:
        for item in user["items"]:
            if item["ok"] or item["measure"] not in table:
                continue
            cause = "names a value" if item["measure"] == "declines" else None
            table[item["measure"]][cause or miss_cause(item, plans[user["user"]])] += 1
    return table


def render(bench: dict, source: str) -> str:
    table = miss_table(bench)
    lines = [f"# Misses of `{source}`", "", f"Command: `{bench['meta']['command']}`", ""]
    lines += ["| measure | missed | " + " | ".join(CAUSES) + " |"]
    lines += ["|---|---|" + "---|" * len(CAUSES)]
    for measure in ASKS_A_VALUE:
        counts = table[measure]
        cells = " | ".join(str(counts[c]) for c in CAUSES)
        lines.append(f"| {measure} | {sum(counts.values())} | {cells} |")
    lines += ["", f"Declines missed (a value named): {table['declines']['names a value']}", ""]
    lines += ["| kind | recalled | asked |", "|---|---|---|"]
    for kind, (ok, n) in sorted(bench["summary"]["recall_by_kind"].items()):
        lines.append(f"| {kind} | {ok} | {n} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path, help="a memory.json of memsvc bench memory")
    parser.add_argument("--out", type=Path, help="write the table here (default: print)")
    args = parser.parse_args()
    text = render(json.loads(args.bench.read_text()), str(args.bench))
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
