"""drift: noisy and irrelevant writes at rates 0–90%, with and without the gate (OQ 2).

Session A mixes the facts with noise spans: hedged rumours that contradict a real fact
("~ abc = 57 ;") and chatter. Three models, trained on conversations with 50% noise:

- no gate:       every span is written (g ≡ 1);
- gate (e2e):    g = σ(f(x)) learned end to end from session B's loss, plus a small
                 write cost λ·mean(g) (storage is not free, so useless spans close it);
- gate+feedback: the same gate also fitted to feedback labels (noise → forget,
                 fact → remember), the paper's "external feedback" signal.

Each is evaluated through the inference path at noise rates 0, 0.3, 0.6, 0.9, with an
unbounded bank and with a bank of capacity n_facts + 2 (LRU eviction), where noise that
gets written pushes facts out.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import typer

from memsvc.experiments import harness, tasks
from memsvc.experiments.cross_session import eval_memory, train
from memsvc.experiments.models import BACKBONES, RecurrentMemLM

NAME = "drift"
WRITE_COST = 0.05
VARIANTS = ("no gate", "gate (e2e)", "gate+feedback")
BACKBONE = "gru"  # trains 3-5x faster than the RetNet core on one CPU thread (see README)


def drift_loss(variant: str):
    """Loss for one variant: session B CE (+ write cost) (+ feedback BCE on the gates)."""

    def loss_fn(model: RecurrentMemLM, s: tasks.Sessions) -> torch.Tensor:
        bank = model.write_session(s.a, s.spans)
        logits = model(s.b, bank)
        loss = F.cross_entropy(logits.transpose(1, 2), s.target, ignore_index=tasks.IGNORE)
        if variant == "no gate":
            return loss
        gates, present = bank.written[-1], s.spans.any(-1)
        loss = loss + WRITE_COST * gates[present].mean()
        if variant == "gate+feedback":
            keep = (~s.noise[present]).float()
            loss = loss + F.binary_cross_entropy(gates[present].clamp(1e-6, 1 - 1e-6), keep)
        return loss

    return loss_fn


def run(out_dir: Path = harness.DEFAULT_OUT, full: bool = False, seed: int = 0) -> dict:
    harness.default_threads()
    dev = harness.device()
    n_facts, train_noise = 4, 0.5
    steps = harness.budget(2500 if full else 600)
    n_eval = harness.budget(400 if full else 100)
    rates = [0.0, 0.3, 0.6, 0.9]
    rows, curves = [], {}
    for variant in VARIANTS:
        g = harness.seed_everything(seed)
        model = BACKBONES[BACKBONE](tasks.VOCAB, use_gate=variant != "no gate").to(dev)
        with harness.timer() as t:
            curves[variant] = train(
                model, drift_loss(variant), steps, n_facts, g, dev, noise_rate=train_noise
            )
        for rate in rates:
            test = tasks.sample(
                n_eval, n_facts, torch.Generator().manual_seed(5000 + seed), "test", rate
            ).to(dev)
            for cap in (None, n_facts + 2):
                res = eval_memory(model, test, capacity=cap)
                rows.append(
                    {
                        "variant": variant,
                        "noise_rate": rate,
                        "capacity": cap or "unbounded",
                        "exact_recall": res["exact_recall"],
                        "slots": res["slots"],
                        "noise_slots": res["noise_slots"],
                        "train_s": t["s"],
                    }
                )
                print(rows[-1])

    def plot(fig):
        for j, cap in enumerate(("unbounded", n_facts + 2)):
            ax = fig.add_subplot(1, 2, j + 1)
            for variant in VARIANTS:
                pts = [
                    (r["noise_rate"], r["exact_recall"])
                    for r in rows
                    if r["variant"] == variant and r["capacity"] == cap
                ]
                ax.plot(*zip(*pts, strict=True), marker="o", label=variant)
            ax.set_title(f"bank capacity: {cap}", fontsize=9)
            ax.set_xlabel("fraction of written spans that are noise")
            ax.set_ylim(0, 1.02)
            if j == 0:
                ax.set_ylabel("exact recall (held out)")
                ax.legend(fontsize=7)

    summary = (
        f"{BACKBONE} LM d=64 (2 layers, memory after block 0), {n_facts} facts per conversation, "
        f"trained {steps} steps at "
        f"{train_noise:.0%} noise; write cost λ={WRITE_COST}; {n_eval} held-out "
        "conversations per rate; inference writes skip g < 0.5."
    )
    return harness.save(
        NAME, out_dir, {"steps": steps, "curves": curves}, rows, plot, summary, full, seed
    )


def cli(
    out_dir: Path = typer.Option(harness.DEFAULT_OUT, help="where results go"),
    full: bool = typer.Option(False, help="longer training, larger evaluation"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Noisy writes at 0–90%: accuracy with the gate vs without it."""
    res = run(out_dir, full, seed)
    typer.echo(harness.markdown_table(res["rows"]))


if __name__ == "__main__":
    typer.run(cli)
