"""Probe: can the distilled model answer from memories handed to it as text?

The distilled model has no Retention Layer yet (issue 13 §4 is not trained), so
``memsvc bench memory`` cannot score it. This probe asks what a memory *read* would
give it if the memories' provenance text were placed in its context just before the
question (inside the 64-token window), in-process, greedy, on the memory bench's own
held-out users (``make_plans``: held-out values, kinds absent from memory training).

    PYTHONPATH=$PWD python scripts/memory_context_probe.py --users 30 --out docs/distill

Formats: ``turns`` (each fact as an earlier user turn, acknowledged), ``system`` (a
system note listing the facts). Measures, as the bench scores them: recall (the reply
contains the value) and declines for a kind never told (the bench's ``is_decline``).
Writes ``memory-context.json`` and ``memory-context.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from memsvc.bench.memory import contains, heldout_pools, is_decline
from memsvc.bench.memory_data import KINDS, make_plans
from memsvc.distilled import assemble
from retnet_core.checkpoint import load_pretrained
from retnet_core.generate import generate
from retnet_core.precision import apply_precision
from retnet_core.sampling import SamplingParams
from retnet_core.tokenizer import ChatTokenizer, Message

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def render(fmt: str, tells: list[str], question: str) -> list[Message]:
    """The conversation the model continues: the facts in ``fmt``, then the question."""
    if fmt == "turns":
        msgs = [Message("system", SYSTEM)]
        for t in tells:
            msgs += [Message("user", t), Message("assistant", "Got it, I'll remember that.")]
        return [*msgs, Message("user", question)]
    note = "What the user told you in earlier conversations:\n" + "\n".join(f"- {t}" for t in tells)
    if fmt == "note":  # the note alone, as a session without a system prompt gets it
        return [Message("system", note), Message("user", question)]
    if fmt == "default+note":  # the default system prompt's turn, then the note's
        return [Message("system", SYSTEM), Message("system", note), Message("user", question)]
    return [Message("system", f"{SYSTEM}\n{note}"), Message("user", question)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=30)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--out", type=Path, default=Path("docs/distill"))
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--formats", default="turns,system", help="turns,system,note,default+note")
    args = ap.parse_args()
    model_dir = args.model_dir or assemble(Path("/tmp/memsvc-bench/smollm2-hybrid"))
    model = apply_precision(load_pretrained(model_dir), "int8")
    tok = ChatTokenizer.load(model_dir)
    params = SamplingParams(max_new_tokens=24, stop_token_ids=(tok.end_id,))
    plans = make_plans(args.users, args.seed, heldout_pools())
    known = [f.value for p in plans for f in p.facts]
    results: dict[str, dict[str, list]] = {}
    samples: list[dict] = []
    t0 = time.perf_counter()
    for fmt in args.formats.split(","):
        res = results.setdefault(fmt, {"recall": [], "decline": []})
        for plan in plans:
            tells = [f.tell for f in plan.facts]
            asks = [(f, plan.ask(f.kind, j)) for j, f in enumerate(plan.facts)]
            asks.append((None, plan.ask(plan.never, 9)))
            for fact, question in asks:
                ids = tok.render_ids(render(fmt, tells, question)) + tok.generation_prompt()
                with torch.inference_mode():
                    reply = tok.decode(list(generate(model, ids, params=params)), True)
                if fact is None:
                    ok = is_decline(reply, KINDS[plan.never].values, known)
                    res["decline"].append(ok)
                else:
                    ok = contains(fact.value, reply)
                    res["recall"].append(ok)
                if len(samples) < 12 and fmt == "turns":
                    samples.append({"question": question, "reply": reply, "ok": ok})
    rates = {
        fmt: {k: sum(v) / max(len(v), 1) for k, v in r.items()} | {"n": len(r["recall"])}
        for fmt, r in results.items()
    }
    out = {
        "command": f"PYTHONPATH=$PWD python scripts/memory_context_probe.py --users "
        f"{args.users} --seed {args.seed} --out {args.out}",
        "rates": rates,
        "samples": samples,
        "seconds": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory-context.json").write_text(json.dumps(out, indent=2))
    lines = [
        "# Probe: the distilled model answering from memories given as text",
        "",
        f"Command: `{out['command']}` (int8 weights, greedy, 24 tokens)",
        "",
        "| format | facts asked | recall | declines when never told |",
        "|---|---|---|---|",
    ]
    for fmt, r in rates.items():
        lines.append(f"| {fmt} | {r['n']} | {r['recall']:.2f} | {r['decline']:.2f} |")
    lines += ["", "Samples (`turns`):", ""]
    for s in samples:
        lines.append(f"- {s['question']!r} → {s['reply']!r} ({'✓' if s['ok'] else '✗'})")
    (args.out / "memory-context.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
