"""Facts told amid chatter: does the memory note still find, show and forget them?

``memsvc bench memory`` tells each fact as one short sentence. People bury facts in
longer messages, and the whole message is the memory. This replays the bench's plans
with each telling (and the update) between two chit-chat messages of the held-out test
split ("...the train was late again. Oh, my dog's name is Rex, he's a goofball. What
should I cook tonight?"), through the service's own write filter, pick and forget, and
scores per question, for two ways to read a memory side by side:

- ``whole text`` (before): one MiniLM vector per memory, the note shows the message;
- ``sentence focus`` (shipped, :mod:`memsvc.services.memory_focus`): a memory is scored
  by its sentence closest to the message, and a long one shows only that sentence.

Measures: the note holds the asked fact; the student recalls it (greedy, the served
prompt: note turn, question, ``<|assistant|>``, int8 weights); the bench's forget
request removes the fact and keeps the two others. Plain tellings (as the bench tells
them) are replayed too, so that what the change costs there shows.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/note_chatter.py \\
        --model-dir <assembled smollm2-hybrid> --out docs/bench/note-chatter
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from memsvc.bench.memory import contains, heldout_pools
from memsvc.bench.memory_data import UserPlan, buried, chatter_lines, make_plans
from memsvc.rag.feed import Embedder
from memsvc.services.forget import parse_forget
from memsvc.services.memory_focus import focus, memory_sentences, note_line
from memsvc.services.memory_notes import FORGET_QUESTION, forget_ids, pick, worth_keeping
from retnet_core.memory_note import note_text
from scripts.note_pick_coverage import memory_record

MODES = ("whole text", "sentence focus")


class Reader:
    """Vectors of texts and of their sentences (embedded once each)."""

    def __init__(self, embedder: Embedder) -> None:
        self.embedder, self.held = embedder, {}

    def vectors(self, texts: list[str]) -> np.ndarray:
        new = sorted({t for t in texts if t not in self.held})
        if new:
            self.held.update(zip(new, self.embedder.embed(new), strict=True))
        return np.stack([self.held[t] for t in texts])

    def rows(self, texts: list[str], query: np.ndarray, mode: str) -> tuple[np.ndarray, list]:
        """(rows (N, D), best sentence per memory) as ``mode`` reads the memories."""
        if mode == "whole text":
            return self.vectors(texts), [0] * len(texts)
        parts = [memory_sentences(t) for t in texts]
        return focus([self.vectors(p) for p in parts], query)


def note_for(reader: Reader, said: list[str], question: str, mode: str) -> list[str]:
    """The note lines the service feeds before ``question``, oldest first."""
    said = [t for t in said if worth_keeping(t)]
    if not said:
        return []
    query = reader.vectors([question])[0]
    rows, best = reader.rows(said, query, mode)
    got = pick([memory_record(i, t) for i, t in enumerate(said)], rows, query)
    at = {t: b for t, b in zip(said, best, strict=True)}
    return [
        s.memory.text if mode == "whole text" else note_line(s.memory.text, at[s.memory.text])
        for s in got
    ]


def greedy(runtime, lines: list[str], question: str, max_new: int = 24) -> str:
    """The student's reply to ``question`` after the note ``lines`` (no note: none)."""
    tok = runtime.tokenizer
    note = tok.render_turn({"role": "system", "content": note_text(lines)}) if lines else []
    ids = note + tok.render_turn({"role": "user", "content": question}) + tok.generation_prompt()
    with torch.inference_mode():
        first = runtime.prefill(ids, None, [])
        return greedy_from(runtime, first.logits, first.state, max_new)


def greedy_from(runtime, logits, state, max_new: int = 24) -> str:
    """The greedy reply from next-token ``logits`` (V,) and ``state`` (padding banned)."""
    tok, out = runtime.tokenizer, []
    with torch.inference_mode():
        for _ in range(max_new):
            logits = logits.clone()
            logits[tok.pad_id] = float("-inf")
            t = int(logits.argmax())
            if t == tok.end_id:
                break
            out.append(t)
            step, state = runtime.step([t], state)
            logits = step[0]
    return tok.decode(out, skip_special=True)


