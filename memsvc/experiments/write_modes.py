"""write-modes: append vs attention-based blend on a copy task (paper's open question 1).

A stream of L value tokens arrives in chunks of 4, each chunk written as one slot keyed
by its chunk id; afterwards every chunk id is asked for its 4 tokens (copy). Streams:

- distinct: every chunk id once (plain copy);
- repeats:  half of the chunks re-state an earlier chunk verbatim (duplicates);
- updates:  half of the chunks give an earlier id new content; the answer is the latest.

One SlotModel (width 4) is trained on the differentiable path; both modes then use the
same parameters through the inference path, so only the write rule differs.
Metrics: token accuracy, slots used, write latency per chunk, read latency per query.
"""

from __future__ import annotations

from pathlib import Path

import torch
import typer

from memsvc.experiments import harness
from memsvc.experiments.models import SlotModel
from memsvc.experiments.sanity import N_NAME, PARTS, fill_bank, train_slot_model

NAME = "write-modes"
WIDTH, N_VALUE, THRESHOLD = 4, 32, 0.9


def stream(n_chunks: int, kind: str, g: torch.Generator):
    """names (1, n, PARTS), values (1, n, WIDTH) in write order, and the expected latest
    value of every distinct id: (ids (U, PARTS), values (U, WIDTH))."""
    n_new = n_chunks if kind == "distinct" else n_chunks // 2
    ids = torch.randperm(N_NAME**PARTS, generator=g)[:n_new]
    vals = torch.randint(N_VALUE, (n_new, WIDTH), generator=g)
    order, contents = list(range(n_new)), [v for v in vals]
    latest = {i: vals[i] for i in range(n_new)}
    for _ in range(n_chunks - n_new):
        i = int(torch.randint(n_new, (1,), generator=g))
        new = vals[i] if kind == "repeats" else torch.randint(N_VALUE, (WIDTH,), generator=g)
        order.append(i)
        contents.append(new)
        latest[i] = new
    names = torch.stack([ids // N_NAME, ids % N_NAME], -1)
    w_names = names[torch.tensor(order)].unsqueeze(0)
    w_vals = torch.stack(contents).unsqueeze(0)
    return w_names, w_vals, names, torch.stack([latest[i] for i in range(n_new)])


@torch.no_grad()
def measure(model: SlotModel, mode: str, length: int, kind: str, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed * 7919 + length)
    w_names, w_vals, q_names, q_vals = stream(length // WIDTH, kind, g)
    with harness.timer() as tw:
        bank, recs = fill_bank(model, w_names, w_vals, mode=mode, threshold=THRESHOLD)
    with harness.timer() as tr:
        pred = model.answer(q_names.unsqueeze(0), bank).argmax(-1)[0]
    blends = sum(r.op == "blend" for r in recs)
    return {
        "mode": mode,
        "stream": kind,
        "L": length,
        "chunks": len(recs),
        "token_acc": (pred == q_vals).float().mean().item(),
        "chunk_exact": (pred == q_vals).all(-1).float().mean().item(),
        "slots": len(bank),
        "distinct_ids": len(q_vals),
        "blends": blends,
        "write_ms_per_chunk": 1000 * tw["s"] / len(recs),
        "read_ms_per_query": 1000 * tr["s"] / len(q_vals),
    }


def run(out_dir: Path = harness.DEFAULT_OUT, full: bool = False, seed: int = 0) -> dict:
    harness.default_threads()
    g = harness.seed_everything(seed)
    steps = harness.budget(6000 if full else 3000)
    lengths = [64, 256, 1024, 4096] + ([16384] if full else [])
    model = SlotModel(N_NAME, PARTS, N_VALUE, width=WIDTH)
    with harness.timer() as t:
        curve = train_slot_model(model, steps, g, width=WIDTH)
    rows = []
    for kind in ("distinct", "repeats", "updates"):
        for mode in ("append", "blend"):
            for length in lengths:
                rows.append(measure(model, mode, length, kind, seed))
                print(rows[-1])

    def plot(fig):
        kinds = ("distinct", "repeats", "updates")
        for j, kind in enumerate(kinds):
            ax = fig.add_subplot(2, 3, j + 1)
            ax2 = fig.add_subplot(2, 3, j + 4)
            for mode, c in (("append", "C0"), ("blend", "C1")):
                pts = [r for r in rows if r["stream"] == kind and r["mode"] == mode]
                xs = [r["L"] for r in pts]
                ax.plot(xs, [r["chunk_exact"] for r in pts], marker="o", c=c, label=mode)
                ax2.plot(xs, [r["slots"] / r["distinct_ids"] for r in pts], marker="o", c=c)
            ax.set_title(kind, fontsize=9)
            ax.set_xscale("log")
            ax2.set_xscale("log")
            ax.set_ylim(0, 1.02)
            ax2.set_xlabel("L (tokens)")
            if j == 0:
                ax.set_ylabel("chunk exact acc.")
                ax2.set_ylabel("slots / distinct ids")
                ax.legend(fontsize=7)

    summary = (
        f"SlotModel (width {WIDTH}, d=64) trained {steps} steps ({t['s']:.0f} s) on "
        f"banks of ≤ 64 chunks; blend threshold {THRESHOLD} (cosine of unit keys)."
    )
    return harness.save(
        NAME,
        out_dir,
        {"steps": steps, "curve": curve, "threshold": THRESHOLD},
        rows,
        plot,
        summary,
        full,
        seed,
    )


def cli(
    out_dir: Path = typer.Option(harness.DEFAULT_OUT, help="where results go"),
    full: bool = typer.Option(False, help="longer training, L up to 16384"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Append vs attention-based blend writes on a copy task at growing lengths."""
    res = run(out_dir, full, seed)
    typer.echo(harness.markdown_table(res["rows"]))


if __name__ == "__main__":
    typer.run(cli)
