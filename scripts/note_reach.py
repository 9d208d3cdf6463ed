"""How far back in its note can the student read? Its own training examples, replayed.

``memsvc bench memory`` asks with held-out wordings, so its misses mix two causes: a
wording the student never learned, and a note it cannot read. This separates them. It
draws fresh note examples of the training distribution (training values and phrasings,
the last stages' mix of kinds; :class:`~retnet_core.training.note_dialogues.NoteDialogues`),
feeds each as served (note turn, question, ``<|assistant|>``, greedy, int8 weights) and
scores the reply: a recall, update or chain must name its value, an unknown or nothing
example must refuse. Recalls are also grouped by how many characters of note and
question lie between the asked value and the reply: the hybrid reads a 64-token softmax
window and retention beyond it.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/note_reach.py \\
        --model-dir <assembled smollm2-hybrid> --examples 300 --out docs/bench/note-reach
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

from memsvc.bench.memory import DECLINE
from retnet_core.training.distill_data import prepare_distill_data
from retnet_core.training.note_dialogues import NoteDialogues, NoteExample
from scripts.note_chatter import greedy, model_arguments, served_runtime

# the mix of the shipped stage (configs/distill-hybrid.yaml, distill-notes-latest)
KINDS = {"recall": 3.0, "update": 2.0, "chain": 1.0, "unknown": 0.5, "nothing": 0.5}
BUCKET = 50  # characters per distance bucket


def reach(ex: NoteExample) -> int:
    """Characters from the asked value's last mention in the note to the question's end."""
    note, question = ex.turns[0].content, ex.turns[1].content
    return len(note) - note.rfind(ex.answer) + len(question)


def right(ex: NoteExample, reply: str) -> bool:
    """A value example names its value; a refusal example says it does not know."""
    if ex.answer:
        return ex.answer.lower() in reply.lower()
    return DECLINE.search(reply) is not None


def main() -> None:
    ap = model_arguments(__doc__)
    ap.add_argument("--examples", type=int, default=300)
    ap.add_argument("--seed", type=int, default=777)
    args = ap.parse_args()
    runtime = served_runtime(args)
    pools = prepare_distill_data(runtime.tokenizer, chitchat_limit=50).pools
    gen = NoteDialogues(pools, "train", seed=args.seed, kinds=KINDS)
    by_kind: Counter = Counter()
    by_reach: Counter = Counter()
    rows = []
    for _ in range(args.examples):
        ex = gen.note_example()
        note, question = ex.turns[0].content, ex.turns[1].content
        lines = note.split("\n")[1:]
        reply = greedy(runtime, [line.removeprefix("- ") for line in lines], question)
        ok = right(ex, reply)
        by_kind[ex.kind, ok] += 1
        if ex.kind == "recall":
            by_reach[min(reach(ex) // BUCKET, 5), ok] += 1
        rows.append({"kind": ex.kind, "note": note, "asked": question, "reply": reply, "ok": ok})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "note-reach.json").write_text(json.dumps(rows, indent=1))
    text = report(by_kind, by_reach, args)
    (args.out / "note-reach.md").write_text(text)
    print(text)


def report(by_kind: Counter, by_reach: Counter, args: argparse.Namespace) -> str:
    out = [
        "# How far back in its note the student reads (its own training distribution)",
        "",
        f"`HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/note_reach.py --model-dir "
        f"<assembled smollm2-hybrid> --examples {args.examples} --seed {args.seed} "
        f"--out {args.out}` (see the script's docstring).",
        "",
        "| example kind | right | of |",
        "|---|---|---|",
    ]
    for kind in sorted({k for k, _ in by_kind}):
        n = by_kind[kind, True] + by_kind[kind, False]
        out.append(f"| {kind} | {by_kind[kind, True]} | {n} |")
    out += ["", "| recalls: characters from the value to the question's end | right | of |"]
    out.append("|---|---|---|")
    for b in sorted({b for b, _ in by_reach}):
        span = f"{b * BUCKET}–{b * BUCKET + BUCKET - 1}" if b < 5 else f"≥ {5 * BUCKET}"
        n = by_reach[b, True] + by_reach[b, False]
        out.append(f"| {span} | {by_reach[b, True]} | {n} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
