"""Decode benchmark: our RetNet against yet-another-retnet and a Hugging Face Llama.

`memsvc bench decode --out DIR` builds the three models at one shape (d_model 512,
6 layers, 8 heads, FFN 2048, vocab 32000, fp32, batch 1, random weights: nothing is
downloaded), and for each prompt length L it measures

- prefill: wall time to turn an L-token prompt into a decoding state (our chunkwise
  prefill, yet-another-retnet's chunkwise form fed slice by slice, Llama's forward
  filling its KV cache slice by slice);
- decode: the median ms/token of greedy steps after the prompt, after a few warm-up steps;
- state: bytes of the recurrent state (RetNets) or of the KV cache (Llama).

It writes `decode.json`, `decode.md` (table and targets) and `decode.png` to DIR.
The three models run in the same process, one after the other, so their ratios come
from the same machine at the same time. Runners are in `memsvc.bench.decode_models`.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

import torch
import typer

from memsvc.bench.decode_models import RUNNERS, Runner, Shape

LABELS = {
    "ours": "RetNet (ours)",
    "yar": "yet-another-retnet",
    "llama": "HF Llama + KV",
    "ours-matched": "ours, yar-sized",
}
QUICK_LENGTHS = (128, 1024, 4096)
FULL_LENGTHS = (128, 1024, 4096, 8192, 16384, 32768)


@dataclass
class Measurement:
    """One model at one prompt length."""

    model: str
    length: int
    prefill_s: float
    decode_ms: float  # median over the timed steps
    decode_ms_all: list[float] = field(default_factory=list)
    state_bytes: int = 0


def measure(
    runner: Runner, length: int, n_decode: int, n_warmup: int, seed: int = 0
) -> Measurement:
    """Prefill a random L-token prompt, then time greedy decode steps one by one.

    Greedy (argmax) feedback makes each step depend on the last, as in real decoding.
    """
    gen = torch.Generator().manual_seed(seed + length)
    prompt = torch.randint(0, runner.shape.vocab, (1, length), generator=gen)
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = runner.prefill(prompt)
        prefill_s = time.perf_counter() - t0
        token = logits.argmax(-1)
        times: list[float] = []
        for i in range(n_warmup + n_decode):
            t0 = time.perf_counter()
            logits = runner.step(token)
            token = logits.argmax(-1)  # argmax forces the step to finish before the clock stops
            if i >= n_warmup:
                times.append((time.perf_counter() - t0) * 1e3)
        state = runner.state_bytes()
    runner.reset()
    gc.collect()
    return Measurement(
        model=runner.name,
        length=length,
        prefill_s=prefill_s,
        decode_ms=statistics.median(times),
        decode_ms_all=[round(t, 3) for t in times],
        state_bytes=state,
    )


def _lookup(results: list[Measurement], model: str, length: int) -> Measurement | None:
    return next((m for m in results if m.model == model and m.length == length), None)


def _goal(name: str, value: float, target: str, met: bool) -> dict:
    return {"name": name, "value": value, "target": target, "met": met}


def targets(results: list[Measurement]) -> list[dict]:
    """The issue's targets, each as {name, value, target, met}; skipped when data is missing.

    - our decode flat within 10% from the shortest to the longest prompt (max/min - 1);
    - our decode latency <= 0.9x yet-another-retnet's (worst length);
    - Llama/ours decode >= 2.5 at 8k and >= 4 at 32k;
    - our 8k prefill <= 0.8x yet-another-retnet's.
    """
    out: list[dict] = []
    ours = sorted((m for m in results if m.model == "ours"), key=lambda m: m.length)
    if len(ours) >= 2:
        spread = max(m.decode_ms for m in ours) / min(m.decode_ms for m in ours) - 1
        name = f"ours decode spread {ours[0].length}..{ours[-1].length}"
        out.append({"name": name, "value": spread, "target": "<= 0.10", "met": spread <= 0.10})
    ratios = [
        (m.length, m.decode_ms / y.decode_ms)
        for m in ours
        if (y := _lookup(results, "yar", m.length)) is not None
    ]
    if ratios:
        worst = max(r for _, r in ratios)
        out.append(
            {
                "name": "ours/yar decode (worst length)",
                "value": worst,
                "target": "<= 0.90",
                "met": worst <= 0.9,
                "per_length": dict(ratios),
            }
        )
    for length, need in ((8192, 2.5), (32768, 4.0)):
        mine, llama = _lookup(results, "ours", length), _lookup(results, "llama", length)
        if mine and llama:
            speedup = llama.decode_ms / mine.decode_ms
            out.append(
                {
                    "name": f"llama/ours decode at {length}",
                    "value": speedup,
                    "target": f">= {need}",
                    "met": speedup >= need,
                }
            )
    mine, yar = _lookup(results, "ours", 8192), _lookup(results, "yar", 8192)
    if mine and yar:
        ratio = mine.prefill_s / yar.prefill_s
        out.append(_goal("ours/yar prefill at 8192", ratio, "<= 0.80", ratio <= 0.8))
    return out


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def markdown(results: list[Measurement], goals: list[dict], meta: dict) -> str:
    """A table: one row per length, ms/token, prefill seconds and state bytes per model."""
    models = [m for m in LABELS if any(r.model == m for r in results)]
    lengths = sorted({r.length for r in results})
    head = ["L"]
    head += [f"{LABELS[m]} ms/token" for m in models]
    head += [f"{LABELS[m]} prefill s" for m in models]
    head += [f"{LABELS[m]} state" for m in models]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for length in lengths:
        cells = [str(length)]
        picks = [_lookup(results, m, length) for m in models]
        cells += [f"{p.decode_ms:.2f}" if p else "–" for p in picks]
        cells += [f"{p.prefill_s:.2f}" if p else "–" for p in picks]
        cells += [_human_bytes(p.state_bytes) if p else "–" for p in picks]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| target | value | goal | met |", "|---|---|---|---|"]
    for g in goals:
        met = "yes" if g["met"] else "NO"
        lines.append(f"| {g['name']} | {g['value']:.3f} | {g['target']} | {met} |")
    weights = ", ".join(f"{m} {b / 1e6:.0f} MB" for m, b in meta["weights_read_per_token"].items())
    lines += ["", f"Weights read per decode step (all but the embedding table): {weights}."]
    lines += [f"Machine: {meta['machine']}; torch {meta['torch']}, {meta['threads']} threads."]
    before, after = meta["loadavg_1_5_15_before"], meta["loadavg_1_5_15_after"]
    lines.append(f"Load average (1, 5, 15 min) before: {before}, after: {after}.")
    lines.append(f"Command: `{meta['command']}`")
    return "\n".join(lines) + "\n"


def plot(results: list[Measurement], path: Path) -> None:
    """Decode ms/token and prefill seconds against prompt length, one line per model."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on the bench machines
    import matplotlib.pyplot as plt

    fig, (ax_dec, ax_pre) = plt.subplots(1, 2, figsize=(11, 4))
    for model in sorted({r.model for r in results}):
        rows = sorted((r for r in results if r.model == model), key=lambda r: r.length)
        xs = [r.length for r in rows]
        ax_dec.plot(xs, [r.decode_ms for r in rows], marker="o", label=model)
        ax_pre.plot(xs, [r.prefill_s for r in rows], marker="o", label=model)
    for ax, title in ((ax_dec, "decode ms/token (median)"), (ax_pre, "prefill seconds")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length L")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend()
    ax_pre.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(out: Path, results: list[Measurement], meta: dict, errors: list[str]) -> dict:
    """Write decode.json, decode.md and decode.png for the results so far."""
    meta = {**meta, "loadavg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]}
    goals = targets(results)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "meta": meta,
        "results": [asdict(r) for r in results],
        "targets": goals,
        "errors": errors,
    }
    (out / "decode.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(results, goals, meta)
    if errors:
        text += "\nNot measured:\n" + "".join(f"- {e}\n" for e in errors)
    (out / "decode.md").write_text(text)
    if results:
        plot(results, out / "decode.png")
    return report


def run(
    out: Path,
    lengths: list[int],
    models: list[str],
    n_decode: int,
    n_warmup: int,
    threads: int,
    command: str,
) -> dict:
    """Measure every model at every length and write decode.{json,md,png} under `out`.

    The report is rewritten after every measurement, so a run stopped early keeps what
    it measured; a model that fails at one length is reported and the run goes on.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = Shape()
    runners = [RUNNERS[name](shape) for name in models]
    meta = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs (shared with other work)",
        "torch": torch.__version__,
        "threads": threads,
        "command": command,
        "n_decode": n_decode,
        "n_warmup": n_warmup,
        "shape": asdict(shape),
        "weights_read_per_token": {r.name: r.weight_bytes_per_token() for r in runners},
        "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # other work on the machine skews timings: say how busy it was
        "loadavg_1_5_15_before": [round(x, 2) for x in os.getloadavg()],
    }
    results: list[Measurement] = []
    errors: list[str] = []
    for length in lengths:
        for runner in runners:
            try:
                m = measure(runner, length, n_decode, n_warmup)
            except (RuntimeError, MemoryError) as exc:  # e.g. out of memory at long L
                runner.reset()
                errors.append(f"{runner.name} at L={length}: {type(exc).__name__}: {exc}")
                typer.echo(f"L={length:>6} {runner.name:>6}: FAILED {exc}")
                continue
            results.append(m)
            typer.echo(
                f"L={length:>6} {m.model:>6}: decode {m.decode_ms:8.2f} ms/token, "
                f"prefill {m.prefill_s:8.2f} s, state {_human_bytes(m.state_bytes)}"
            )
            write_report(out, results, meta, errors)
    return write_report(out, results, meta, errors)


def cli(
    out: Annotated[Path, typer.Option(help="folder for decode.json, decode.md, decode.png")],
    lengths: Annotated[
        str | None, typer.Option(help="comma-separated prompt lengths, e.g. 128,8192")
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick/--full", help="quick: L up to 4k, fewer steps")
    ] = True,
    models: Annotated[
        str, typer.Option(help="subset of ours,yar,llama,ours-matched")
    ] = "ours,yar,llama",
    decode_tokens: Annotated[int | None, typer.Option(help="timed steps per length")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads (default: all CPUs)")] = None,
) -> None:
    """Decode ms/token, prefill time and state bytes for our RetNet, yet-another-retnet
    and a same-size HF Llama with KV cache, at several prompt lengths."""
    picked = [int(x) for x in lengths.split(",")] if lengths else None
    chosen = picked or list(QUICK_LENGTHS if quick else FULL_LENGTHS)
    names = [m.strip() for m in models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(RUNNERS))
    if unknown:
        raise typer.BadParameter(f"unknown models {unknown}; pick from {sorted(RUNNERS)}")
    n_decode = decode_tokens or (16 if quick else 32)
    command = "memsvc bench decode " + " ".join(
        [f"--out {out}", "--quick" if quick else "--full"]
        + ([f"--lengths {lengths}"] if lengths else [])
        + ([f"--models {models}"] if models != "ours,yar,llama" else [])
        + ([f"--decode-tokens {decode_tokens}"] if decode_tokens else [])
        + ([f"--threads {threads}"] if threads else [])
    )
    report = run(out, chosen, names, n_decode, 4, threads or os.cpu_count() or 1, command)
    typer.echo((out / "decode.md").read_text())
    if not report["results"]:
        raise typer.Exit(1)


if __name__ == "__main__":
    typer.run(cli)
