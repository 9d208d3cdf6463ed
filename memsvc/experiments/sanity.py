"""sanity: the Retention Layer alone. Write N items, then read each back.

An item is a name (2 tokens of 64: 4096 names) and a value (1 of 32). Span =
[name embedding, value embedding]; a query is the name alone. The layer is trained on
banks of 1–64 items through the differentiable path, then evaluated through the
inference path (gated writes into an ExactSlotStore, exact read) at N up to 1024 —
beyond what it trained on. Compression: learned attention pooling vs the paper's
mean pooling. Chance = 1/32.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import typer

from memsvc.experiments import harness
from memsvc.experiments.models import SlotModel
from retnet_core.slots import ExactSlotStore

NAME = "sanity"
N_NAME, PARTS, N_VALUE = 64, 2, 32


def draw_items(batch: int, n: int, g: torch.Generator, width: int = 1, n_value: int = N_VALUE):
    """Distinct names per row: names (B, n, PARTS), values (B, n, width)."""
    ids = torch.stack([torch.randperm(N_NAME**PARTS, generator=g)[:n] for _ in range(batch)])
    names = torch.stack([ids // N_NAME, ids % N_NAME], dim=-1)
    return names, torch.randint(n_value, (batch, n, width), generator=g)


def train_slot_model(
    model: SlotModel,
    steps: int,
    g,
    max_items: int = 64,
    lr: float = 3e-3,
    width: int = 1,
    draw=None,
) -> list[float]:
    """Differentiable path: bank built in the graph, CE of every item's value from its name.

    ``draw(batch, n, g, width, n_value) -> (names, values)`` samples items (default
    :func:`draw_items`)."""
    draw = draw or draw_items
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    curve = []
    model.train()
    for step in range(steps):
        # curriculum: banks grow over the first half; with many slots from the start the
        # read is near-uniform and the key/query alignment has almost no signal to learn
        top = max(1, min(max_items, round(max_items * 2 * (step + 1) / steps)))
        n = int(torch.randint(1, top + 1, (1,), generator=g))
        names, values = draw(32, n, g, width, model.n_value)
        logits = model.answer(names, model.tensor_bank(names, values))
        loss = F.cross_entropy(logits.reshape(-1, model.n_value), values.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            curve.append(loss.item())
    model.eval()
    return curve


@torch.no_grad()
def fill_bank(model: SlotModel, names, values, capacity=None, mode=None, threshold=None):
    """Inference-path writes of one row's items into a fresh ExactSlotStore.

    names (1, n, PARTS), values (1, n, C). Returns (bank, write records)."""
    mem = model.memory
    if mode is not None:  # same parameters, another write mode
        from dataclasses import replace

        mem.cfg = replace(mem.cfg, write_mode=mode, blend_threshold=threshold or 0.9)
    bank = ExactSlotStore(mem.cfg.d_key, mem.cfg.d_value, capacity)
    h, mask = model.spans(names, values)
    spans = [(int(m.nonzero()[0]), int(m.nonzero()[-1]) + 1) for m in mask[0]]
    return bank, mem.write(bank, h[0], spans)


@torch.no_grad()
def recall(model: SlotModel, n: int, rows: int, g) -> float:
    """Fraction of items whose value is read back right, ``rows`` banks of n items."""
    hits = 0.0
    for _ in range(rows):
        names, values = draw_items(1, n, g, model.width, model.n_value)
        bank, _ = fill_bank(model, names, values)
        pred = model.answer(names, bank).argmax(-1)
        hits += (pred == values).float().mean().item()
    return hits / rows


def run(out_dir: Path = harness.DEFAULT_OUT, full: bool = False, seed: int = 0) -> dict:
    harness.default_threads()
    steps = harness.budget(1500 if full else 600)
    sizes = [1, 4, 16, 64, 256, 1024] + ([4096] if full else [])
    rows, curves = [], {}
    for pool in ("attention", "mean"):
        g = harness.seed_everything(seed)
        model = SlotModel(N_NAME, PARTS, N_VALUE, width=1, pool=pool)
        with harness.timer() as t:
            curves[pool] = train_slot_model(model, steps, g)
        eval_g = torch.Generator().manual_seed(1000 + seed)
        for n in sizes:
            reps = max(1, min(8, 256 // n)) * (2 if full else 1)
            rows.append(
                {
                    "pool": pool,
                    "items": n,
                    "recall": recall(model, n, reps, eval_g),
                    "chance": 1 / N_VALUE,
                    "train_s": t["s"],
                }
            )
            print(rows[-1])

    def plot(fig):
        ax = fig.add_subplot(1, 1, 1)
        for pool in ("attention", "mean"):
            pts = [(r["items"], r["recall"]) for r in rows if r["pool"] == pool]
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"{pool} pooling")
        ax.axhline(1 / N_VALUE, ls=":", c="gray", label="chance")
        ax.axvline(64, ls="--", c="k", lw=0.7, label="largest bank in training")
        ax.set_xscale("log")
        ax.set_xlabel("items written (slots)")
        ax.set_ylabel("recall")
        ax.set_ylim(0, 1.02)
        ax.legend()

    summary = (
        f"Single memory layer, d=64, d_key=64; trained {steps} steps on banks of "
        "1–64 items; evaluated through the inference write/read path."
    )
    return harness.save(
        NAME, out_dir, {"steps": steps, "curves": curves}, rows, plot, summary, full, seed
    )


def cli(
    out_dir: Path = typer.Option(harness.DEFAULT_OUT, help="where results go"),
    full: bool = typer.Option(False, help="longer training, larger banks"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Write N items, read them back: recall vs number of items."""
    res = run(out_dir, full, seed)
    typer.echo(harness.markdown_table(res["rows"]))


if __name__ == "__main__":
    typer.run(cli)
