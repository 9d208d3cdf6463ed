"""The note check, replayed: does leaving out the lines the student refuses alone help?

:mod:`memsvc.services.note_check` runs a question about the user once per checked line
of its note, with that line alone, and leaves out a line whose reply refuses. This
replays every scored question of a ``memsvc bench memory`` run (its ``memory.json``) as
the service serves it (write filter, pick with the bundled query adapter, the
"(nothing about this)" note, first token contrasted at weight 1, greedy int8), with the
check off and on, and scores both as the bench does. ``--no-exempt`` also checks the
corrections, to show why they are exempt.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/note_check.py \\
        --model-dir <assembled smollm2-hybrid> \\
        --bench docs/bench/memory-hybrid/note-contrast-seed21/memory.json \\
        --out docs/bench/note-check/seed21
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import torch

from memsvc.rag.feed import Embedder
from memsvc.rag.query_adapter import load_adapter
from memsvc.services.memory_focus import focus, memory_sentences, note_line
from memsvc.services.memory_notes import asks_about_user, pick, worth_keeping
from memsvc.services.note_check import (
    CHECK_TOKENS,
    NoteLine,
    lines_to_check,
    reads_as_correction,
    refuses,
)
from retnet_core.memory_note import note_text, nothing_note
from retnet_core.sampling import contrast_context
from scripts.memory_misses import said_before
from scripts.note_chatter import greedy_from, model_arguments, served_runtime
from scripts.note_contrast import MEASURES, PICK, scored
from scripts.note_pick_coverage import memory_record

WEIGHT = 1.0  # the served contrast weight


def note_lines(item: dict, plan: dict, embedder: Embedder, adapter) -> list[NoteLine]:
    """The lines of the note the service shows before ``item``'s question, oldest first."""
    said = [t for t in said_before(item, plan) if worth_keeping(t)]
    query = adapter.apply(embedder.embed([item["asked"]])[0])
    vectors, best = focus([embedder.embed(memory_sentences(t)) for t in said], query)
    rows = [memory_record(i, t) for i, t in enumerate(said)]
    got = pick(rows, vectors, query, min_similarity=adapter.min_similarity, **PICK)
    return [
        NoteLine(s.memory.id, note_line(s.memory.text, best[int(s.memory.id)]), s.similarity)
        for s in got
    ]


def reply(runtime, note: str, asked: str, max_new: int = 24) -> str:
    """The served reply: greedy, the first token of a noted question contrasted."""
    tok = runtime.tokenizer
    user = tok.render_turn({"role": "user", "content": asked}) + tok.generation_prompt()
    noted = (tok.render_turn({"role": "system", "content": note}) if note else []) + user
    first = runtime.prefill(noted, None, [])
    logits = first.logits
    if note and note != nothing_note() and asks_about_user(asked):
        logits = contrast_context(logits, runtime.prefill(user, None, []).logits, WEIGHT)
    return greedy_from(runtime, logits, first.state, max_new)


def checked(runtime, lines: list[NoteLine], asked: str, exempt: bool) -> tuple[list, list]:
    """(lines kept, the checks: line, its reply alone, refused) as the service checks."""
    todo = lines_to_check(lines, asks_about_user(asked))
    if not exempt and asks_about_user(asked) and len(lines) > 1:
        best = max(range(len(lines)), key=lambda i: (lines[i].similarity, -i))
        todo = [i for i in range(len(lines)) if i != best]
    checks, out = [], set()
    for i in todo:
        alone = reply(runtime, note_text([lines[i].text]), asked, CHECK_TOKENS)
        checks.append((lines[i].text, alone, refuses(alone)))
        if refuses(alone):
            out.add(i)
    return [line for i, line in enumerate(lines) if i not in out], checks


def main() -> None:
    ap = model_arguments(__doc__)
    ap.add_argument("--bench", type=Path, required=True, help="a memory bench's memory.json")
    ap.add_argument("--no-exempt", action="store_true", help="also check the corrections")
    args = ap.parse_args()
    bench = json.loads(args.bench.read_text())
    runtime, embedder = served_runtime(args), Embedder()
    adapter = load_adapter("bundled", embedder.dim)
    plans = {p["user"]: p for p in bench["plans"]}
    known = [f["value"] for p in bench["plans"] for f in p["facts"]]
    tally, changed, cost = {"off": Counter(), "on": Counter()}, [], Counter()
    with torch.inference_mode():
        for user in bench["memory_on"]:
            for item in (i for i in user["items"] if i["measure"] in MEASURES):
                lines = note_lines(item, plans[user["user"]], embedder, adapter)
                asks = asks_about_user(item["asked"])
                note = note_text([x.text for x in lines]) or (nothing_note() if asks else "")
                base = reply(runtime, note, item["asked"])
                t0 = time.perf_counter()
                kept, checks = checked(runtime, lines, item["asked"], not args.no_exempt)
                cost["checks"] += len(checks)
                cost["questions checked"] += bool(checks)
                cost["check s"] += time.perf_counter() - t0
                final = base if len(kept) == len(lines) else reply(
                    runtime, note_text([x.text for x in kept]), item["asked"]
                )  # fmt: skip
                ok = {"off": scored(item, base, known), "on": scored(item, final, known)}
                for mode in ok:
                    tally[mode][item["measure"]] += ok[mode]
                    tally[mode]["n " + item["measure"]] += 1
                if checks:
                    changed.append({"measure": item["measure"], "asked": item["asked"],
                                    "lines": [x.text for x in lines], "checks": checks,
                                    "off": base, "on": final, "ok": ok})  # fmt: skip
            print(user["user"], dict(tally["off"]), dict(tally["on"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"bench": str(args.bench), "exempt": not args.no_exempt, "tally": tally,
              "cost": dict(cost), "checked": changed}  # fmt: skip
    (args.out / "note-check.json").write_text(json.dumps(record, indent=1))
    (args.out / "note-check.md").write_text(report(record, args))
    print(report(record, args))


def report(record: dict, args) -> str:
    t = record["tally"]
    out = [
        "# The note check, replayed",
        "",
        f"`HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/note_check.py --model-dir <assembled> "
        f"--bench {record['bench']} --out {args.out}"
        + ("" if record["exempt"] else " --no-exempt")
        + "` (see the script's docstring).",
        "",
        "| measure | check off | check on |",
        "|---|---|---|",
    ]
    for m in MEASURES:
        out.append(
            f"| {m} | {t['off'][m]} / {t['off']['n ' + m]} | {t['on'][m]} / {t['on']['n ' + m]} |"
        )
    c = record["cost"]
    left_out = sum(x[2] for r in record["checked"] for x in r["checks"])
    out += [
        "",
        f"Questions with a check: {c.get('questions checked', 0)}; lines checked: "
        f"{c.get('checks', 0)}; left out: {left_out}; "
        f"replay time of the checks: {c.get('check s', 0):.1f} s.",
        "",
        "## Questions whose answer changed",
        "",
        "| measure | asked | note | left out | off | on |",
        "|---|---|---|---|---|---|",
    ]
    for r in record["checked"]:
        if r["ok"]["off"] != r["ok"]["on"]:
            gone = "; ".join(x[0] for x in r["checks"] if x[2])
            off, on = (f"{r[m]} {'✓' if r['ok'][m] else '✗'}" for m in ("off", "on"))
            note = " / ".join(r["lines"])
            out.append(f"| {r['measure']} | {r['asked']} | {note} | {gone} | {off} | {on} |")
    corrections = sum(reads_as_correction(x) for r in record["checked"] for x in r["lines"])
    out += ["", f"Note lines read as corrections (never checked when exempt): {corrections}.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()
