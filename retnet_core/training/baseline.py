"""A small causal Transformer: the same-size baseline the RetNet is compared against.

Pre-norm GPT (LayerNorm, multi-head softmax attention, GELU MLP, learned absolute
positions, tied input/output embeddings). Only the width of the MLP is free, so
:func:`match_ffn` can pick it to give the Transformer the RetNet's parameter count.
It follows the RetNet's training interface: ``forward(tokens (B, T)) -> logits
(B, T, V)``, ``save_pretrained(dir)`` and ``from_pretrained(dir)``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class TransformerConfig:
    """Shape of the baseline Transformer."""

    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 4
    ffn_dim: int = 1024
    max_seq_len: int = 1024
    dropout: float = 0.0
    arch: str = "transformer"


class Block(nn.Module):
    """Pre-norm attention + MLP block."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False)
        self.out = nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor) -> Tensor:
        """x (B, T, D) -> (B, T, D)."""
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))  # (B, H, T, Dh)
        drop = self.dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class TransformerLM(nn.Module):
    """Causal Transformer language model."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.max_seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        """tokens (B, T) -> logits (B, T, V). ``lengths`` is accepted and unused:
        with right padding and a causal mask, padded positions never affect real ones."""
        t = tokens.shape[1]
        if t > self.config.max_seq_len:
            raise ValueError(f"sequence of {t} exceeds max_seq_len {self.config.max_seq_len}")
        pos = torch.arange(t, device=tokens.device)
        x = self.embed(tokens) + self.pos(pos)
        for block in self.blocks:
            x = block(x)
        return self.ln_f(x) @ self.embed.weight.T  # tied output embedding

    def num_params(self) -> int:
        """Trainable parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``config.json`` and ``model.safetensors``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2))
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(directory / WEIGHTS_FILE))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | None = None) -> TransformerLM:
        """Inverse of :meth:`save_pretrained`."""
        directory = Path(directory)
        cfg = TransformerConfig(**json.loads((directory / CONFIG_FILE).read_text()))
        model = cls(cfg)
        model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
        return model.to(device) if device else model


def param_count(config: TransformerConfig) -> int:
    """Parameters of a :class:`TransformerLM` with ``config``, without building it."""
    d, f = config.d_model, config.ffn_dim
    per_block = 4 * d * d + 2 * d * f + 4 * d  # qkv + proj, mlp, two LayerNorms
    return (config.vocab_size + config.max_seq_len) * d + config.n_layers * per_block + 2 * d


def match_ffn(config: TransformerConfig, target_params: int, multiple: int = 8) -> int:
    """The MLP width (a multiple of ``multiple``) whose parameter count is nearest target."""
    d = config.d_model
    fixed = param_count(TransformerConfig(**{**asdict(config), "ffn_dim": 0}))
    exact = (target_params - fixed) / (2 * d * config.n_layers)
    return max(multiple, int(round(exact / multiple)) * multiple)
