"""Prefill at one prompt length, the models interleaved round by round (supplement to
docs/bench/decode.md, whose prefill column times each model once, one after the other).

    .venv/bin/python scripts/prefill_interleaved.py [--length 8192] [--rounds 3] [--threads 2]

Each round prefills the same prompt with every model in turn (models of
memsvc.bench.decode_models; ours also at chunk 512 and 4096), so load from other work
hits all alike; prints min and median seconds and ratios to yar.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from memsvc.bench.decode_models import RUNNERS, OursRunner, Shape


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=8192)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = Shape()
    runners = {"ours": RUNNERS["ours"](shape), "ours-vf1": RUNNERS["ours-vf1"](shape)}
    for chunk in (512, 4096):
        r = OursRunner(shape, prefill_chunk=chunk)
        r.model.load_state_dict(runners["ours"].model.state_dict())
        runners[f"ours-chunk{chunk}"] = r
    runners["yar"] = RUNNERS["yar"](shape)
    gen = torch.Generator().manual_seed(args.length)
    prompt = torch.randint(0, shape.vocab, (1, args.length), generator=gen)
    load = os.getloadavg()
    times: dict[str, list[float]] = {n: [] for n in runners}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for n, r in runners.items():
                t0 = time.perf_counter()
                r.prefill(prompt)
                times[n].append(time.perf_counter() - t0)
                r.reset()
    print(f"L={args.length}, {args.rounds} rounds, {args.threads} threads")
    print(f"load average before: {load}, after: {os.getloadavg()}")
    print("| model | min s | median s | min / yar | median / yar |")
    print("|---|---|---|---|---|")
    ymin, ymed = min(times["yar"]), statistics.median(times["yar"])
    for n, t in times.items():
        lo, med = min(t), statistics.median(t)
        print(f"| {n} | {lo:.2f} | {med:.2f} | {lo / ymin:.2f} | {med / ymed:.2f} |")


if __name__ == "__main__":
    main()
