"""frozen: a memory layer added to a frozen, trained backbone vs a full fine-tune (OQ 4).

1. Pre-train an LM *without* memory (layer present, bank empty) on one-session data (facts and
   questions in one sequence: it learns to answer from its own recurrent state).
2. From that checkpoint, train on the cross-session task (state reset, bank kept):
   - frozen:    only the memory layer and its input norm are trained;
   - fine-tune: every parameter is trained.
3. Report cross-session recall (held out), the in-context recall the backbone had
   (does fine-tuning erode it?), trainable parameters and training time.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
import typer

from memsvc.experiments import harness, tasks
from memsvc.experiments.cross_session import eval_memory, memory_loss, train
from memsvc.experiments.models import BACKBONES, RecurrentMemLM, n_params

NAME = "frozen"
MEMORY_MODULES = ("memory", "memory_norm")  # the memory sublayer of a block
BACKBONE = "gru"  # trains 3-5x faster than the RetNet core on one CPU thread (see README)


def in_context_loss(model: RecurrentMemLM, s: tasks.Sessions) -> torch.Tensor:
    x, y = s.in_context()
    return F.cross_entropy(model(x, None).transpose(1, 2), y, ignore_index=tasks.IGNORE)


@torch.no_grad()
def in_context_recall(model: RecurrentMemLM, s: tasks.Sessions) -> float:
    x, y = s.in_context()
    return tasks.exact_recall(model(x, None), y)


def freeze_backbone(model: RecurrentMemLM) -> None:
    for name, p in model.named_parameters():
        p.requires_grad = any(part in MEMORY_MODULES for part in name.split("."))


def run(out_dir: Path = harness.DEFAULT_OUT, full: bool = False, seed: int = 0) -> dict:
    harness.default_threads()
    dev = harness.device()
    n_facts = 4
    pre_steps, steps = (harness.budget(n) for n in ((2500, 2500) if full else (800, 600)))
    n_eval = harness.budget(400 if full else 150)
    g = harness.seed_everything(seed)
    base = BACKBONES[BACKBONE](tasks.VOCAB).to(dev)
    with harness.timer() as t_pre:
        pre_curve = train(base, in_context_loss, pre_steps, n_facts, g, dev)
    test = tasks.sample(n_eval, n_facts, torch.Generator().manual_seed(7000 + seed), "test")
    test = test.to(dev)
    rows = [
        {
            "model": "pre-trained backbone (no memory training)",
            "cross_session_recall": eval_memory(base, test)["exact_recall"],
            "in_context_recall": in_context_recall(base, test),
            "trainable_params": 0,
            "train_s": 0.0,
            "pretrain_s": t_pre["s"],
        }
    ]
    curves = {"pretrain": pre_curve}
    for variant in ("frozen", "fine-tune"):
        model = copy.deepcopy(base)
        if variant == "frozen":
            freeze_backbone(model)
        g = harness.seed_everything(seed + 1)  # same data stream for both
        with harness.timer() as t:
            curves[variant] = train(model, memory_loss, steps, n_facts, g, dev)
        rows.append(
            {
                "model": variant,
                "cross_session_recall": eval_memory(model, test)["exact_recall"],
                "in_context_recall": in_context_recall(model, test),
                "trainable_params": n_params(model, trainable_only=True),
                "train_s": t["s"],
                "pretrain_s": t_pre["s"],
            }
        )
        print(rows[-1])

    def plot(fig):
        ax = fig.add_subplot(1, 2, 1)
        for variant in ("frozen", "fine-tune"):
            c = curves[variant]
            ax.plot([min(50 * i, steps - 1) for i in range(len(c))], c, label=variant)
        ax.set_yscale("log")
        ax.set_xlabel("cross-session training step")
        ax.set_ylabel("session B loss")
        ax.legend(fontsize=7)
        ax = fig.add_subplot(1, 2, 2)
        labels = ["pre-trained", "frozen", "fine-tune"]
        xs = torch.arange(3).float()
        ax.bar(xs - 0.2, [r["cross_session_recall"] for r in rows], 0.4, label="cross-session")
        ax.bar(xs + 0.2, [r["in_context_recall"] for r in rows], 0.4, label="in context")
        ax.set_xticks(xs.tolist(), labels)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("exact recall (held out)")
        ax.legend(fontsize=7)

    summary = (
        f"{BACKBONE} LM d=64, 2 layers, memory after block 0; backbone pre-trained {pre_steps} "
        f"steps in context, then "
        f"{steps} cross-session steps per variant; {n_eval} held-out conversations."
    )
    return harness.save(
        NAME,
        out_dir,
        {"pre_steps": pre_steps, "steps": steps, "curves": curves},
        rows,
        plot,
        summary,
        full,
        seed,
    )


def cli(
    out_dir: Path = typer.Option(harness.DEFAULT_OUT, help="where results go"),
    full: bool = typer.Option(False, help="longer training, larger evaluation"),
    seed: int = typer.Option(0, help="random seed"),
) -> None:
    """Memory layer on a frozen backbone vs full fine-tune: accuracy and cost."""
    res = run(out_dir, full, seed)
    typer.echo(harness.markdown_table(res["rows"]))


if __name__ == "__main__":
    typer.run(cli)
