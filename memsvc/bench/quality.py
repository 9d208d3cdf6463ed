"""Language-model quality: the RetNet against the same-size Transformer, same data.

`memsvc bench quality --retnet DIR --baseline DIR --out OUT` scores both checkpoints
(``configs/default.yaml`` and ``configs/baseline.yaml`` train them with one recipe on the
same tokens) on the **whole held-out test split** of chit-chat — conversations neither
training nor checkpoint selection saw — with
:func:`retnet_core.training.evaluation.evaluate_checkpoint`: perplexity per token and
bits per character (tokenizer-independent), plus held-out memory-dialogue answer rates
without slots (in-context recall, passage answers).

Targets (issue 7): RetNet ≤ 1.40 bits per character, and within 5% of the Transformer's.
Writes ``quality.json``, ``quality.md`` and, from the runs' ``log.jsonl`` next to the
checkpoints, ``loss.png`` (training and validation loss of both runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from memsvc.bench._live import machine_info

TARGET_BPC, TARGET_GAP = 1.40, 0.05


def _log_of(checkpoint: Path) -> Path | None:
    """The run's log.jsonl: beside ``checkpoint`` (run/best) or inside it."""
    for p in (checkpoint.parent / "log.jsonl", checkpoint / "log.jsonl"):
        if p.exists():
            return p
    return None


def _rows(log: Path) -> list[dict]:
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]


def _curves(logs: dict[str, Path], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    offsets = {name: 0 for name in logs}
    if "RetNet stage 2" in logs and "RetNet" in logs:  # a continuation: plot after stage 1
        offsets["RetNet stage 2"] = max(r["step"] for r in _rows(logs["RetNet"]))
    for i, (name, log) in enumerate(logs.items()):
        rows, at = _rows(log), offsets[name]
        train = [(at + r["step"], r.get("lm_loss", r["loss"])) for r in rows if "loss" in r]
        val = [(at + r["step"], r["eval"]["loss"]) for r in rows if "eval" in r]
        if train:
            ax.plot(*zip(*train, strict=True), color=f"C{i}", alpha=0.35, linewidth=1)
        if val:
            ax.plot(*zip(*val, strict=True), "o-", color=f"C{i}", label=f"{name} validation")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token); faint: training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


ROW_LABELS = (
    "parameters",
    "test tokens scored",
    "perplexity / token",
    "bits / character",
    "in-context recall (held-out values)",
    "passage answers (held-out values)",
    "cross-session, no memory (floor)",
)


def _cells(score: dict) -> list[str]:
    """One checkpoint's column of the table, in the order of ROW_LABELS."""
    return [
        f"{score['params'] / 1e6:.2f}M",
        f"{score['tokens']:.0f}",
        f"{score['ppl']:.2f}",
        f"{score['bits_per_char']:.4f}",
        f"{score['in_context']:.3f}",
        f"{score['passage']:.3f}",
        f"{score['recall_no_memory']:.3f}",
    ]


def _markdown(res: dict[str, dict], meta: dict) -> str:
    r, b = res["retnet"], res["transformer"]
    gap = r["bits_per_char"] / b["bits_per_char"] - 1.0
    bpc_ok, gap_ok = r["bits_per_char"] <= TARGET_BPC, gap <= TARGET_GAP
    columns = {"RetNet": _cells(r), "Transformer": _cells(b)}
    columns["Transformer"][-1] = "—"  # it has no memory to switch off
    if "shipped" in res:  # the memory stage's checkpoint: what memsvc serves
        columns["RetNet + memory stage (shipped)"] = _cells(res["shipped"])
    rows = [(label, *cells) for label, *cells in zip(ROW_LABELS, *columns.values(), strict=True)]
    head = "| | " + " | ".join(columns) + " |"
    lines = [
        "# RetNet vs same-size Transformer on held-out chit-chat",
        "",
        f"Command: `{meta['command']}`",
        "",
        head,
        "|---|" + "---|" * len(columns),
        *["| " + " | ".join(row) + " |" for row in rows],
        "",
        f"- RetNet ≤ {TARGET_BPC:.2f} bits/char: "
        f"{'met' if bpc_ok else '**missed**'} ({r['bits_per_char']:.4f}"
        + ("" if bpc_ok else f", gap {r['bits_per_char'] - TARGET_BPC:+.4f}")
        + ")",
        f"- RetNet within {TARGET_GAP:.0%} of the Transformer: "
        f"{'met' if gap_ok else '**missed**'} (RetNet/Transformer − 1 = {gap:+.2%})",
        "",
    ]
    return "\n".join(lines)


def cli(
    retnet: Annotated[Path, typer.Option(help="the RetNet checkpoint (e.g. runs/default/best)")],
    baseline: Annotated[Path, typer.Option(help="the Transformer (e.g. runs/baseline/best)")],
    out: Annotated[Path, typer.Option(help="folder for quality.json / .md and loss.png")],
    split: Annotated[str, typer.Option(help="chit-chat split")] = "test",
    examples: Annotated[int, typer.Option(min=1, help="held-out dialogues per kind")] = 200,
    shipped: Annotated[
        Path | None, typer.Option(help="a later stage of the RetNet (e.g. the shipped model)")
    ] = None,
) -> None:
    """Held-out perplexity and bits/char of the RetNet vs the same-size Transformer."""
    from retnet_core.training.evaluation import evaluate_checkpoint

    res: dict[str, Any] = {
        "retnet": evaluate_checkpoint(retnet, split, examples=examples),
        "transformer": evaluate_checkpoint(baseline, split, examples=examples),
    }
    if shipped is not None:
        res["shipped"] = evaluate_checkpoint(shipped, split, examples=examples)
    meta = {
        "command": (
            f"memsvc bench quality --retnet {retnet} --baseline {baseline} --out {out}"
            + (f" --split {split}" if split != "test" else "")
            + (f" --shipped {shipped}" if shipped else "")
        ),
        "machine": machine_info(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.json").write_text(json.dumps({"results": res, "meta": meta}, indent=2))
    (out / "quality.md").write_text(_markdown(res, meta))
    runs = [("RetNet", retnet), ("Transformer", baseline), ("RetNet stage 2", shipped)]
    logs = {n: _log_of(p) for n, p in runs if p is not None}
    found = {n: p for n, p in logs.items() if p is not None}
    if found:
        _curves(found, out / "loss.png")
    typer.echo((out / "quality.md").read_text())
