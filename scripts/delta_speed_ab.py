"""Two assembled checkpoints of one architecture, decoded side by side in one process.

Does a new delta change decode speed, or does the machine? Each checkpoint is loaded
with int8 weights (the CPU default), one torch thread, and generates 32 tokens after a
short chat prompt, alternating runs so machine noise hits both alike. Prints ms/token
(prefill included) per run and the median.

    python scripts/delta_speed_ab.py /tmp/exp/hyb-old /tmp/exp/hyb2 --runs 4
"""

from __future__ import annotations

import argparse
import time

import torch

from retnet_core.checkpoint import load_pretrained
from retnet_core.generate import generate
from retnet_core.precision import apply_precision
from retnet_core.sampling import SamplingParams
from retnet_core.tokenizer import ChatTokenizer, Message

PROMPT = "I am planning a weekend trip to the mountains with two friends, what should I pack?"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs=2, help="two assembled checkpoints")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = {d: apply_precision(load_pretrained(d), "int8").eval() for d in args.dirs}
    tok = ChatTokenizer.load(args.dirs[0])
    ids = tok.render_ids([Message("user", PROMPT)]) + tok.generation_prompt()
    params = SamplingParams(max_new_tokens=args.tokens, stop_token_ids=())
    times: dict[str, list[float]] = {d: [] for d in models}
    for _ in range(args.runs):
        for d, model in models.items():
            with torch.inference_mode():
                t0 = time.perf_counter()
                out = list(generate(model, ids, params=params))
            times[d].append((time.perf_counter() - t0) / len(out) * 1000)
    for d, v in times.items():
        median = sorted(v)[len(v) // 2]
        print(f"{d}: ms/token {[round(x, 1) for x in v]}, median {median:.1f}")


if __name__ == "__main__":
    main()
