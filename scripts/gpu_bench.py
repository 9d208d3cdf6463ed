"""GPU benchmark: our RetNet at the fla-hub 1.3B shape vs a same-size Llama, bf16, one run.

    python scripts/gpu_bench.py --out DIR            # on a CUDA machine (scripts/gpu_bench.sh)
    python scripts/gpu_bench.py --smoke --out DIR    # tiny shape on CPU, < 60 s (CI test)

Shape (fla's ``RetNetConfig`` defaults, i.e. fla-hub/retnet-1.3B): d 2048, 24 layers, 8
heads, D_k 256, D_v 512 (value factor 2), GatedMLP 2816 (fla: 2/3 · 2 · d rounded up to
256), vocab 32000, untied head, no retention normalisation; random weights in bf16.
Llama: the same d, layers and vocab, 16 heads of 128, SwiGLU width chosen so that its
parameter count matches ours; full heads (as many KV heads as query heads), and, for the
record, grouped (4 query heads per KV head).

Rows (``gpu_bench_rows``): decode ms/step at batch 1, 8, 32, 64 after prompts of 1k, 8k,
32k, and at 128, 256 after 8k (our state is small enough for batches where Llama's cache
no longer fits; the headline takes each model's best batch); prefill tokens/s at batch 1;
the chunkwise retention kernel alone (fla's own bf16 vs ours); peak GPU memory. Writes
DIR/gpu.json (headline ratios at the top level, see ``gpu_bench_table``) and DIR/gpu.md
after every row, so a run cut short keeps what it has.
Sections run most valuable first and none starts once ``--budget-s`` is spent.

Triton: each new fla kernel variant costs many seconds of compilation on a fresh machine,
so the three variants this run needs are compiled first, in parallel worker processes
(``--warm-kernel``), into ``TRITON_CACHE_DIR`` (which gpu_bench.sh saves through $OUT).
Never imported by the service; uses retnet_core only (no storage, no faiss).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # retnet_core, and the gpu_bench_* siblings

from gpu_bench_triton import WARM_KERNELS, warm_kernel  # noqa: E402

# what to pass to the device tool (see docs/bench/gpu.md)
DEVICE_COMMAND = (
    'run(command="bash scripts/gpu_bench.sh", carry=[".whl", "out/gpu_bench"], timeout_s=540)'
)


@dataclass
class Plan:
    """What one run measures (``full_plan`` on a GPU, ``smoke_plan`` on CPU)."""

    name: str
    retnet: dict
    llama: dict
    lengths: list[int]
    batches: list[int]  # the grid, at every length
    extra_batches: list[int]  # beyond it, at the headline length only (ours, full-head Llama)
    headline_length: int
    memory_batch: int
    steps: int
    warmup: int
    reps: int
    kernel_reps: int
    budget_s: float
    device: str
    autotune_keep: int
    kv_cap_bytes: int | None = None
    gqa_group: int = 4
    dtype: str = "bfloat16"
    llama_heads: int = 16


def fla_retnet_shape(hidden: int, layers: int, heads: int, vocab: int) -> dict:
    """Our RetNetConfig fields for fla's RetNet (expand_k 1, expand_v 2, hidden_ratio 2)."""
    ffn = int(hidden * 2 * 2 / 3)
    ffn = 256 * ((ffn + 255) // 256)  # fla's GatedMLP rounds up to a multiple of 256
    return {
        "vocab_size": vocab,
        "d_model": hidden,
        "n_layers": layers,
        "n_heads": heads,
        "ffn_dim": ffn,
        "value_factor": 2.0,
        "retention_norm": "none",
        "tie_embeddings": False,
    }


def llama_width(retnet: dict, multiple: int) -> int:
    """SwiGLU width I giving a full-head Llama our parameters per layer, to ``multiple``.

    Ours per layer: q, k (d² each) + v, g, o (2d² each) = 8d², FFN 3·d·ffn. Llama: 4d²
    (whatever the head count) + 3·d·I. At 1.3B: I = 5504, 1.345 B parameters vs our 1.352 B.
    """
    exact = retnet["ffn_dim"] + 4 * retnet["d_model"] / 3
    return multiple * round(exact / multiple)


def _plan(name: str, retnet: dict, heads: int, multiple: int, **kw) -> Plan:
    llama = {
        "hidden": retnet["d_model"],
        "layers": retnet["n_layers"],
        "vocab": retnet["vocab_size"],
        "intermediate": llama_width(retnet, multiple),
    }
    return Plan(name=name, retnet=retnet, llama=llama, llama_heads=heads, **kw)


def full_plan(args) -> Plan:
    return _plan(
        "1.3B, bf16",
        fla_retnet_shape(2048, 24, 8, 32000),
        heads=16,
        multiple=128,
        lengths=[1024, 8192, 32768],
        batches=[1, 8, 32, 64],
        extra_batches=[128, 256],
        headline_length=8192,
        memory_batch=32,
        steps=16,
        warmup=3,
        reps=2,
        kernel_reps=10,
        budget_s=args.budget_s or 420.0,
        device=args.device or "cuda",
        autotune_keep=args.autotune_keep,
    )


def smoke_plan(args) -> Plan:
    """Tiny shape and lengths on CPU; the KV cap makes the largest Llama rows OOM."""
    return _plan(
        "smoke: tiny shape, CPU",
        fla_retnet_shape(64, 2, 4, 256),
        heads=4,
        multiple=16,
        lengths=[16, 64],
        batches=[1, 2, 4],
        extra_batches=[6],
        headline_length=64,
        memory_batch=2,
        steps=2,
        warmup=1,
        reps=1,
        kernel_reps=2,
        budget_s=args.budget_s or 120.0,
        device=args.device or "cpu",
        autotune_keep=args.autotune_keep,
        kv_cap_bytes=100_000,
    )


# ---- the run ----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="where gpu.json and gpu.md go")
    p.add_argument("--smoke", action="store_true", help="tiny shape on CPU (the CI test)")
    p.add_argument("--budget-s", type=float, default=None, help="start no row after this")
    p.add_argument("--device", default=None, help="default: cuda (smoke: cpu)")
    p.add_argument("--autotune-keep", type=int, default=2, help="fla configs per kernel; 0 all")
    p.add_argument("--no-warm-workers", action="store_true", help="compile in this process")
    p.add_argument("--warm-kernel", choices=WARM_KERNELS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    plan = smoke_plan(args) if args.smoke else full_plan(args)
    if args.warm_kernel:
        return warm_kernel(args.warm_kernel, plan)
    from gpu_bench_sections import Bench  # imports torch: not needed before this point

    command = " ".join(["python", *sys.argv]) if args.smoke else DEVICE_COMMAND
    bench = Bench(plan, args.out, command)
    try:
        return bench.run(warm=not args.no_warm_workers)
    except KeyboardInterrupt:  # gpu_bench.sh's hard time limit: keep what was measured
        bench.report["skipped"].append("the rest: interrupted at the hard time limit")
        bench.save()
        return 3


if __name__ == "__main__":
    sys.exit(main())
