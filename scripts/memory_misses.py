"""Why the memory bench's questions missed: one table from its ``memory.json``.

Each missed question of the measures that ask for a value (recall, latest, kept) falls
in the first of these that fits its reply:

- ``refuses``: the reply says it does not know (``memsvc.bench.memory.DECLINE``);
- ``names the replaced value``: the value an update replaced (the latest question, and
  a kept question about the updated fact);
- ``names another told value``: a value the same user told about something else;
- ``other``: anything else (a value never told, a broken reply).

A missed decline is counted as ``names a value``. The table also gives recall by kind.

With ``--notes MARGIN,FOLLOW,FOLLOW_QUERY`` (the pick settings the run served with) each missed
question is also replayed through the service's write filter and note pick
(:mod:`memsvc.services.memory_notes`, MiniLM as the service embeds): a miss whose note
lacked the fact is the pick's, the others are the model's misreads.

    PYTHONPATH=. python scripts/memory_misses.py docs/bench/memory-hybrid/memory.json \
        --notes 0.1,0.2,0.05 --adapter bundled

(``--adapter``: the run's query adapter, :mod:`memsvc.rag.query_adapter`; the served
read moves the question by it and uses its own floor.)
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


def said_before(item: dict, plan: dict) -> list[str]:
    """The user's kept messages when ``item`` was asked, oldest first: the tellings, then
    (latest and kept questions) the update, less (kept) the forgotten fact's telling."""
    said = [f["tell"] for f in plan["facts"]]
    if item["measure"] in ("latest", "forget_keeps"):
        said.append(plan["update"]["said"])
    if item["measure"] == "forget_keeps":
        del said[plan["forget"]["fact"]]
    return said


def notes_lacking(
    bench: dict, margin: float, follow: float, follow_query: float, adapter=None
) -> Counter:
    """``{measure: misses whose note held no memory naming the asked value}``; with a
    :class:`~memsvc.rag.query_adapter.QueryAdapter` the question is moved by it and its
    own floor applies (``margin`` and ``follow_query`` as given)."""
    from memsvc.rag.feed import Embedder
    from memsvc.services.memory_focus import focus, memory_sentences
    from memsvc.services.memory_notes import pick, worth_keeping
    from scripts.note_pick_coverage import memory_record

    plans, embedder, lacking = {p["user"]: p for p in bench["plans"]}, Embedder(), Counter()
    for user in bench["memory_on"]:
        for item in user["items"]:
            if item["ok"] or item["measure"] not in ASKS_A_VALUE:
                continue
            said = [t for t in said_before(item, plans[user["user"]]) if worth_keeping(t)]
            query = embedder.embed([item["asked"]])[0]
            floor = {}
            if adapter is not None:
                query, floor = adapter.apply(query), {"min_similarity": adapter.min_similarity}
            # as the service reads a memory: by its sentence closest to the message
            vectors, _ = focus([embedder.embed(memory_sentences(t)) for t in said], query)
            rows = [memory_record(i, t) for i, t in enumerate(said)]
            got = pick(rows, vectors, query, margin=margin, follow=follow,
                       follow_query=follow_query, **floor)  # fmt: skip
            lacking[item["measure"]] += not any(_named(item["value"], s.memory.text) for s in got)
    return lacking


def render(bench: dict, source: str, lacking: Counter | None = None, pick_used: str = "") -> str:
    """The misses table (and, given ``lacking``, a column of misses the note caused)."""
    table = miss_table(bench)
    lines = [f"# Misses of `{source}`", "", f"Command: `{bench['meta']['command']}`", ""]
    if lacking is not None:
        lines += [f"Notes replayed with the pick's {pick_used}.", ""]
    extra = " | the note lacked the fact |" if lacking is not None else " |"
    lines += ["| measure | missed | " + " | ".join(CAUSES) + extra]
    lines += ["|---|---|" + "---|" * (len(CAUSES) + (lacking is not None))]
    for measure in ASKS_A_VALUE:
        counts = table[measure]
        cells = " | ".join(str(counts[c]) for c in CAUSES)
        tail = f" | {lacking[measure]} |" if lacking is not None else " |"
        lines.append(f"| {measure} | {sum(counts.values())} | {cells}{tail}")
    lines += ["", f"Declines missed (a value named): {table['declines']['names a value']}", ""]
    lines += ["| kind | recalled | asked |", "|---|---|---|"]
    for kind, (ok, n) in sorted(bench["summary"]["recall_by_kind"].items()):
        lines.append(f"| {kind} | {ok} | {n} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path, help="a memory.json of memsvc bench memory")
    parser.add_argument("--out", type=Path, help="write the table here (default: print)")
    parser.add_argument(
        "--notes", help="MARGIN,FOLLOW,FOLLOW_QUERY of the pick the run served with"
    )
    parser.add_argument("--adapter", help="the run's query adapter: 'bundled' or a path")
    args = parser.parse_args()
    bench = json.loads(args.bench.read_text())
    if args.notes:
        from memsvc.rag.query_adapter import load_adapter
        from scripts.note_pick_coverage import pick_label

        margin, follow, query = (float(x) for x in args.notes.split(","))
        adapter = load_adapter(args.adapter) if args.adapter else None
        lacking = notes_lacking(bench, margin, follow, query, adapter)
        used = pick_label(margin, follow, query)
        if adapter is not None:
            used = f"query adapter {args.adapter}, floor {adapter.min_similarity}, " + used
        text = render(bench, str(args.bench), lacking, used)
    else:
        text = render(bench, str(args.bench))
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
