"""Per-token decode latency, ours vs yet-another-retnet, side by side in one process.

    .venv/bin/python scripts/profile_step.py [--length 128] [--steps 200] [--threads 2]

Builds the benchmark's models (memsvc.bench.decode_models: d 512, 6 layers, 8 heads,
FFN 2048, vocab 32000, fp32, batch 1, random weights): ours at the default config,
ours through the generic (pre-fast-path) step ("ours-generic"), ours at yar's weight
count ("ours-matched": value_factor 1, GLU 1365), ours with the opt-in
``compile_step()`` ("ours-compiled"), ours with value_factor 1 ("ours-vf1": values and
gate d_model wide like yar's; gated FFN 2048 kept), that compiled, and yar. Each is
prefilled with the same L-token prompt, then the three decode interleaved, one step of
each per round, so machine noise hits all alike. Prints median ms/token and ratios,
and the torch op count of one of our steps (profiler).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import ClassVar

import torch

from memsvc.bench.decode_models import OursMatchedRunner, OursRunner, Shape, YarRunner


class GenericRunner(OursRunner):
    """Ours through the generic per-module step (the path before the fast one)."""

    name = "ours-generic"

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape)
        self.model._fast_ok = lambda: False


class CompiledRunner(OursRunner):
    """Ours with the opt-in ``compile_step()`` (inductor); compiles on its first step."""

    name = "ours-compiled"

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape)
        self.model.compile_step()


class Vf1Runner(OursRunner):
    """Ours with value_factor 1: values and gate d_model wide, as yar's (FFN unchanged)."""

    name = "ours-vf1"
    overrides: ClassVar[dict[str, float | int]] = {"value_factor": 1.0}


class Vf1CompiledRunner(Vf1Runner):
    name = "ours-vf1-compiled"

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape)
        self.model.compile_step()


def count_ops(runner) -> int:
    from torch.profiler import ProfilerActivity, profile

    token = torch.tensor([1])
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        runner.step(token)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--models",
        default="ours,ours-generic,ours-compiled,ours-vf1,ours-vf1-compiled,ours-matched,yar",
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    torch.manual_seed(0)
    shape = Shape()
    kinds = {
        "ours": OursRunner,
        "ours-generic": GenericRunner,
        "ours-compiled": CompiledRunner,
        "ours-vf1": Vf1Runner,
        "ours-vf1-compiled": Vf1CompiledRunner,
        "ours-matched": OursMatchedRunner,
        "yar": YarRunner,
    }
    runners = {name: kinds[name](shape) for name in args.models.split(",")}
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, shape.vocab, (1, args.length), generator=gen)
    times: dict[str, list[float]] = {n: [] for n in runners}
    with torch.inference_mode():
        tokens = {n: r.prefill(prompt).argmax(-1) for n, r in runners.items()}
        for n, r in runners.items():  # first step: compilation, if any
            t0 = time.perf_counter()
            tokens[n] = r.step(tokens[n]).argmax(-1)
            print(f"{n}: first step {time.perf_counter() - t0:.2f} s")
        for i in range(args.warmup + args.steps):
            for n, r in runners.items():
                t0 = time.perf_counter()
                tokens[n] = r.step(tokens[n]).argmax(-1)
                if i >= args.warmup:
                    times[n].append((time.perf_counter() - t0) * 1e3)
    med = {n: statistics.median(t) for n, t in times.items()}
    ops = {n: count_ops(r) for n, r in runners.items()}
    print(f"L={args.length}, {args.steps} steps, {args.threads} threads, torch {torch.__version__}")
    print(f"load average before: {load}, after: {os.getloadavg()}")
    print("| model | median ms | p10 ms | min ms | median/yar | p10/yar | aten ops | MB read |")
    print("|---|---|---|---|---|---|---|---|")
    p10 = {n: statistics.quantiles(t, n=10)[0] for n, t in times.items()}
    for n, t in times.items():
        mb = runners[n].weight_bytes_per_token() / 1e6
        rel = (
            (f"{med[n] / med['yar']:.3f}", f"{p10[n] / p10['yar']:.3f}")
            if "yar" in med
            else ("-", "-")
        )
        print(
            f"| {n} | {med[n]:.2f} | {p10[n]:.2f} | {min(t):.2f} | {rel[0]} | {rel[1]} "
            f"| {ops[n]} | {mb:.0f} |"
        )


if __name__ == "__main__":
    main()
