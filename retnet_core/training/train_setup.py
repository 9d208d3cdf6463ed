"""Training set-up: the config dataclass, tokenizer, data and model construction.

Kept apart from the loop in :mod:`retnet_core.training.train` so each file reads in one sitting.
"""

from __future__ import annotations

import importlib
import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from retnet_core.checkpoint import load_pretrained
from retnet_core.tokenizer import TOKENIZER_FILE, ChatTokenizer, Message
from retnet_core.training.data import (
    IGNORE_INDEX,
    TokenStream,
    load_chitchat,
    pack,
    split_conversations,
    words_of,
)
from retnet_core.training.dialogues import (
    CHITCHAT,
    DialogueGenerator,
    MemoryExample,
    ValuePools,
    example_texts,
)


@dataclass
class TrainConfig:
    """Every setting of a training run; YAML/TOML keys map one to one onto fields.

    ``model`` holds the architecture (RetNetConfig or TransformerConfig fields; the
    vocabulary size comes from the tokenizer). ``arch`` picks the model: ``retnet`` or
    ``transformer`` (the same-size baseline; ``match_params`` sizes its MLP to a
    RetNet built from the same ``model`` section). ``chunk_size`` > 0 trains the
    RetNet through the chunkwise form (``prefill`` with a boundary every chunk).
    """

    out_dir: str = "runs/default"
    arch: str = "retnet"
    model: dict[str, Any] = field(default_factory=dict)
    match_params: bool = True
    # tokenizer
    tokenizer: str | None = None  # path of a tokenizer.json to reuse; None: train one
    init_from: str | None = None  # RetNet checkpoint dir to start from (a later stage)
    vocab_size: int = 4096
    # data
    seq_len: int = 256
    chitchat_limit: int | None = None  # first N training conversations (tiny runs)
    val_frac: float = 0.05
    test_frac: float = 0.05
    memory_frac: float = 0.125  # share of rows that are generated memory dialogues
    memory_kinds: list[str] = field(default_factory=lambda: ["in_context", "passage"])
    eval_examples: int = 100  # held-out examples per kind for recall evaluation
    # optimisation
    batch_size: int = 16
    grad_accum: int = 1
    max_steps: int = 1000
    max_time_s: float | None = None
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    precision: str = "fp32"  # fp32 | bf16
    compile: bool = False
    chunk_size: int = 0
    # memory objective hooks, "package.module:function" (see retnet_core.training.train)
    memory_objective: str | None = None
    memory_eval: str | None = None
    memory_weight: float = 1.0
    memory_batch: int = 8
    memory_lr_mult: float = 1.0  # learning-rate multiplier of the memory layers' weights
    session_kinds: list[str] = field(default_factory=lambda: ["recall", "forget", "unknown"])
    # bookkeeping
    eval_interval: int = 200
    eval_windows: int | None = 64
    log_interval: int = 10
    ckpt_interval: int = 200
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    progress: bool = True
    resume: bool = True

    def __post_init__(self) -> None:
        if self.arch not in ("retnet", "transformer"):
            raise ValueError(f"arch must be 'retnet' or 'transformer', not {self.arch!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', not {self.precision!r}")
        if not 0.0 <= self.memory_frac < 1.0:
            raise ValueError("memory_frac must be in [0, 1)")


def load_config(path: str | Path) -> TrainConfig:
    """Read a YAML (.yaml/.yml) or TOML (.toml) file into :class:`TrainConfig`.

    Unknown keys are an error, so a typo never silently trains the wrong model.
    """
    path = Path(path)
    text = path.read_text()
    raw = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text) or {}
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}")
    return TrainConfig(**raw)


