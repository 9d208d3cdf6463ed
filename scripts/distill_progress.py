"""Summarise a distillation run's log.jsonl as Markdown (tokens, loss curve, held-out scores).

    PYTHONPATH=$PWD python scripts/distill_progress.py runs/distill-hybrid/log.jsonl \
        [--update docs/distill/progress.md] [--bin 5]

With ``--update`` the table replaces what lies between the file's
``<!-- progress:start -->`` and ``<!-- progress:end -->`` markers; else it is printed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

START, END = "<!-- progress:start -->", "<!-- progress:end -->"


def _records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def summary(records: list[dict], bin_size: int = 5) -> str:
    """The run's numbers as Markdown."""
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "eval" in r]
    starts = [r for r in records if r.get("event") == "start"]
    out = []
    if steps:
        last = steps[-1]
        rate = [r["tok_per_s"] for r in steps[-10:]]
        out += [
            f"- last step: {last['step']} (stage `{last['stage']}`, step {last['stage_step']} "
            f"of it), {last['tokens']:,} tokens seen, {last['elapsed_s'] / 3600:.2f} h of "
            f"training, {sum(rate) / len(rate):.2f} tokens/s over the last {len(rate)} steps",
            f"- processes started (resumes included): {len(starts)}",
            "",
            f"Loss curve (mean over bins of {bin_size} steps; `transfer`: relative MSE of "
            "the layers' mixer outputs to the teacher's attention, averaged over layers; "
            "`distill`: KL(teacher ‖ student) in nats per token):",
            "",
            "| stage | steps | tokens at end | mean loss |",
            "|---|---|---|---|",
        ]
        for stage in dict.fromkeys(r["stage"] for r in steps):
            rows = [r for r in steps if r["stage"] == stage]
            for i in range(0, len(rows), bin_size):
                chunk = rows[i : i + bin_size]
                mean = sum(r["loss"] for r in chunk) / len(chunk)
                span = f"{chunk[0]['stage_step']}–{chunk[-1]['stage_step']}"
                out.append(f"| {stage} | {span} | {chunk[-1]['tokens']:,} | {mean:.5f} |")
    if evals:
        out += [
            "",
            "Held-out scores (test split; `far`: bits/token at positions beyond the window "
            "and sinks; `off`: the same weights with the retention path zeroed, α = 0):",
            "",
            "| step | stage | tokens | student bits/char | off bits/char | teacher bits/char "
            "| student far | off far | teacher far | scored tokens |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in evals:
            e = r["eval"]
            s, t, off = e["student"], e["teacher"], e.get("retention_off")

            def cell(x: dict | None, key: str) -> str:
                return "—" if x is None else f"{x[key]:.4f}"

            out.append(
                f"| {r['step']} | {r['stage']} | {r['tokens']:,} | {cell(s, 'bits_per_char')} "
                f"| {cell(off, 'bits_per_char')} | {cell(t, 'bits_per_char')} "
                f"| {cell(s, 'far_bits_per_token')} | {cell(off, 'far_bits_per_token')} "
                f"| {cell(t, 'far_bits_per_token')} | {s['tokens']:,} |"
            )
    return "\n".join(out) + "\n"


def plot(records: list[dict], png: Path) -> None:
    """Loss per step of each stage (one panel each: their losses are different units)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [r for r in records if "stage_step" in r and "loss" in r]
    names = list(dict.fromkeys(r["stage"] for r in stages))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = [r for r in stages if r["stage"] == name]
        ax.plot([r["tokens"] for r in rows], [r["loss"] for r in rows], lw=0.6, alpha=0.5)
        k = 10  # a running mean over 10 steps shows the trend through the noise
        mean = [sum(r["loss"] for r in rows[max(0, i - k + 1) : i + 1]) / min(i + 1, k)
                for i in range(len(rows))]  # fmt: skip
        ax.plot([r["tokens"] for r in rows], mean, lw=1.5)
        ax.set_title(name)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("relative MSE" if name == "transfer" else "KL (nats/token)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("log", type=Path)
    ap.add_argument("--update", type=Path, default=None)
    ap.add_argument("--bin", type=int, default=5)
    ap.add_argument("--png", type=Path, default=None, help="also plot the loss curves here")
    args = ap.parse_args()
    if args.png is not None:
        plot(_records(args.log), args.png)
    text = summary(_records(args.log), args.bin)
    if args.update is None:
        print(text)
        return
    doc = args.update.read_text()
    head, _, rest = doc.partition(START)
    _, _, tail = rest.partition(END)
    args.update.write_text(f"{head}{START}\n{text}{END}{tail}")


if __name__ == "__main__":
    main()
