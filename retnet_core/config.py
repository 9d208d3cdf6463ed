"""RetNetConfig: every architectural setting of the model, stored as JSON.

The fields can express torchscale 0.3.0's ``RetNetDecoder`` (see ``retnet_core.convert``):

=============================  ===============================================
torchscale ``RetNetConfig``    ours
=============================  ===============================================
decoder_embed_dim              d_model (= total key dim, D_k = d_model / heads)
decoder_value_embed_dim        value_factor = value_dim / d_model
decoder_retention_heads        n_heads
decoder_ffn_embed_dim          ffn_dim
decoder_layers                 n_layers
activation_fn                  ffn_activation ("gelu" is torchscale's default)
layernorm_eps                  norm_eps (every RMSNorm and the per-head norm)
no_scale_embedding=False       embed_scale = √d_model (True: 1.0)
layernorm_embedding            embed_norm
share_decoder_input_output...  tie_embeddings
(parallel forward)             retention_norm = "torchscale"
=============================  ===============================================

Bias-free linears, RMSNorm everywhere, affine-free per-head RMS norm and θ rotation
with angles 10000^(−linspace(0, 1, D_k/2)) are torchscale's choices and ours.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from retnet_core.retention import NORM_MODES

CONFIG_FORMAT = "memsvc-retnet"
CONFIG_FORMAT_VERSION = 1


class ConfigError(ValueError):
    """A config (or checkpoint config.json) that this code cannot read."""


@dataclass
class RetNetConfig:
    """Architecture of :class:`retnet_core.model.RetNetLM`.

    Decay per head h: γ_h = 1 − 2^(−5−h) (``decay_base`` = 5). ``retention_norm`` picks
    the per-row divisor of :func:`retnet_core.retention.retention_denominator`.
    ``chunk_size`` is only the default chunk of ``prefill``: it never changes results.
    ``memory_*`` fields configure ``retnet_core.memory.MemoryLayer`` at ``memory_layers``.
    """

    vocab_size: int = 32000
    d_model: int = 512
    n_layers: int = 6
    n_heads: int = 8
    ffn_dim: int = 2048
    value_factor: float = 2.0
    ffn_activation: str = "swish"  # "swish" (SwiGLU) | "gelu" (GeGLU)
    norm_eps: float = 1e-6
    head_norm: str = "rms"  # per-head norm: "rms" | "layer" (both affine-free)
    retention_norm: str = "decay"  # "none" | "decay" | "torchscale"
    decay_base: float = 5.0
    rotary_base: float = 10000.0
    embed_scale: float = 1.0
    embed_norm: bool = False
    tie_embeddings: bool = False
    bias: bool = False
    dropout: float = 0.0
    chunk_size: int = 256
    pad_token_id: int = 0
    memory_layers: list[int] = field(default_factory=list)
    memory_d_key: int = 64
    memory_d_value: int = 64
    memory_top_k: int = 0
    memory_write_mode: str = "append"
    memory_capacity: int | None = None
    memory_blend_threshold: float = 0.9
    memory_eviction: str = "lru"
    memory_write_threshold: float = 0.5
    memory_touch_threshold: float = 0.05
    memory_gate: bool = True
    memory_pool: str = "attention"  # span compression: learned attention pooling, or "mean"
    # what one slot holds: a whole span compressed ("span"), or one token of it ("token":
    # key from its context, value from the token after it, so a read continues the text)
    memory_unit: str = "span"
    memory_read_scale: float | None = None  # None: q·k/√d_k; s: s·cos(q, k) (no weights)
    memory_value: str = "hidden"  # token slots: the next token's "hidden" state or "embedding"
    memory_copy: bool = False  # token slots hold the next id; the head mixes in a copy of it

    def __post_init__(self) -> None:
        self.memory_layers = sorted(int(i) for i in self.memory_layers)
        self.validate()

    # ---- derived sizes ----------------------------------------------------------------
    @property
    def key_dim(self) -> int:
        """D_k per head."""
        return self.d_model // self.n_heads

    @property
    def value_dim(self) -> int:
        """Total value width H·D_v = round(d_model · value_factor)."""
        return round(self.d_model * self.value_factor)

    @property
    def head_value_dim(self) -> int:
        """D_v per head."""
        return self.value_dim // self.n_heads

    def validate(self) -> None:
        """Raise :class:`ConfigError` on inconsistent settings."""
        checks = [
            (self.d_model % self.n_heads == 0, "d_model must be a multiple of n_heads"),
            (self.key_dim % 2 == 0, "d_model / n_heads must be even (pairs are rotated)"),
            (self.value_dim % self.n_heads == 0, "d_model·value_factor must divide by heads"),
            (self.ffn_activation in ("swish", "gelu"), "ffn_activation: 'swish' or 'gelu'"),
            (self.head_norm in ("rms", "layer"), "head_norm: 'rms' or 'layer'"),
            (self.retention_norm in NORM_MODES, f"retention_norm must be one of {NORM_MODES}"),
            (self.chunk_size > 0, "chunk_size must be positive"),
            (all(0 <= i < self.n_layers for i in self.memory_layers), "memory_layers range"),
            (len(set(self.memory_layers)) == len(self.memory_layers), "memory_layers repeat"),
            (self.memory_pool in ("attention", "mean"), "memory_pool: 'attention' or 'mean'"),
            (self.memory_unit in ("span", "token"), "memory_unit: 'span' or 'token'"),
            (self.memory_value in ("hidden", "embedding"), "memory_value: 'hidden' or 'embedding'"),
            (
                not self.memory_copy or self.memory_unit == "token",
                "memory_copy needs memory_unit 'token'",
            ),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    # ---- JSON -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Fields plus the format tag and version (what config.json holds)."""
        return {"format": CONFIG_FORMAT, "format_version": CONFIG_FORMAT_VERSION, **asdict(self)}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys): also what the fingerprint hashes."""
        return json.dumps(self.to_dict(), sort_keys=True, indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetNetConfig:
        """Inverse of :meth:`to_dict`; unknown keys or an unknown format are errors."""
        data = dict(data)
        fmt = data.pop("format", CONFIG_FORMAT)
        version = data.pop("format_version", CONFIG_FORMAT_VERSION)
        if fmt != CONFIG_FORMAT or version != CONFIG_FORMAT_VERSION:
            raise ConfigError(
                f"unknown checkpoint format {fmt!r} version {version!r}; this code reads "
                f"{CONFIG_FORMAT!r} version {CONFIG_FORMAT_VERSION}"
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown RetNetConfig keys: {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> RetNetConfig:
        """Parse :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))

    def save(self, path: str | Path) -> None:
        """Write config JSON to ``path``."""
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RetNetConfig:
        """Read a config JSON file."""
        return cls.from_json(Path(path).read_text())