def load_hook(spec: str | None) -> Callable | None:
    """Import ``"package.module:function"``; None stays None."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


# ---------------------------------------------------------------------- tokenizer
def prepare_tokenizer(
    cfg: TrainConfig, out: Path, main: bool, barrier: Callable[[], None]
) -> ChatTokenizer:
    """Reuse the run's tokenizer, load ``cfg.tokenizer``, or train one (rank 0 only).

    Trained on the chit-chat *training* split plus generated training dialogues, so
    neither validation text nor held-out values shape the vocabulary.
    """
    saved = out / "checkpoint" / TOKENIZER_FILE
    if cfg.resume and saved.exists():
        return ChatTokenizer.load(saved)
    if cfg.tokenizer:
        return ChatTokenizer.load(cfg.tokenizer)
    if cfg.init_from:  # the weights' own vocabulary
        return ChatTokenizer.load(Path(cfg.init_from) / TOKENIZER_FILE)
    staged = out / TOKENIZER_FILE
    if main:
        splits = _splits(cfg)
        texts = [m.content for c in splits["train"] for m in c.messages]
        gen = DialogueGenerator(ValuePools.build(), "train", seed=cfg.seed + 1)
        texts += list(example_texts(gen.sample(2000)))
        ChatTokenizer.train(texts, vocab_size=cfg.vocab_size).save(staged)
    barrier()
    return ChatTokenizer.load(staged)


# ---------------------------------------------------------------------- data
@dataclass
class Data:
    """Token streams and dialogue generators of one run."""

    tok: ChatTokenizer
    train: TokenStream
    val: TokenStream
    pools: ValuePools
    kinds: list[str]
    eval_examples: dict[str, list[MemoryExample]]
    memory_gen: bool = True
    chitchat: tuple[tuple[Message, ...], ...] = ()  # train conversations, for ``chitchat``

    def memory_examples(
        self, n: int, seed: int, kinds: list[str] | None = None
    ) -> list[MemoryExample]:
        """``n`` training dialogues (training values only) from a per-call seed."""
        gen = DialogueGenerator(self.pools, "train", seed=seed, chitchat=self.chitchat)
        return gen.sample(n, kinds or self.kinds)


def _splits(cfg: TrainConfig) -> dict:
    splits = split_conversations(load_chitchat(), cfg.val_frac, cfg.test_frac)
    if cfg.chitchat_limit:
        splits["train"] = splits["train"][: cfg.chitchat_limit]
        splits["val"] = splits["val"][: max(cfg.chitchat_limit // 10, 8)]
    return splits


def prepare_data(cfg: TrainConfig, tok: ChatTokenizer) -> Data:
    """Pack chit-chat train/val and build the value pools and held-out eval examples.

    Held-out values exclude every word of the chit-chat training split.
    """
    splits = _splits(cfg)
    pools = ValuePools.build(
        exclude=words_of(m.content for c in splits["train"] for m in c.messages)
    )
    heldout = DialogueGenerator(pools, "heldout", seed=cfg.seed)
    # chitchat rows have no answer to score: their replies count in the LM numbers
    kinds = ["in_context", "passage", "recall", *(k for k in cfg.session_kinds if k != CHITCHAT)]
    eval_examples = {
        k: [heldout.example(k) for _ in range(cfg.eval_examples)] for k in dict.fromkeys(kinds)
    }
    return Data(
        tok=tok,
        train=pack(tok, splits["train"]),
        val=pack(tok, splits["val"]),
        pools=pools,
        kinds=list(cfg.memory_kinds),
        eval_examples=eval_examples,
        memory_gen=cfg.memory_frac > 0,
        chitchat=tuple(c.messages for c in splits["train"]),
    )


# ---------------------------------------------------------------------- model
def retnet_config(cfg: TrainConfig, vocab_size: int):
    """The RetNetConfig the ``model`` section describes."""
    from retnet_core.config import RetNetConfig

    return RetNetConfig(**{**cfg.model, "vocab_size": vocab_size})


def build_model(cfg: TrainConfig, vocab_size: int, resume_dir: Path | None = None) -> nn.Module:
    """A fresh model, or the one saved in ``resume_dir`` when resuming."""
    if cfg.arch == "transformer":
        from retnet_core.training.baseline import TransformerConfig, TransformerLM, match_ffn

        if resume_dir is not None and cfg.resume and (resume_dir / "config.json").exists():
            return TransformerLM.from_pretrained(resume_dir)
        keys = {f.name for f in fields(TransformerConfig)}
        tcfg = TransformerConfig(
            **{k: v for k, v in cfg.model.items() if k in keys},
            vocab_size=vocab_size,
            max_seq_len=cfg.seq_len,
        )
        if cfg.match_params:
            from retnet_core.model import RetNetLM

            target = sum(p.numel() for p in RetNetLM(retnet_config(cfg, vocab_size)).parameters())
            tcfg.ffn_dim = match_ffn(tcfg, target)
        return TransformerLM(tcfg)
    from retnet_core.model import RetNetLM

    if resume_dir is not None and cfg.resume and (resume_dir / "config.json").exists():
        return load_pretrained(resume_dir)
    if cfg.init_from:  # a later stage: trained weights, a fresh optimiser
        return _init_from(cfg, vocab_size)
    return RetNetLM(retnet_config(cfg, vocab_size))


def _init_from(cfg: TrainConfig, vocab_size: int) -> nn.Module:
    """The model the ``model`` section describes, with the weights of ``init_from``.

    The section may change settings that add no weights (dropout, memory_read_scale)
    and turn on memory_copy (its gate starts fresh); anything else that changes the
    weights fails, naming them.
    """
    from retnet_core.model import RetNetLM

    trained = load_pretrained(cfg.init_from)
    model = RetNetLM(retnet_config(cfg, vocab_size))
    # copies into tied weights too; a memory copy gate the stage adds starts fresh
    missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
    new = [k for k in missing if ".memory.copy_gate." not in k]
    if new or unexpected:
        raise ValueError(f"{cfg.init_from}: missing {new}, unexpected {list(unexpected)}")
    return model


class LMObjective(nn.Module):
    """The training loss of one micro-batch, as one module.

    A module of its own so DDP wraps the call that actually runs (``prefill`` is not
    ``forward``, and the memory objective runs the model twice): gradients are
    synchronised whichever path is used. ``logits`` is the plain LM forward used for
    evaluation.
    """

    def __init__(
        self,
        model: nn.Module,
        chunk_size: int = 0,
        memory_fn: Callable | None = None,
        tok: ChatTokenizer | None = None,
        seq_len: int = 256,
        memory_weight: float = 1.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.memory_fn = memory_fn
        self.tok = tok
        self.seq_len = seq_len
        self.memory_weight = memory_weight
        self.parts: dict[str, float] = {}  # last micro-batch's loss terms, for the log
        # only the LM term is compiled: its shape is fixed (batch × seq_len), while the
        # memory objective's sessions differ in length every step and would recompile
        self._lm_loss = torch.compile(self.lm_loss) if compile else self.lm_loss

    def logits(self, tokens: Tensor) -> Tensor:
        """tokens (B, T) -> logits (B, T, V), chunkwise when ``chunk_size`` < T."""
        t = tokens.shape[1]
        if self.chunk_size and t > self.chunk_size and hasattr(self.model, "prefill"):
            logits, _ = self.model.prefill(tokens, chunk_size=self.chunk_size)
            return logits
        return self.model(tokens)

    def lm_loss(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """Mean next-token cross-entropy of tokens (B, T) against labels (B, T)."""
        logits = self.logits(tokens)
        # fp32 cross-entropy even under bf16 autocast: the softmax over 4k ids needs it
        return F.cross_entropy(
            logits.float().reshape(-1, logits.shape[-1]),
            labels.reshape(-1),
            ignore_index=IGNORE_INDEX,
        )

    def forward(
        self, tokens: Tensor, labels: Tensor, memory_examples: list[MemoryExample] | None = None
    ) -> Tensor:
        """Mean next-token loss (fp32) plus ``memory_weight`` × the memory objective."""
        loss = self._lm_loss(tokens, labels)
        self.parts = {}
        if memory_examples and self.memory_fn is not None:
            mem = self.memory_fn(
                self.model, self.tok, memory_examples, tokens.device, seq_len=self.seq_len
            )
            self.parts["memory_loss"] = float(mem.detach())
            loss = loss + self.memory_weight * mem
        self.parts["lm_loss"] = float(loss.detach()) - self.memory_weight * self.parts.get(
            "memory_loss", 0.0
        )
        return loss


def describe(model: nn.Module) -> dict[str, Any]:
    """Parameter count and config, for logs and model cards."""
    config = getattr(model, "config", None)
    as_dict = json.loads(config.to_json()) if hasattr(config, "to_json") else vars(config)
    return {"params": sum(p.numel() for p in model.parameters()), "config": as_dict}
