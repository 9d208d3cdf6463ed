"""Weight precision side by side: fp32, bf16 and int8 decode on CPU, one run per shape.

`memsvc bench precision --out DIR` loads each model shape once, then for fp32, bf16 and
int8 weights (:mod:`retnet_core.precision`, the ``MEMSVC_WEIGHTS`` setting) measures:

- decode ms/token at batch 1 (median over ``--steps`` recurrent steps after a prompt);
- chunkwise prefill tokens/s over ``--prompt`` tokens;
- weight bytes;
- the next-token logits' relative error max |Δ| / max |logit| against fp32 on the same
  weights and prompt, and whether the greedy next token is the same.

Shapes: ``shipped`` (the trained default checkpoint), ``d512x6`` (d 512, 6 layers:
the shape `memsvc bench decode` compares with yet-another-retnet) and ``fla-1.3B`` (the
fla-hub 1.3B RetNet's shape through ``memsvc convert fla``'s config: d 2048, 24 layers,
8 heads, D_k 256, D_v 512; random weights: speed depends on shapes, not values).
Precisions of one shape run back to back in one process, so their ratios compare like
with like on a noisy machine. Writes ``precision.json`` and ``precision.md``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import torch
import typer

from memsvc.bench._live import machine_info

PRECISIONS = ("fp32", "bf16", "int8")
SHAPES = ("shipped", "d512x6", "fla-1.3B")


def build(shape: str) -> Any:
    """The fp32 model of ``shape`` (see the module docstring), in eval mode."""
    from retnet_core.checkpoint import load_pretrained
    from retnet_core.config import RetNetConfig
    from retnet_core.model import RetNetLM

    if shape == "shipped":
        from memsvc.config import DEFAULT_MODEL_DIR

        return load_pretrained(DEFAULT_MODEL_DIR).eval()
    torch.manual_seed(0)
    if shape == "d512x6":
        config = RetNetConfig(vocab_size=32000, d_model=512, n_layers=6, n_heads=4, ffn_dim=1024)
    elif shape == "fla-1.3B":
        from retnet_core.convert_fla import fla_config, fla_shape

        fla = {"hidden_size": 2048, "num_hidden_layers": 24, "num_heads": 8, "vocab_size": 32000}
        config = fla_config(fla_shape(fla))
    else:
        raise typer.BadParameter(f"unknown shape {shape!r}: one of {SHAPES}")
    return RetNetLM(config).eval()


@torch.inference_mode()
def measure(models: dict[str, Any], prompt: torch.Tensor, steps: int, repeats: int) -> dict:
    """Prefill ``prompt`` (1, T) ``repeats`` times, then ``steps`` greedy steps, on every
    model in turn (round-robin: each round times every precision once, so load that
    comes and goes on a shared machine falls on all of them alike).

    Returns, per precision: median prefill tokens/s, median decode ms/token, the first
    next-token logits (V,).
    """
    prefill: dict[str, list[float]] = {p: [] for p in models}
    decode: dict[str, list[float]] = {p: [] for p in models}
    states, tokens, first = {}, {}, {}
    for _ in range(repeats):
        for p, model in models.items():
            t0 = time.perf_counter()
            logits, states[p] = model.prefill(prompt, last_only=True)
            prefill[p].append(prompt.shape[1] / (time.perf_counter() - t0))
            first[p], tokens[p] = logits.float()[0], logits.float().argmax(-1)
    for _ in range(steps):
        for p, model in models.items():
            t0 = time.perf_counter()
            logits, states[p] = model.step(tokens[p], states[p])
            decode[p].append(1000 * (time.perf_counter() - t0))
            tokens[p] = logits.float().argmax(-1)
    return {
        p: {
            "prefill_tokens_per_s": statistics.median(prefill[p]),
            "decode_ms_per_token": statistics.median(decode[p]),
            "logits": first[p],
        }
        for p in models
    }


def run_shape(shape: str, prompt_len: int, steps: int, repeats: int) -> list[dict[str, Any]]:
    """The three precisions of one shape, measured round-robin (fp32: the reference).

    All three models are in memory together (a 1.3B shape: about 9.5 GB)."""
    from retnet_core.precision import apply_precision, weight_bytes

    models = {p: apply_precision(build(shape), p) for p in PRECISIONS}  # the same weights
    params = sum(p.numel() for p in models["fp32"].parameters())
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, models["fp32"].config.vocab_size, (1, prompt_len), generator=g)
    got = measure(models, prompt, steps, repeats)
    reference = got["fp32"]["logits"]
    rows = []
    for precision, model in models.items():
        logits = got[precision].pop("logits")
        rows.append(
            {
                "shape": shape,
                "params": params,
                "precision": precision,
                "weight_mb": weight_bytes(model) / 2**20,
                "logit_rel_error": float((logits - reference).abs().max() / reference.abs().max()),
                "same_next_token": bool(logits.argmax() == reference.argmax()),
                **got[precision],
            }
        )
        typer.echo(json.dumps(rows[-1]))
    return rows


def cpu_flags() -> list[str]:
    """The CPU's vector and matrix extensions that decide low-precision speed (Linux)."""
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next(
        (ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []
    )
    return [f for f in wanted if f in flags]


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any], command: str) -> str:
    """The table, with ratios to fp32 of the same shape and run."""
    lines = [
        "# Weight precision on CPU: fp32, bf16, int8 side by side",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {meta['cpus']} CPUs, torch {meta['torch']}, {meta['torch_threads']} threads, "
        f"load average {meta['loadavg_1_5_15']} at the start ({meta['time_utc']}).",
        f"CPU extensions: {', '.join(meta.get('cpu_flags') or ['none listed'])}; native bf16 "
        f"matmuls (oneDNN): {'yes' if meta.get('native_bf16') else 'no, emulated'}.",
        "The three precisions of a shape ran round-robin in one process (each prefill repeat "
        "and each decode step timed for all three in turn); compare the ratios.",
        "",
        "| shape | params | weights | MB | decode ms/token | × fp32 | prefill tok/s | × fp32 "
        "| logit rel. error | same next token |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = {r["shape"]: r for r in rows if r["precision"] == "fp32"}
    for r in rows:
        b = base[r["shape"]]
        lines.append(
            f"| {r['shape']} | {r['params'] / 1e6:.1f} M | {r['precision']} | "
            f"{r['weight_mb']:.0f} | {r['decode_ms_per_token']:.1f} | "
            f"{r['decode_ms_per_token'] / b['decode_ms_per_token']:.2f} | "
            f"{r['prefill_tokens_per_s']:.0f} | "
            f"{r['prefill_tokens_per_s'] / b['prefill_tokens_per_s']:.2f} | "
            f"{r['logit_rel_error']:.4f} | {'yes' if r['same_next_token'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def cli(
    out: Annotated[Path, typer.Option(help="folder for precision.json / .md")],
    shapes: Annotated[list[str] | None, typer.Option("--shape", help="[default: all]")] = None,
    prompt: Annotated[int, typer.Option(min=1, help="prompt tokens (prefill)")] = 256,
    steps: Annotated[int, typer.Option(min=1, help="decode steps (median)")] = 16,
    repeats: Annotated[int, typer.Option(min=1, help="prefills per precision (median)")] = 3,
    threads: Annotated[int | None, typer.Option(help="torch threads")] = None,
) -> None:
    """fp32 vs bf16 vs int8 weights: decode, prefill, memory and logit error per shape."""
    if threads:
        torch.set_num_threads(threads)
    from retnet_core.precision import native_bf16

    shapes = shapes or list(SHAPES)
    meta = {**machine_info(), "native_bf16": native_bf16(), "cpu_flags": cpu_flags()}
    rows = [row for shape in shapes for row in run_shape(shape, prompt, steps, repeats)]
    out.mkdir(parents=True, exist_ok=True)
    shape_flags = " ".join(f"--shape {s}" for s in shapes)
    command = (
        f"memsvc bench precision --out {out} {shape_flags} --prompt {prompt} --steps {steps} "
        f"--repeats {repeats}"
    )
    if threads:
        command += f" --threads {threads}"
    (out / "precision.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (out / "precision.md").write_text(markdown(rows, meta, command))
    typer.echo(markdown(rows, meta, command))
