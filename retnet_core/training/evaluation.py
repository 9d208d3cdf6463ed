"""Evaluation shared by training, the baseline comparison and the model card.

Everything takes ``logits_fn``: a callable ``tokens (B, T) -> logits (B, T, V)``, so
the RetNet (parallel or chunkwise) and the Transformer baseline are scored by the
same code on the same windows.

Bits per character divide the summed negative log-likelihood (in bits) of every
predicted token of the held-out stream by the characters of the conversations' plain
text (:meth:`retnet_core.training.data.Conversation.text`), which makes the number comparable
across tokenizers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from retnet_core.checkpoint import load_pretrained
from retnet_core.tokenizer import ChatTokenizer, Message
from retnet_core.training.data import IGNORE_INDEX, TokenStream, eval_windows, pad_examples
from retnet_core.training.dialogues import MemoryExample

LogitsFn = Callable[[Tensor], Tensor]


def render_supervised(
    tok: ChatTokenizer, messages: Sequence[Message], last_only: bool = False
) -> tuple[list[int], list[bool]]:
    """Ids and targets of a dialogue trained on its assistant turns.

    With ``last_only`` only the final turn is a target: that is the scored answer.
    """
    r = tok.render(messages, train_roles=("assistant",))
    targets = list(r.targets)
    if last_only:
        start = r.boundaries[-2] if len(r.boundaries) > 1 else 0
        targets = [False] * start + targets[start:]
    return r.ids, targets


def nll_sum(logits: Tensor, labels: Tensor) -> tuple[float, int]:
    """Summed cross-entropy in nats over labels that are not ignored, and their count."""
    loss = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return float(loss), int((labels != IGNORE_INDEX).sum())


@torch.no_grad()
def evaluate_lm(
    logits_fn: LogitsFn,
    stream: TokenStream,
    seq_len: int,
    max_windows: int | None = None,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Loss, perplexity, bits per token and bits per character on ``stream``.

    When ``max_windows`` cuts the stream short, bits per character scales the
    character count by the share of tokens scored (an estimate; exact otherwise).
    """
    nats, count = 0.0, 0
    full: list[tuple[Tensor, Tensor]] = []

    def flush() -> None:
        nonlocal nats, count
        if full:
            x = torch.cat([w[0] for w in full]).to(device)
            y = torch.cat([w[1] for w in full]).to(device)
            n, c = nll_sum(logits_fn(x), y)
            nats, count = nats + n, count + c
            full.clear()

    for x, y in eval_windows(stream, seq_len, max_windows):
        if x.shape[1] != seq_len:  # the short tail goes alone
            flush()
            full.append((x, y))
            flush()
            continue
        full.append((x, y))
        if len(full) == batch_size:
            flush()
    flush()
    loss = nats / max(count, 1)
    chars = stream.n_chars * count / max(len(stream) - 1, 1)
    return {
        "loss": loss,
        "ppl": math.exp(min(loss, 50.0)),
        "bits_per_token": loss / math.log(2),
        "bits_per_char": nats / math.log(2) / max(chars, 1.0),
        "tokens": float(count),
    }


