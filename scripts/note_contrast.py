"""Context-aware decoding of noted turns, replayed: which contrast weight to serve?

A noted turn's first token is chosen from its logits moved away from those of the same
turn without the note (:func:`retnet_core.sampling.contrast_context`, weight ``w``):
the student often reads past a note that holds the answer ("What's the name of my best
mate?" after "Dirfa has been my best friend since school." → "I don't know your best
mate."), and the first token is where a reply commits to naming or to refusing.

This replays every scored question of a ``memsvc bench memory`` run (its
``memory.json``: plans, questions, REST replies) as the service serves it: the user's
kept messages through the write filter, the note pick with the bundled query adapter,
the "(nothing about this)" note for an opening question about the user that no memory
answers, then greedy decoding of the student (int8, ``--threads``). Each weight is
scored as the bench scores (recall: the value named; decline: says it does not know
and names no value). Only the first token is contrasted, so a weight's reply differs
from the plain one only where its first token does: those are decoded again, the rest
reused. ``w = 0`` is the served path before this change; its agreement with the REST
replies is reported, as a check of the replay.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/note_contrast.py \\
        --model-dir <assembled smollm2-hybrid> \\
        --bench docs/bench/memory-hybrid/before-contrast/memory.json \\
        --weights 0,0.5,1,1.5,2 --out docs/bench/note-contrast
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from memsvc.bench.memory import KINDS, contains, is_decline
from memsvc.rag.feed import Embedder
from memsvc.rag.query_adapter import load_adapter
from memsvc.services.memory_focus import focus, memory_sentences
from memsvc.services.memory_notes import asks_about_user, pick, worth_keeping
from retnet_core.memory_note import note_text, nothing_note
from retnet_core.sampling import contrast_context
from scripts.memory_misses import said_before
from scripts.note_chatter import greedy_from, model_arguments, served_runtime
from scripts.note_pick_coverage import memory_record

MEASURES = ("recall_trained", "recall_other", "declines", "latest", "forget_keeps")
#: the pick settings the bench served with (the shipped ones)
PICK = {"margin": 0.1, "follow": 0.2, "follow_query": 0.05}


def note_of(item: dict, plan: dict, embedder: Embedder, adapter) -> str:
    """The note the service shows before ``item``'s question ("" for none)."""
    said = [t for t in said_before(item, plan) if worth_keeping(t)]
    query = adapter.apply(embedder.embed([item["asked"]])[0])
    vectors, _ = focus([embedder.embed(memory_sentences(t)) for t in said], query)
    rows = [memory_record(i, t) for i, t in enumerate(said)]
    got = pick(rows, vectors, query, min_similarity=adapter.min_similarity, **PICK)
    if got:
        return note_text([s.memory.text for s in got])
    # every bench question opens its session
    return nothing_note() if asks_about_user(item["asked"]) else ""


def replies(runtime, note: str, asked: str, weights: list[float], max_new: int = 24) -> dict:
    """``{weight: reply}``, greedy; the first token contrasted against no note."""
    tok = runtime.tokenizer
    user = tok.render_turn({"role": "user", "content": asked}) + tok.generation_prompt()
    noted = (tok.render_turn({"role": "system", "content": note}) if note else []) + user
    with torch.inference_mode():
        first = runtime.prefill(noted, None, [])
        plain = runtime.prefill(user, None, []).logits if note else first.logits
        out, done = {}, {}
        for w in weights:
            moved = contrast_context(first.logits, plain, w).clone()
            moved[tok.pad_id] = float("-inf")
            t = int(moved.argmax())  # only the first token differs between weights
            if t not in done:
                done[t] = greedy_from(runtime, moved, first.state, max_new)
            out[w] = done[t]
    return out


def prefill_cost(runtime, turns: list[tuple[str, str]], reps: int = 5) -> dict:
    """Median ms of the batched prefill that starts a noted turn, without and with its
    contrast row (the engine feeds both in one ``prefill_rows`` call), interleaved."""
    tok, times = runtime.tokenizer, {"alone": [], "with contrast": []}
    for note, asked in turns:
        user = tok.render_turn({"role": "user", "content": asked}) + tok.generation_prompt()
        noted = tok.render_turn({"role": "system", "content": note}) + user
        for _ in range(reps):
            for label, rows in (("alone", [noted]), ("with contrast", [noted, user])):
                t0 = time.perf_counter()
                runtime.prefill_rows(rows, [None] * len(rows))
                times[label].append(1000 * (time.perf_counter() - t0))
    return {"turns": len(turns), **{k: round(statistics.median(v), 1) for k, v in times.items()}}


