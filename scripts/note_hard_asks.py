"""Which of its own training questions does the student fail? One rate per question.

Random examples of the training distribution hide a question the student fails when
its attribute is one of twenty: ``scripts/note_reach.py`` drew ten name questions and
got all ten, yet "Any idea who I am?", a training question, is refused over every
training telling of a name. This asks every question template of every note attribute
(its own asks, :data:`~retnet_core.training.note_phrasings.EXTRA_ASKS` and the framed
ones) over ``--per-ask`` fresh recall notes (the asked fact in a training telling among
one or two others, training values), as served (greedy, int8), and writes the rate of
each: ``note-asks.json`` (attribute -> question -> rate), which a distillation stage can
use to draw the failed questions more often (``note_ask_weights``). Only training
phrasings and values are used: ``memsvc bench memory``'s stay held out.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/note_hard_asks.py \\
        --model-dir <assembled smollm2-hybrid> --out docs/bench/note-asks
"""

from __future__ import annotations

import json

from retnet_core.training.distill_data import prepare_distill_data
from retnet_core.training.note_dialogues import NOTE_ATTRIBUTES, NoteDialogues, note_asks
from scripts.note_chatter import greedy, model_arguments, served_runtime


def recall_note(gen: NoteDialogues, attr: str) -> tuple[list[str], str]:
    """(note lines, the value): ``attr`` told among one or two other facts, shuffled."""
    value = gen._value(NOTE_ATTRIBUTES[attr].value_kind)
    others = [(a, v) for a, v in gen._facts(3) if a != attr][: gen.rng.randint(1, 2)]
    facts = [(attr, value), *others]
    gen.rng.shuffle(facts)
    return [gen._statement(a, v) for a, v in facts], value


def main() -> None:
    ap = model_arguments(__doc__)
    ap.add_argument("--per-ask", type=int, default=3)
    ap.add_argument("--seed", type=int, default=4242)
    args = ap.parse_args()
    runtime = served_runtime(args)
    pools = prepare_distill_data(runtime.tokenizer, chitchat_limit=50).pools
    gen = NoteDialogues(pools, "train", seed=args.seed)
    rates: dict[str, dict[str, float]] = {}
    for attr in sorted(NOTE_ATTRIBUTES):
        rates[attr] = {}
        for ask in note_asks(NOTE_ATTRIBUTES[attr], attr):
            right = 0
            for _ in range(args.per_ask):
                lines, value = recall_note(gen, attr)
                right += value.lower() in greedy(runtime, lines, ask).lower()
            rates[attr][ask] = right / args.per_ask
        print(attr, f"{sum(rates[attr].values()) / len(rates[attr]):.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "note-asks.json").write_text(json.dumps(rates, indent=1))
    (args.out / "note-asks.md").write_text(report(rates, args))
    print(report(rates, args))


def report(rates: dict[str, dict[str, float]], args) -> str:
    asks = [(r, a, q) for a, qs in rates.items() for q, r in qs.items()]
    mean = sum(r for r, _, _ in asks) / len(asks)
    out = [
        "# The student on each of its own training questions",
        "",
        f"`HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/note_hard_asks.py --model-dir "
        f"<assembled smollm2-hybrid> --per-ask {args.per_ask} --seed {args.seed} --out "
        f"{args.out}` (see the script's docstring). {len(asks)} questions, mean {mean:.2f}.",
        "",
        "| attribute | questions | mean | failed every time |",
        "|---|---|---|---|",
    ]
    for attr, qs in rates.items():
        failed = "; ".join(f"“{q}”" for q, r in qs.items() if r == 0) or "–"
        out.append(f"| {attr} | {len(qs)} | {sum(qs.values()) / len(qs):.2f} | {failed} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