def forget_outcome(reader: Reader, plan: UserPlan, mode: str) -> tuple[bool, int]:
    """(the forgotten fact's value is gone, how many of the two others are kept)."""
    told = [f.tell for f in plan.facts] + [plan.update_text]
    texts = {str(i): t for i, t in enumerate(told) if worth_keeping(t)}
    request = parse_forget(plan.forget_text)
    if request is None or not texts:
        return False, 0
    topic = reader.vectors([FORGET_QUESTION.format(topic=request.topic)])[0]
    ids = sorted(texts)
    rows, _ = reader.rows([texts[i] for i in ids], topic, mode)
    gone = set(forget_ids({i: texts[i] for i in ids}, rows, topic))
    left = [texts[i] for i in texts if i not in gone]
    target = plan.forget
    removed = not any(plan.facts[target].value in t for t in left)
    others = [str(3 if j == plan.update else j) for j in range(3) if j != target]
    return removed, sum(i in texts and i not in gone for i in others)


def play(plans: list[UserPlan], reader: Reader, runtime, mode: str, log: Callable) -> dict:
    """Rates over ``plans`` in one mode: recall questions (trained / other kinds)."""
    from memsvc.bench.memory_data import KINDS

    tally: dict[str, list[int]] = {}
    for plan in plans:
        said = [f.tell for f in plan.facts]
        for i, fact in enumerate(plan.facts):
            question = plan.ask(fact.kind, i)
            lines = note_for(reader, said, question, mode)
            reply = greedy(runtime, lines, question) if runtime is not None else ""
            key = "trained" if KINDS[fact.kind].trained else "other"
            row = tally.setdefault(key, [0, 0, 0])
            row[0] += any(fact.value.lower() in t.lower() for t in lines)
            row[1] += contains(fact.value, reply)
            row[2] += 1
            log(mode, question, lines, reply)
        removed, kept = forget_outcome(reader, plan, mode)
        row = tally.setdefault("forget", [0, 0, 0])
        row[0] += removed
        row[1] += kept
        row[2] += 1
    return tally


def model_arguments(doc: str) -> argparse.ArgumentParser:
    """A parser with what every replay of the served model takes."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=2)
    return ap


def served_runtime(args: argparse.Namespace):
    """The model as the service runs it on CPU: int8 weights, ``--threads`` threads."""
    from memsvc.engine.runtime import ModelRuntime

    torch.set_num_threads(args.threads)
    return ModelRuntime.load(args.model_dir, "cpu", weights="int8")


def main() -> None:
    ap = model_arguments(__doc__)
    ap.add_argument("--users", type=int, default=70)
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    runtime = served_runtime(args)
    plain = make_plans(args.users, args.seed, heldout_pools())
    chatter = chatter_lines()
    told = {"plain": plain, "amid chatter": [buried(p, chatter) for p in plain]}
    reader, results, samples = Reader(Embedder()), {}, []

    def log(mode, question, lines, reply):
        if len(samples) < 40:
            samples.append({"mode": mode, "asked": question, "note": lines, "reply": reply})

    for how, plans in told.items():
        for mode in MODES:
            results[f"{how} | {mode}"] = play(plans, reader, runtime, mode, log)
            print(how, mode, results[f"{how} | {mode}"], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "note-chatter.json").write_text(
        json.dumps({"results": results, "samples": samples}, indent=1)
    )
    (args.out / "note-chatter.md").write_text(report(results, args))
    print(report(results, args))


def report(results: dict, args: argparse.Namespace) -> str:
    out = [
        "# Facts told amid chatter: found, shown, forgotten (note path)",
        "",
        f"`HF_HUB_OFFLINE=1 PYTHONPATH=. python scripts/note_chatter.py --model-dir "
        f"<assembled smollm2-hybrid> --users {args.users} --seed {args.seed} --out "
        f"{args.out}` (see the script's docstring): {args.users} users, three facts each.",
        "",
        "| tellings | memory read as | note holds the fact: trained / other kinds | "
        "recall: trained / other | forget removes | forget keeps the others |",
        "|---|---|---|---|---|---|",
    ]
    for label, t in results.items():
        how, mode = label.split(" | ")
        tr, ot, fg = t["trained"], t["other"], t["forget"]
        out.append(
            f"| {how} | {mode} | {tr[0] / tr[2]:.2f} / {ot[0] / ot[2]:.2f} | "
            f"{tr[1] / tr[2]:.2f} / {ot[1] / ot[2]:.2f} | {fg[0] / fg[2]:.2f} | "
            f"{fg[1] / (2 * fg[2]):.2f} |"
        )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
