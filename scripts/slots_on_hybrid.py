"""Memory slots on the distilled backbone, frozen vs with adapters, beside the memory note.

Issue 13 §4 (seed 002's open question 4 at real scale): one token-slot memory layer with
the copy head is added to the assembled SmolLM2 hybrid and trained on the cross-session
objective, (a) with the backbone frozen, (b) with LoRA adapters on its retentions; the
note the service ships is scored on the same held-out examples (held-out values), all
by :func:`retnet_core.training.slot_transfer.reader_rates` (replies that name the value
or rightly say they don't know, and exact replies).

    PYTHONPATH=. python scripts/slots_on_hybrid.py --model-dir /tmp/exp/hyb3 \\
        --out docs/bench/slots-hybrid --steps 60 --eval 24
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from retnet_core.checkpoint import load_pretrained
from retnet_core.tokenizer import ChatTokenizer
from retnet_core.training.data import load_chitchat, split_conversations, words_of
from retnet_core.training.dialogues import DialogueGenerator, ValuePools
from retnet_core.training.slot_transfer import (
    EVAL_KINDS,
    VARIANTS,
    prepare_variant,
    reader_rates,
    save_servable,
    train_slots,
    with_memory_layer,
)


def heldout_examples(pools: ValuePools, n: int, seed: int) -> dict[str, list]:
    gen = DialogueGenerator(pools, "heldout", seed=seed)
    return {kind: [gen.example(kind) for _ in range(n)] for kind in EVAL_KINDS}


def table(rows: dict[str, dict[str, float]], meta: dict) -> str:
    """Per reader: each kind's answered rate (its exact-reply rate in brackets)."""
    head = "| reader | " + " | ".join(EVAL_KINDS) + " | trained params | train s |"
    lines = [head, "|" + "---|" * (len(EVAL_KINDS) + 3)]
    for name, r in rows.items():
        rates = " | ".join(f"{r[k]:.2f} ({r[k + '_exact']:.2f})" for k in EVAL_KINDS)
        params = f"{meta[name]['params']:,}" if name in meta else "0"
        secs = f"{meta[name]['train_s']:.0f}" if name in meta else "–"
        lines.append(f"| {name} | {rates} | {params} | {secs} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layer", type=int, default=20, help="memory layer index (of 30)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--eval", type=int, default=24, help="held-out examples per kind")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--save", type=Path, default=None, help="write each trained model under SAVE/<variant>"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "log.jsonl"
    log_path.write_text("")

    def log(rec: dict) -> None:
        with log_path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        print(json.dumps(rec), flush=True)

    tok = ChatTokenizer.load(args.model_dir)
    train = split_conversations(load_chitchat())["train"]
    pools = ValuePools.build(exclude=words_of(m.content for c in train for m in c.messages))
    evals = heldout_examples(pools, args.eval, args.seed)
    base = load_pretrained(args.model_dir).eval()
    rows: dict[str, dict[str, float]] = {}
    meta: dict[str, dict] = {}
    t0 = time.perf_counter()
    rows["note (shipped)"] = reader_rates(base, tok, evals, "note")
    log({"reader": "note", **rows["note (shipped)"], "s": round(time.perf_counter() - t0, 1)})
    for variant in args.variants.split(","):
        torch.manual_seed(args.seed)
        model = with_memory_layer(base, args.layer)
        names = prepare_variant(model, variant)
        trained = set(names)
        n_params = sum(p.numel() for n, p in model.named_parameters() if n in trained)
        gen = DialogueGenerator(pools, "train", seed=args.seed)
        t1 = time.perf_counter()
        losses = train_slots(
            model,
            tok,
            gen,
            args.steps,
            args.batch,
            args.lr,
            log=lambda r, v=variant: log({"variant": v, **r}),
        )
        meta[f"slots, {variant}"] = {
            "params": n_params,
            "train_s": time.perf_counter() - t1,
            "loss_first": losses[0],
            "loss_last": sum(losses[-5:]) / len(losses[-5:]),
        }
        rows[f"slots, {variant}"] = reader_rates(model, tok, evals, "slots")
        log({"reader": f"slots, {variant}", **rows[f"slots, {variant}"]})
        if args.save is not None:
            save_servable(model, args.model_dir, args.save / variant)
        del model
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows, "meta": meta}
    (args.out / "slots.json").write_text(json.dumps(result, indent=2) + "\n")
    cmd = "PYTHONPATH=. python scripts/slots_on_hybrid.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
    )
    md = (
        "# Memory slots on the distilled backbone vs the memory note\n\n"
        f"Share of replies that name the value (or, never told or forgotten, say they "
        f"don't know), exact-reply rate in brackets, on {args.eval} held-out examples per "
        f"kind (held-out values; teacher-forced argmax replies); "
        f"slots: one token-slot copy-head layer at layer {args.layer}, "
        f"{args.steps} steps of {args.batch} examples.\n\n"
        f"    {cmd}\n\n" + table(rows, meta)
    )
    (args.out / "slots.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
