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

Variants (shared by the Llama import and distillation, and the fla-hub import); every one
defaults to the behaviour above, and a field at its default is left out of the JSON, so
older checkpoints read, hash and fingerprint exactly as before:

- ``n_kv_heads``: grouped key/value heads (Llama GQA): query head h reads kv head
  h // (n_heads / n_kv_heads). Retention keeps one state per *query* head
  (S: B, H, D_k, D_v), each with its own decay γ_h: exact, and the multi-scale decay
  survives the sharing. The softmax paths keep K/V per kv head.
- ``head_dim``: D_k per head (None: d_model / n_heads); D_v = D_k · value_factor.
- ``rotary``: "torchscale" (pairs (2i, 2i+1), θ_i = base^(−linspace(0, 1, D_k/2))) or
  "neox" (pairs (i, i + D_k/2), θ_i = base^(−2i/D_k): Llama, HF and fla), θ base
  ``rotary_base``.
- ``qk_scale``: the factor on k (None: 1/√D_k). Softmax scores are q̃·k̃ with that k̃.
- ``out_gate``: y = W_O(swish(x W_G) ⊙ o) (True) or y = W_O o (False, Llama).
- ``head_norm``: "rms" | "layer" | "none" (Llama). A per-head norm with an affine weight
  shared across heads (fla's group norm) is "rms" with the weight folded into W_O's
  columns: W_O(swish(g) ⊙ (w ⊙ n)) = (W_O diag(w))(swish(g) ⊙ n).
- ``mixer``: "retention" | "softmax" (causal softmax attention on the same weights: the
  teacher; its state is a KV cache, O(T)) | "hybrid" (softmax over the last ``window``
  tokens and the first ``sinks``, plus retention over what left the window; fixed-size
  state). Equations in ``retnet_core.attention``.
- ``decay``: "fixed" | "learned" (per layer and head, γ = sigmoid(ρ), initialised from
  ``decay_gammas`` or γ_h = 1 − 2^(−decay_base−h)).
- ``feature_map``: "identity" | "hedgehog" (φ(x) = [softmax(x W_h); softmax(−x W_h)] on
  retention's q̃ and k̃, W_h per head initialised to I; D_φ = 2 D_k).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from retnet_core.retention import NORM_MODES

HEAD_NORMS = ("rms", "layer", "none")
ROTARY_MODES = ("torchscale", "neox")
MIXERS = ("retention", "softmax", "hybrid")
FEATURE_MAPS = ("identity", "hedgehog")

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
    # ---- variants (see the module docstring); written to JSON only when not default ----
    n_kv_heads: int | None = None  # grouped key/value heads (None: n_heads)
    head_dim: int | None = None  # D_k per head (None: d_model // n_heads)
    rotary: str = "torchscale"  # "torchscale" | "neox"
    qk_scale: float | None = None  # factor on k (None: 1/√D_k)
    out_gate: bool = True  # swish(x W_G) output gate
    mixer: str = "retention"  # "retention" | "softmax" | "hybrid"
    window: int = 64  # hybrid: softmax over the last `window` tokens (the current included)
    sinks: int = 0  # hybrid: and over the first `sinks` tokens of the sequence
    decay: str = "fixed"  # "fixed" | "learned"
    decay_gammas: list[float] | None = None  # γ_h per head (None: 1 − 2^(−decay_base−h))
    feature_map: str = "identity"  # "identity" | "hedgehog"

    def __post_init__(self) -> None:
        self.memory_layers = sorted(int(i) for i in self.memory_layers)
        if self.decay_gammas is not None:
            self.decay_gammas = [float(g) for g in self.decay_gammas]
        self.validate()

    # ---- derived sizes ----------------------------------------------------------------
    @property
    def key_dim(self) -> int:
        """D_k per head."""
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads H_kv (H_kv divides H; query head h reads kv head h // (H/H_kv))."""
        return self.n_kv_heads if self.n_kv_heads is not None else self.n_heads

    @property
    def feature_dim(self) -> int:
        """D_φ: width of retention's keys after the feature map (the state's rows)."""
        return 2 * self.key_dim if self.feature_map == "hedgehog" else self.key_dim

    @property
    def value_dim(self) -> int:
        """Total value width H·D_v = round(H · D_k · value_factor) (d_model·vf by default)."""
        return round(self.n_heads * self.key_dim * self.value_factor)

    @property
    def head_value_dim(self) -> int:
        """D_v per head."""
        return self.value_dim // self.n_heads

    def validate(self) -> None:
        """Raise :class:`ConfigError` on inconsistent settings."""
        checks = [
            (
                self.head_dim is not None or self.d_model % self.n_heads == 0,
                "d_model must be a multiple of n_heads (or head_dim given)",
            ),
            (self.key_dim > 0 and self.key_dim % 2 == 0, "D_k must be even (pairs are rotated)"),
            (self.value_dim % self.n_heads == 0, "H·D_k·value_factor must divide by heads"),
            (
                self.kv_heads > 0 and self.n_heads % self.kv_heads == 0,
                "n_kv_heads must divide n_heads",
            ),
            (self.ffn_activation in ("swish", "gelu"), "ffn_activation: 'swish' or 'gelu'"),
            (self.head_norm in HEAD_NORMS, f"head_norm must be one of {HEAD_NORMS}"),
            (self.rotary in ROTARY_MODES, f"rotary must be one of {ROTARY_MODES}"),
            (self.mixer in MIXERS, f"mixer must be one of {MIXERS}"),
            (self.window >= 1 and self.sinks >= 0, "window ≥ 1 and sinks ≥ 0"),
            (self.decay in ("fixed", "learned"), "decay: 'fixed' or 'learned'"),
            (
                self.decay_gammas is None
                or (
                    len(self.decay_gammas) == self.n_heads
                    and all(0.0 < g < 1.0 for g in self.decay_gammas)
                ),
                "decay_gammas: one γ in (0, 1) per head",
            ),
            (self.feature_map in FEATURE_MAPS, f"feature_map must be one of {FEATURE_MAPS}"),
            (self.qk_scale is None or self.qk_scale > 0, "qk_scale must be positive"),
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
        """Fields plus the format tag and version (what config.json holds).

        Variant fields at their default are left out: a model that uses none of them has
        the JSON (and so the fingerprint) it had before they existed.
        """
        data = asdict(self)
        for name, default in VARIANT_DEFAULTS.items():
            if data[name] == default:
                del data[name]
        return {"format": CONFIG_FORMAT, "format_version": CONFIG_FORMAT_VERSION, **data}

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


# Fields added after format 1's first release, with the value that keeps the old model.
VARIANT_FIELDS = (
    "n_kv_heads", "head_dim", "rotary", "qk_scale", "out_gate", "mixer", "window", "sinks",
    "decay", "decay_gammas", "feature_map",
)  # fmt: skip
VARIANT_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(RetNetConfig) if f.name in VARIANT_FIELDS
}
