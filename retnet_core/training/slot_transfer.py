"""Memory slots on a pretrained backbone: the Retention Layer trained frozen vs with adapters.

Issue 13 §4 / seed 002's open question 4 at real scale. A checkpoint without memory
layers (the distilled SmolLM2 hybrid) gets one token-slot :class:`~retnet_core.memory.
MemoryLayer` with the copy head at layer ``layer`` (its weights new, the rest loaded):

- ``frozen``: only the memory layer (its norm, projections and copy gate) trains;
- ``lora``: LoRA adapters on every retention's in/out projections train with it (the
  backbone's own weights stay, as in distillation: "unfrozen" at this budget).

Training is :func:`~retnet_core.training.memory_train.cross_session_loss` (session 1
writes its user turns, the state is reset, the last session answers reading the
slots). Both are scored, and the memory note the service ships is scored on the same
held-out examples, by :func:`reader_rates`: per kind, the share of final replies (the teacher-forced
argmax at each reply token) that name the value or, when nothing is known, say so, and
the share that are exactly the trained reply.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from retnet_core.checkpoint import save_pretrained
from retnet_core.lora import attach_lora, merge_lora, set_trainable
from retnet_core.memory_note import note_text
from retnet_core.model import RetNetLM
from retnet_core.tokenizer import ChatTokenizer, Message
from retnet_core.training.data import IGNORE_INDEX, pad_examples
from retnet_core.training.dialogues import DialogueGenerator, MemoryExample
from retnet_core.training.evaluation import render_supervised
from retnet_core.training.memory_train import WRITTEN_ROLES, cross_session, cross_session_loss

VARIANTS = ("frozen", "lora")
MEMORY_PARAMS = ("*.memory.*", "*.memory_norm.*")
LORA_TARGETS = ("retention.in_proj", "retention.out_proj")
TRAIN_KINDS = ("recall", "recall", "document", "forget", "unknown")
EVAL_KINDS = ("recall", "document", "forget", "unknown")
REFUSAL = "i don't know"


def with_memory_layer(base: RetNetLM, layer: int, **memory: object) -> RetNetLM:
    """``base`` rebuilt with a token-slot copy-head memory layer at ``layer`` (index
    into ``base.layers``); every base weight is loaded, only the memory's are new.

    ``memory``: overrides of the ``memory_*`` config fields (defaults: the shipped
    ``tiny``'s recipe, 16·cosine reads, no write gate, copy head)."""
    fields = {
        "memory_layers": [layer],
        "memory_unit": "token",
        "memory_gate": False,
        "memory_read_scale": 16.0,
        "memory_copy": True,
        **memory,
    }
    cfg = dataclasses.replace(base.config, **fields)
    model = RetNetLM(cfg)
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    foreign = [n for n in missing if ".memory" not in n] + list(unexpected)
    if foreign:
        raise ValueError(f"the backbone does not fit the model with memory: {foreign[:4]}")
    return model


def prepare_variant(model: RetNetLM, variant: str, rank: int = 8) -> list[str]:
    """Set what trains for ``variant`` (see the module docstring); the trainable names."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}")
    patterns = list(MEMORY_PARAMS)
    if variant == "lora":
        attach_lora(model, rank, 2.0 * rank, LORA_TARGETS)
        patterns += ["*.lora_a", "*.lora_b"]
    return set_trainable(model, patterns)


def train_slots(
    model: nn.Module,
    tok: ChatTokenizer,
    gen: DialogueGenerator,
    steps: int,
    batch: int = 8,
    lr: float = 2e-3,
    log: Callable[[dict], None] | None = None,
) -> list[float]:
    """``steps`` AdamW steps of the cross-session loss on ``batch`` examples of
    :data:`TRAIN_KINDS` each (cosine decay to lr/10); the losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr / 10)
    model.train()
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        loss = cross_session_loss(model, tok, gen.sample(batch, TRAIN_KINDS), "cpu")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None:
            log({"step": step + 1, "loss": losses[-1], "s": round(time.perf_counter() - t0, 1)})
    model.eval()
    return losses


def note_session(ex: MemoryExample) -> tuple[Message, ...]:
    """The last session as the service serves it to a model without slots: a note of
    what the first session wrote (its user turns and fed passages), the forgotten fact's
    turn left out as the service deletes its memory, then the last session. (A forget
    example's middle session is the request itself, which is no memory.)"""
    told = [m.content for m in ex.sessions[0] if m.role in WRITTEN_ROLES]
    kept = [t for t in told if not (ex.forgotten and ex.forgotten in t)]
    note = note_text(kept)
    return ((Message("system", note),) if note else ()) + tuple(ex.sessions[-1])


def _exact(logits: Tensor, labels: Tensor) -> list[bool]:
    """Per row: every scored label is the argmax (and there is one)."""
    scored = labels != IGNORE_INDEX
    correct = logits.argmax(-1) == labels
    return ((correct | ~scored).all(1) & scored.any(1)).tolist()


def _replies(tok: ChatTokenizer, logits: Tensor, labels: Tensor) -> list[str]:
    """Per row: the argmax tokens at the scored positions, decoded (teacher-forced)."""
    guess = logits.argmax(-1)
    scored = labels != IGNORE_INDEX
    return [tok.decode(guess[b][scored[b]].tolist(), skip_special=True) for b in range(len(guess))]


def answered(reply: str, ex: MemoryExample) -> bool:
    """As ``memsvc bench memory`` counts: the reply names the value, or for a fact never
    told (or forgotten) it says it does not know."""
    if ex.answer:
        return ex.answer.lower() in reply.lower()
    return reply.lower().startswith(REFUSAL)


@torch.no_grad()
def reader_rates(
    model: nn.Module,
    tok: ChatTokenizer,
    examples: dict[str, Sequence[MemoryExample]],
    reader: str,
    batch: int = 8,
    seq_len: int = 384,
) -> dict[str, float]:
    """Per kind, reading by ``reader``: ``"slots"`` (the state reset, the memory layer
    reads what session 1 wrote) or ``"note"`` (no slots needed: the note of
    :func:`note_session` before the last session). ``<kind>``: the share of replies that
    :func:`answered` (teacher-forced argmax replies); ``<kind>_exact``: the share whose
    every token is the argmax."""
    if reader not in ("slots", "note"):
        raise ValueError("reader must be 'slots' or 'note'")
    model.eval()
    out = {}
    for kind, exs in examples.items():
        exact: list[bool] = []
        hits: list[bool] = []
        for i in range(0, len(exs), batch):
            part = exs[i : i + batch]
            if reader == "slots":
                run = cross_session(model, tok, part, "cpu", seq_len)
                logits, labels = run.logits, run.labels
            else:
                rows = [render_supervised(tok, note_session(ex), last_only=True) for ex in part]
                x, labels = pad_examples(rows, seq_len, tok.pad_id)
                logits = model(x)
            exact += _exact(logits, labels)
            replies = _replies(tok, logits, labels)
            hits += [answered(r, ex) for r, ex in zip(replies, part, strict=True)]
        out[kind] = sum(hits) / max(len(hits), 1)
        out[f"{kind}_exact"] = sum(exact) / max(len(exact), 1)
    return out


def save_servable(model: RetNetLM, source: Path, out: Path) -> Path:
    """Write ``model`` (adapters merged first) where ``memsvc serve --model-dir`` serves
    it: its weights, and ``source``'s tokenizer, chat format and generation settings."""
    save_pretrained(merge_lora(model), out, tokenizer=source / "tokenizer.json")
    for name in ("chat_format.json", "generation_config.json"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    return out
