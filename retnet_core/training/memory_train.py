"""Cross-session memory objective and evaluation (state reset, memory slots kept).

The default ``memory_objective`` / ``memory_eval`` hooks of :mod:`retnet_core.training.train`.
For a batch of :class:`~retnet_core.training.dialogues.MemoryExample` with two or more sessions:

1. the first session runs from an empty state with a fresh
   :class:`~retnet_core.memory.TensorBank` per memory layer whose ``write_spans`` are
   the session's **user turns** (``<|user|> … <|end|>``, one slot each, the convention
   the serving engine follows);
2. for ``forget`` examples the forget request (session 2's user turn) is fed reading
   those banks, and the attention of its last token is trained onto the slot of the
   fact it names (−log p); the service removes the slot that token reads most. Then
   that slot is masked out, which is what the removal does to a bank (the request's
   acknowledgement is ordinary text, trained by the LM loss);
3. the last session runs from an empty state reading the banks; the loss is the
   cross-entropy of its final assistant turn (the answer, or "I don't know ...").

Everything stays in one autograd graph, so the answer's loss reaches the write gate,
the pooling and the projections of session 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retnet_core.memory import TensorBank, token_span_mask
from retnet_core.tokenizer import ChatTokenizer, Message
from retnet_core.training.data import IGNORE_INDEX, pad_examples
from retnet_core.training.dialogues import CHITCHAT, MemoryExample
from retnet_core.training.evaluation import render_supervised

WRITTEN_ROLES = ("user", "passage")  # the turns a session writes into memory


def user_spans(
    tok: ChatTokenizer, messages: Sequence[Message], roles: Sequence[str] = WRITTEN_ROLES
) -> list[tuple[int, int]]:
    """Half-open token spans [start, end) of the content of the written turns (user
    messages, and passages a document fed) of a rendered session.

    The role token and ``<|end|>`` are left out: the serving engine writes a message's
    content tokens (``memsvc.services.memory``), and training must write the same span.
    """
    r = tok.render(messages)
    starts = [0, *r.boundaries[:-1]]
    return [
        (s + 1, e - 1)
        for s, e, m in zip(starts, r.boundaries, messages, strict=True)
        if m.role in roles
    ]


def _span_mask(spans: list[list[tuple[int, int]]], length: int) -> Tensor:
    """(B, S, T) bool; rows with fewer spans are padded with empty spans (no slot)."""
    s_max = max((len(s) for s in spans), default=0)
    mask = torch.zeros(len(spans), max(s_max, 1), length, dtype=torch.bool)
    for b, row in enumerate(spans):
        for i, (s, e) in enumerate(row):
            mask[b, i, s : min(e, length)] = True
    return mask


def _banks(model: nn.Module, batch: int, device: torch.device) -> dict[int, TensorBank]:
    cfg = model.config
    if not cfg.memory_layers:
        raise ValueError("the memory objective needs a model with memory_layers")
    d_value = cfg.memory_d_value + int(getattr(cfg, "memory_copy", False))  # + the id column
    return {
        i: TensorBank.empty(batch, cfg.memory_d_key, d_value, device=device)
        for i in cfg.memory_layers
    }


@dataclass
class CrossSession:
    """What one cross-session pass gives: the answers, and where forget requests point.

    logits (B, T, V) and labels (B, T) of the last session (final turn only);
    pointer_logp (F,) log attention of each forget request's ``<|end|>`` token on the
    slot of the fact it asks to drop, pointer_hit (F,) bool whether that slot is the one
    it reads most (F = forget examples in the batch; empty when there are none).
    """

    logits: Tensor
    labels: Tensor
    pointer_logp: Tensor
    pointer_hit: Tensor


def _pad(rows: list[list[int]], pad_id: int) -> Tensor:
    x = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.int64)
    for b, row in enumerate(rows):
        x[b, : len(row)] = torch.tensor(row)
    return x


def _stated_slot(example: MemoryExample) -> int:
    """Index of the written turn of session 1 that stated the forgotten value."""
    written = [m for m in example.sessions[0] if m.role in WRITTEN_ROLES]
    return next(i for i, m in enumerate(written) if example.forgotten in m.content)


def _slot_owners(model: nn.Module, write: Tensor) -> tuple[Tensor, Tensor]:
    """The write masks to use and each slot's user turn (B, S'), −1 for padding.

    unit="span": one slot per user turn; unit="token": one per token of each turn.
    """
    if getattr(model.config, "memory_unit", "span") == "token":
        return token_span_mask(write)
    s = write.shape[1]
    owner = torch.arange(s, device=write.device).expand(write.shape[0], s).clone()
    return write, owner.masked_fill(~write.any(-1), -1)


def _point_forgotten(
    model: nn.Module,
    tok: ChatTokenizer,
    examples: Sequence[MemoryExample],
    banks: dict[int, TensorBank],
    owner: Tensor,
    device: torch.device | str,
) -> tuple[Tensor, Tensor]:
    """Feed each forget request (session 2's user turn) reading the banks of session 1.

    The attention of its last token (``<|end|>``) over the slots is what the service
    uses to pick the slot to remove; returns (log p of the stated turn's slots, whether
    the slot it reads most is one of them), averaged over memory layers, for the forget
    examples only.
    """
    rows = [b for b, ex in enumerate(examples) if ex.forgotten]
    if not rows:
        empty = torch.zeros(0, device=device)
        return empty, empty.bool()
    asks = [tok.render_turn(examples[b].sessions[1][0]) for b in rows]
    last = torch.tensor([len(a) - 1 for a in asks], device=device)
    sub = {
        i: TensorBank(
            bank.keys[rows], bank.values[rows], bank.log_gate[rows], bank.mask[rows], reads=[]
        )
        for i, bank in banks.items()
    }
    model(_pad(asks, tok.pad_id).to(device), memory=sub)
    target = torch.tensor([_stated_slot(examples[b]) for b in rows], device=device)
    stated = owner[rows] == target.unsqueeze(1)  # (F, N): slots of the named fact
    picked = torch.arange(len(rows), device=device)
    logp, hit = [], []
    for bank in sub.values():
        probs = bank.reads[0][picked, last]  # (F, N): the request's last token
        logp.append(torch.log((probs * stated).sum(-1).clamp_min(1e-9)))
        hit.append(stated[picked, probs.argmax(-1)])
    return torch.stack(logp).mean(0), torch.stack(hit).all(0)


def cross_session(
    model: nn.Module,
    tok: ChatTokenizer,
    examples: Sequence[MemoryExample],
    device: torch.device | str,
    seq_len: int = 256,
) -> CrossSession:
    """Run session 1 (writing), any forget request (pointing), then the last session
    (reading) for each example; see :class:`CrossSession`."""
    first = [ex.sessions[0] for ex in examples]
    # session 1 is never cut: its spans index the full rendering, and no loss is taken
    x1 = _pad([tok.render_ids(s) for s in first], tok.pad_id)
    spans = [user_spans(tok, s) for s in first]
    banks = _banks(model, len(examples), torch.device(device))
    write, owner = _slot_owners(model, _span_mask(spans, x1.shape[1]).to(device))
    for bank in banks.values():
        bank.write_spans = write
    model(x1.to(device), memory=banks)
    for bank in banks.values():
        bank.write_spans = None
    pointer_logp, pointer_hit = _point_forgotten(model, tok, examples, banks, owner, device)
    for bank in banks.values():
        _mask_forgotten(bank, examples, owner)
    # the answer is the scored turn; a chitchat session trains every reply it has
    x2, y2 = pad_examples(
        [render_supervised(tok, ex.sessions[-1], last_only=ex.kind != CHITCHAT) for ex in examples],
        seq_len,
        tok.pad_id,
    )
    logits = model(x2.to(device), memory=banks)
    return CrossSession(logits, y2.to(device), pointer_logp, pointer_hit)


def write_and_ask(
    model: nn.Module,
    tok: ChatTokenizer,
    examples: Sequence[MemoryExample],
    device: torch.device | str,
    seq_len: int = 256,
) -> tuple[Tensor, Tensor]:
    """The last session's logits (B, T, V) and labels (B, T) of :func:`cross_session`."""
    out = cross_session(model, tok, examples, device, seq_len)
    return out.logits, out.labels


def _mask_forgotten(bank: TensorBank, examples: Sequence[MemoryExample], owner: Tensor) -> None:
    """Drop the slots written from the user turn that stated a forgotten value.

    ``owner`` (B, N) names each slot's user turn; the bank holds exactly those slots.
    """
    mask = bank.mask.clone()
    for b, ex in enumerate(examples):
        if ex.forgotten:
            mask[b] &= owner[b] != _stated_slot(ex)
    bank.mask = mask


def cross_session_loss(
    model: nn.Module,
    tok: ChatTokenizer,
    examples: Sequence[MemoryExample],
    device: torch.device | str,
    seq_len: int = 256,
) -> Tensor:
    """Mean cross-entropy of the final answers, read from memory across a state reset,
    plus −log p(stated slot) of each forget request's read (what the service removes)."""
    examples = [ex for ex in examples if len(ex.sessions) >= 2]
    if not examples:
        return torch.zeros((), device=device)
    out = cross_session(model, tok, examples, device, seq_len)
    answers = F.cross_entropy(
        out.logits.float().reshape(-1, out.logits.shape[-1]),
        out.labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
    )
    if out.pointer_logp.numel() == 0:
        return answers
    return answers - out.pointer_logp.mean()


@torch.no_grad()
def cross_session_eval(
    model: nn.Module,
    tok: ChatTokenizer,
    examples: dict[str, Sequence[MemoryExample]],
    device: torch.device | str,
    seq_len: int = 256,
    batch_size: int = 16,
) -> dict[str, float]:
    """Exact final-answer rate with memory on, per multi-session kind (``memory_<kind>``),
    and the share of answer tokens right (``memory_<kind>_tokens``).

    Teacher-forced argmax over the whole final turn, i.e. what greedy decoding outputs.
    """
    out: dict[str, float] = {}
    for kind, exs in examples.items():
        exs = [ex for ex in exs if len(ex.sessions) >= 2]
        if not exs:
            continue
        hits, right, total, pointed = 0, 0, 0, []
        for i in range(0, len(exs), batch_size):
            run = cross_session(model, tok, exs[i : i + batch_size], device, seq_len)
            logits, labels = run.logits, run.labels
            pointed.extend(run.pointer_hit.tolist())
            scored = labels != IGNORE_INDEX
            correct = logits.argmax(-1) == labels
            hits += int(((correct | ~scored).all(1) & scored.any(1)).sum())
            right, total = right + int((correct & scored).sum()), total + int(scored.sum())
        out[f"memory_{kind}_tokens"] = right / max(total, 1)
        out[f"memory_{kind}"] = hits / len(exs)
        if pointed:  # forget requests that point at the slot of the fact they name
            out[f"memory_{kind}_pointer"] = sum(pointed) / len(pointed)
    return out