def scored(item: dict, reply: str, known: list[str]) -> bool:
    if item["measure"] == "declines":
        return is_decline(reply, KINDS[item["kind"]].values, known)
    return contains(item["value"], reply)


def main() -> None:
    ap = model_arguments(__doc__)
    ap.add_argument("--bench", type=Path, required=True, help="a memory bench's memory.json")
    ap.add_argument("--weights", default="0,0.5,1,1.5,2")
    args = ap.parse_args()
    weights = [float(w) for w in args.weights.split(",")]
    bench = json.loads(args.bench.read_text())
    runtime, embedder = served_runtime(args), Embedder()
    adapter = load_adapter("bundled", embedder.dim)
    plans = {p["user"]: p for p in bench["plans"]}
    known = [f["value"] for p in bench["plans"] for f in p["facts"]]
    tally = {w: Counter() for w in weights}
    agree, changed = Counter(), []
    for user in bench["memory_on"]:
        for item in (i for i in user["items"] if i["measure"] in MEASURES):
            note = note_of(item, plans[user["user"]], embedder, adapter)
            got = replies(runtime, note, item["asked"], weights)
            agree["same"] += got[weights[0]] == item["reply"]
            agree["asked"] += 1
            for w in weights:
                tally[w][item["measure"]] += scored(item, got[w], known)
                tally[w]["n " + item["measure"]] += 1
            if len(set(got.values())) > 1:
                changed.append(
                    {
                        "measure": item["measure"],
                        "note": note,
                        "asked": item["asked"],
                        "replies": {str(w): got[w] for w in weights},
                        "ok": {str(w): scored(item, got[w], known) for w in weights},
                    }
                )
        print(user["user"], {w: tally[w]["recall_trained"] for w in weights}, flush=True)
    noted = [(c["note"], c["asked"]) for c in changed if c["note"]][:20]
    cost = prefill_cost(runtime, noted)
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"prefill_ms": cost, "bench": str(args.bench), "weights": weights, "agree": agree,
              "tally": {str(w): tally[w] for w in weights}, "changed": changed}  # fmt: skip
    (args.out / "note-contrast.json").write_text(json.dumps(record, indent=1))
    (args.out / "note-contrast.md").write_text(report(record, args))
    print(report(record, args))


def report(record: dict, args) -> str:
    w0 = str(record["weights"][0])
    out = [
        "# Context-aware decoding of noted turns, replayed",
        "",
        f"`HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/note_contrast.py --model-dir "
        f"<assembled smollm2-hybrid> --bench {record['bench']} --weights {args.weights} "
        f"--out {args.out}` (see the script's docstring).",
        "",
        f"Replay check: weight {w0} gave the REST run's reply for "
        f"{record['agree']['same']} of {record['agree']['asked']} questions.",
        "",
        f"The first token's prefill (median of {record['prefill_ms']['turns']} noted turns "
        f"× 5, {args.threads} threads, int8): {record['prefill_ms']['alone']} ms alone, "
        f"{record['prefill_ms']['with contrast']} ms with the contrast row.",
        "",
        "| weight | " + " | ".join(MEASURES) + " |",
        "|---|" + "---|" * len(MEASURES),
    ]
    for w, t in record["tally"].items():
        cells = [f"{t[m]} / {t['n ' + m]}" for m in MEASURES]
        out.append(f"| {w} | " + " | ".join(cells) + " |")
    out += ["", "Questions whose reply a weight changed:", ""]
    for c in record["changed"]:
        got = "; ".join(
            f"{w}: {r!r} ({'ok' if c['ok'][w] else 'miss'})" for w, r in c["replies"].items()
        )
        note = c["note"].split("\n", 1)[-1].replace("\n", " ")
        out.append(f"- {c['measure']}, note `{note}`, asked {c['asked']!r}: {got}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