@torch.no_grad()
def answer_scores(
    logits_fn: LogitsFn,
    tok: ChatTokenizer,
    dialogues: Sequence[Sequence[Message]],
    seq_len: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """How well the model reproduces each dialogue's final assistant turn.

    ``exact``: share of dialogues whose whole final turn (content and ``<|end|>``) is
    the teacher-forced argmax, which is exactly the condition for greedy decoding to
    produce it, at the cost of one forward pass. ``token``: share of those tokens that
    are right (partial credit, shows progress long before exact answers appear).
    """
    if not dialogues:
        return {"exact": float("nan"), "token": float("nan")}
    hits, right, total = 0, 0, 0
    for i in range(0, len(dialogues), batch_size):
        chunk = [render_supervised(tok, d, last_only=True) for d in dialogues[i : i + batch_size]]
        x, y = pad_examples(chunk, seq_len, tok.pad_id)
        x, y = x.to(device), y.to(device)
        correct = logits_fn(x).argmax(-1) == y
        scored = y != IGNORE_INDEX
        hits += int(((correct | ~scored).all(dim=1) & scored.any(dim=1)).sum())
        right, total = right + int((correct & scored).sum()), total + int(scored.sum())
    return {"exact": hits / len(dialogues), "token": right / max(total, 1)}


def answer_accuracy(
    logits_fn: LogitsFn,
    tok: ChatTokenizer,
    dialogues: Sequence[Sequence[Message]],
    seq_len: int,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> float:
    """The ``exact`` rate of :func:`answer_scores`."""
    return answer_scores(logits_fn, tok, dialogues, seq_len, batch_size, device)["exact"]


def memory_off_dialogues(examples: Sequence[MemoryExample]) -> list[tuple[Message, ...]]:
    """What a model without memory sees: the last session only, state reset before it."""
    return [ex.sessions[-1] for ex in examples]


def in_session_dialogues(examples: Sequence[MemoryExample]) -> list[tuple[Message, ...]]:
    """Every session concatenated, as if the state had never been reset."""
    return [ex.flat() for ex in examples]


def recall_report(
    logits_fn: LogitsFn,
    tok: ChatTokenizer,
    examples: dict[str, Sequence[MemoryExample]],
    seq_len: int,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Exact-answer rates (``<kind>``) and token accuracies (``<kind>_tokens``) on
    held-out examples, without memory slots.

    ``recall_no_memory`` is the cross-session rate with the state reset and no memory:
    the floor a memory must beat (it should be near 0).
    """
    out: dict[str, float] = {}
    for kind in ("in_context", "passage"):
        if examples.get(kind):
            dialogues = in_session_dialogues(examples[kind])
            scores = answer_scores(logits_fn, tok, dialogues, seq_len, device=device)
            out[kind], out[f"{kind}_tokens"] = scores["exact"], scores["token"]
    if examples.get("recall"):
        off = memory_off_dialogues(examples["recall"])
        out["recall_no_memory"] = answer_accuracy(logits_fn, tok, off, seq_len, device=device)
    return out


def load_lm(directory: str | Path, device: str = "cpu") -> torch.nn.Module:
    """Load a RetNet or baseline Transformer checkpoint, whichever ``directory`` holds."""
    import json

    cfg = json.loads((Path(directory) / "config.json").read_text())
    if cfg.get("arch") == "transformer":
        from retnet_core.training.baseline import TransformerLM

        return TransformerLM.from_pretrained(directory, device=device)

    return load_pretrained(directory, device=device)


@torch.no_grad()
def evaluate_checkpoint(
    checkpoint: Path,
    split: str = "test",
    seq_len: int = 256,
    max_windows: int | None = None,
    examples: int = 200,
    device: str = "cpu",
) -> dict[str, float]:
    """Score a checkpoint on a chit-chat split and on held-out memory dialogues.

    The split, the held-out values and the windows are the ones training used, so the
    RetNet and the baseline are compared on exactly the same tokens.
    """
    from retnet_core.training.data import load_chitchat, pack, split_conversations, words_of
    from retnet_core.training.dialogues import DialogueGenerator, ValuePools

    model = load_lm(checkpoint, device).eval()
    tok = ChatTokenizer.load(checkpoint)
    splits = split_conversations(load_chitchat())
    stream = pack(tok, splits[split])
    out = evaluate_lm(model, stream, seq_len, max_windows, device=device)
    train_words = words_of(m.content for c in splits["train"] for m in c.messages)
    gen = DialogueGenerator(ValuePools.build(exclude=train_words), "heldout", seed=0)
    kinds = ("in_context", "passage", "recall")
    held = {k: [gen.example(k) for _ in range(examples)] for k in kinds}
    out.update(recall_report(model, tok, held, seq_len, device))
    out["params"] = float(sum(p.numel() for p in model.parameters()))
    return out


def plot_log(log: str | Path, png: str | Path) -> Path:
    """Draw a run's log.jsonl as a PNG: training loss per step and validation loss.

    For the model card; matplotlib is imported here only (training never needs it).
    """
    import json

    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.strip()]
    train = [(r["step"], r.get("lm_loss", r["loss"])) for r in rows if "loss" in r]
    val = [(r["step"], r["eval"]["loss"]) for r in rows if "eval" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), label="train (LM loss)", linewidth=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="validation", linewidth=2)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)


def eval_cli(
    checkpoint: Path,
    split: str = "test",
    seq_len: int = 256,
    max_windows: int | None = None,
    device: str = "cpu",
) -> None:
    """Print a checkpoint's held-out numbers as JSON.

    Run as ``python -m retnet_core.training.evaluation``.
    """
    import json

    result = evaluate_checkpoint(checkpoint, split, seq_len, max_windows, device=device)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    import typer

    typer.run(eval_cli)
