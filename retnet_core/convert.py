"""Import a torchscale 0.3.0 RetNet into our checkpoint format.

    python -m retnet_core.convert torchscale SRC DST [--config CONFIG.json] [--trust-pickle]

SRC is a ``torch.save`` file holding either a torchscale ``RetNetDecoder`` state dict, or
a fairseq-style dict ``{"model": state dict with "decoder." keys, "cfg": {"model": ...}}``
(``"args"`` in older fairseq). CONFIG.json holds torchscale ``RetNetConfig`` fields; it
overrides the fields saved in SRC, which override torchscale's defaults. DST becomes a
checkpoint directory (config.json + model.safetensors, float32) for ``RetNetLM``.

How torchscale's RetNet maps onto ours, and how its normalisations are matched
----------------------------------------------------------------------------------
Weights: ``q/k/v/g_proj`` are stacked into ``in_proj`` (rows Q, K, V, G), the GLU's
``fc1`` (activated) and ``gate`` into ``ffn.w_in`` (rows W_1, W_gate), ``fc2`` is
``ffn.w_out``; ``retention_layer_norm``/``final_layer_norm``/``layer_norm``/
``layernorm_embedding`` are our RMSNorms (same eps, affine weight, computed in float32).
No linear has a bias in either model. ``retnet_rel_pos.decay``/``angle`` are buffers,
not weights: we check they equal our γ_h = 1 − 2^(−5−h) and θ_i = 10000^(−linspace(0,1,
D_k/2)) (interleaved pairs, the same pair rotation), and refuse the file if not.

Scalings that change the function, matched exactly:

- keys are multiplied by D_k^(−1/2) with D_k = d_model / heads (not the value head dim);
- the embedding is multiplied by √d_model unless ``no_scale_embedding`` (default True);
- value width is ``decoder_value_embed_dim`` (value_factor = value_dim / d_model);
- the per-head "group norm" is an affine-free RMS norm over D_v with ``layernorm_eps``;
- the FFN is a GLU, act(x W_1) ⊙ x W_gate, act = ``activation_fn`` (exact gelu or swish).

Per-row normalisations of the parallel form. torchscale divides each row n of the decay
mask by c_n = √(Σ_{m≤n} γ^{n−m}), and then each row of masked scores by
max(|Σ_m scores_nm|, 1) (detached). Both are scalars per (head, row), so the output
row is our unnormalised retention o_n divided by δ_n = max(|q̃_n·z_n|, c_n), where
z_n = Σ_{m≤n} γ^{n−m} k̃_m. A per-row scalar would cancel under the per-head RMS norm,
RMS(o/δ) = o / √(ms(o) + eps·δ²), but not through eps: when ms(o) is small next to
eps·δ², it changes the result. So the converted config sets ``retention_norm =
"torchscale"``: the model divides by exactly δ_n in all three forms, carrying z_n as a
small extra state (B, H, D_k) for prefill and step (``retention.retention_denominator``).
torchscale's own recurrent form keeps only c_n (our mode "decay") and so differs from
its parallel form wherever the clamp is active; its chunkwise form uses yet other
scalings (per chunk), and returns no state. We match the parallel form, the one that
defines the trained function.

Refused (a clear error rather than a silently different model): deepnorm / post-norm,
multiway, mixture-of-experts layers, ``no_output_layer``, activations other than gelu and
swish, and files whose keys do not match the config.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from retnet_core.checkpoint import save_pretrained
from retnet_core.config import RetNetConfig
from retnet_core.layers import head_log_decay, rotary_angles
from retnet_core.model import RetNetLM

__all__ = [
    "ConvertError",
    "TORCHSCALE_DEFAULTS",
    "cli",
    "config_from_torchscale",
    "convert_torchscale",
    "map_torchscale_weights",
    "read_torchscale",
    "resolve_torchscale_fields",
]

# torchscale 0.3.0 RetNetConfig defaults for every field that shapes the function.
TORCHSCALE_DEFAULTS: dict[str, Any] = {
    "decoder_embed_dim": 768,
    "decoder_value_embed_dim": 1280,
    "decoder_retention_heads": 3,
    "decoder_ffn_embed_dim": 1280,
    "decoder_layers": 12,
    "decoder_normalize_before": True,
    "activation_fn": "gelu",
    "dropout": 0.0,
    "no_scale_embedding": True,
    "layernorm_embedding": False,
    "moe_freq": 0,
    "deepnorm": False,
    "subln": True,
    "multiway": False,
    "share_decoder_input_output_embed": False,
    "no_output_layer": False,
    "layernorm_eps": 1e-6,
    "vocab_size": -1,
}

_PER_LAYER = {  # torchscale name inside layers.{i}. -> ours inside blocks.{i}.
    "retention.out_proj.weight": "retention.out_proj.weight",
    "retention_layer_norm.weight": "retention_norm.weight",
    "final_layer_norm.weight": "ffn_norm.weight",
    "ffn.fc2.weight": "ffn.w_out.weight",
}
_STACKED = {  # ours <- torchscale pieces, stacked along rows in this order
    "retention.in_proj.weight": ("retention.q_proj", "retention.k_proj", "retention.v_proj",
                                 "retention.g_proj"),
    "ffn.w_in.weight": ("ffn.fc1", "ffn.gate"),
}  # fmt: skip
_TOP = {
    "embed_tokens.weight": "embed.weight",
    "output_projection.weight": "head.weight",
    "layer_norm.weight": "norm.weight",
    "layernorm_embedding.weight": "embed_norm.weight",
}
_BUFFERS = ("retnet_rel_pos.decay", "retnet_rel_pos.angle")


class ConvertError(ValueError):
    """A source file or config that cannot become one of our checkpoints."""


# ---- config ---------------------------------------------------------------------------


def _as_dict(obj: Any) -> dict[str, Any]:
    """A dict of fields from a Mapping (incl. OmegaConf) or an argparse Namespace."""
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj.items())
    if hasattr(obj, "__dict__"):
        return dict(vars(obj))
    raise ConvertError(f"cannot read config fields from a {type(obj).__name__}")


def resolve_torchscale_fields(
    saved: Mapping[str, Any] | None, user: Mapping[str, Any] | None
) -> dict[str, Any]:
    """torchscale defaults <- fields saved in SRC <- the user's CONFIG, then torchscale's
    own post-init rules: deepnorm forces post-norm (and no subln); subln forces pre-norm."""
    fields = dict(TORCHSCALE_DEFAULTS)
    for layer in (saved or {}, user or {}):
        fields.update({k: v for k, v in layer.items() if v is not None})
    if fields["deepnorm"]:
        fields["decoder_normalize_before"], fields["subln"] = False, False
    if fields["subln"]:
        fields["decoder_normalize_before"], fields["deepnorm"] = True, False
    return fields


def _check_supported(ts: Mapping[str, Any]) -> None:
    """Refuse torchscale variants our model does not express."""
    problems = [
        (ts["deepnorm"] or not ts["decoder_normalize_before"], "deepnorm / post-norm blocks"),
        (ts["multiway"], "multiway (two expert copies of every projection)"),
        (ts["moe_freq"] not in (0, None), "mixture-of-experts layers"),
        (ts["no_output_layer"], "no output layer (we are a language model)"),
        (ts["activation_fn"] not in ("gelu", "swish"), f"activation {ts['activation_fn']!r}"),
    ]
    bad = [what for hit, what in problems if hit]
    if bad:
        raise ConvertError(f"torchscale config not supported: {', '.join(bad)}")


def config_from_torchscale(ts: Mapping[str, Any], vocab_size: int) -> RetNetConfig:
    """Our config for resolved torchscale fields ``ts`` (see the module docstring)."""
    _check_supported(ts)
    d, value_dim = int(ts["decoder_embed_dim"]), int(ts["decoder_value_embed_dim"])
    config = RetNetConfig(
        vocab_size=vocab_size,
        d_model=d,
        n_layers=int(ts["decoder_layers"]),
        n_heads=int(ts["decoder_retention_heads"]),
        ffn_dim=int(ts["decoder_ffn_embed_dim"]),
        value_factor=value_dim / d,
        ffn_activation=str(ts["activation_fn"]),
        norm_eps=float(ts["layernorm_eps"]),
        head_norm="rms",
        retention_norm="torchscale",
        embed_scale=1.0 if ts["no_scale_embedding"] else math.sqrt(d),
        embed_norm=bool(ts["layernorm_embedding"]),
        tie_embeddings=bool(ts["share_decoder_input_output_embed"]),
        bias=False,
        dropout=float(ts["dropout"] or 0.0),
    )
    if config.value_dim != value_dim:  # value_factor is a float: make sure it round-trips
        raise ConvertError(f"value width {value_dim} is not expressible for d_model {d}")
    return config


# ---- weights --------------------------------------------------------------------------


def read_torchscale(
    src: str | Path, trust_pickle: bool = False
) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Load SRC -> (decoder state dict without any "decoder." prefix, saved cfg fields).

    By default only tensors, plain containers and argparse Namespaces are unpickled
    (``weights_only``); ``trust_pickle`` allows anything (e.g. OmegaConf configs) and so
    runs code from the file: use it only for files you trust.
    """
    try:
        if trust_pickle:
            obj = torch.load(src, map_location="cpu", weights_only=False)
        else:
            with torch.serialization.safe_globals([argparse.Namespace]):
                obj = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConvertError(
            f"{src}: holds objects beyond tensors and plain containers; if you trust the "
            f"file, pass --trust-pickle ({exc})"
        ) from exc
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{src}: expected a state dict or a fairseq checkpoint dict")
    saved = None
    if "model" in obj and isinstance(obj["model"], Mapping):
        cfg = obj.get("cfg") or {}
        model_cfg = cfg.get("model") if isinstance(cfg, Mapping) else getattr(cfg, "model", None)
        saved = _as_dict(model_cfg if model_cfg is not None else obj.get("args"))
        obj = obj["model"]
    sd = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if sd and all(k.startswith("decoder.") for k in sd):
        sd = {k.removeprefix("decoder."): v for k, v in sd.items()}
    if not sd:
        raise ConvertError(f"{src}: no tensors found")
    return sd, saved


def _check_buffers(sd: Mapping[str, Tensor], config: RetNetConfig) -> None:
    """torchscale's decay and angle buffers, when present, must equal what we compute."""
    angles = rotary_angles(config.key_dim, config.rotary_base)
    ours = {
        "retnet_rel_pos.decay": head_log_decay(config.n_heads, config.decay_base),
        # torchscale stores each angle twice, once per member of a rotated pair
        "retnet_rel_pos.angle": angles.repeat_interleave(2),
    }
    for name, want in ours.items():
        if name in sd:
            got = sd[name].double()
            if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-5, atol=1e-7):
                raise ConvertError(f"{name} differs from ours: not a stock torchscale RetNet")


def map_torchscale_weights(sd: Mapping[str, Tensor], config: RetNetConfig) -> dict[str, Tensor]:
    """torchscale state dict -> our state dict (names of :class:`RetNetLM`).

    Every source key must be used (except the two checked buffers), and every one of our
    weights must be filled; anything else is a :class:`ConvertError`.
    """
    _check_buffers(sd, config)
    used = set(_BUFFERS)
    out: dict[str, Tensor] = {}

    def take(name: str) -> Tensor:
        if name not in sd:
            raise ConvertError(f"source has no {name!r}")
        used.add(name)
        return sd[name]

    for theirs, ours in _TOP.items():
        if theirs in sd:
            out[ours] = take(theirs)
    for i in range(config.n_layers):
        for theirs, ours in _PER_LAYER.items():
            out[f"blocks.{i}.{ours}"] = take(f"layers.{i}.{theirs}")
        for ours, pieces in _STACKED.items():
            parts = [take(f"layers.{i}.{p}.weight") for p in pieces]
            out[f"blocks.{i}.{ours}"] = torch.cat(parts, dim=0)
    if config.tie_embeddings:
        out["head.weight"] = out["embed.weight"]
    leftover = sorted(set(sd) - used)
    if leftover:
        raise ConvertError(f"source keys not understood (wrong config?): {leftover[:8]}")
    return out


def _vocab_size(sd: Mapping[str, Tensor], ts: Mapping[str, Any]) -> int:
    if "embed_tokens.weight" not in sd:
        raise ConvertError("source has no embed_tokens.weight: an LM needs its embedding")
    vocab = int(sd["embed_tokens.weight"].shape[0])
    declared = int(ts.get("vocab_size") or -1)
    if declared > 0 and declared != vocab:
        raise ConvertError(f"config vocab_size {declared} != embedding rows {vocab}")
    return vocab


def convert_torchscale(
    src: str | Path,
    dst: str | Path,
    config: str | Path | Mapping[str, Any] | None = None,
    trust_pickle: bool = False,
) -> RetNetLM:
    """Convert SRC (torchscale) into checkpoint directory DST; returns the loaded model.

    ``config``: a JSON file or a dict of torchscale ``RetNetConfig`` fields (optional when
    SRC is a fairseq checkpoint that saved its config).
    """
    sd, saved = read_torchscale(src, trust_pickle)
    if config is None and saved is None:
        raise ConvertError("SRC is a bare state dict: pass --config with its RetNetConfig fields")
    user = json.loads(Path(config).read_text()) if isinstance(config, str | Path) else config
    ts = resolve_torchscale_fields(saved, user)
    ours = config_from_torchscale(ts, _vocab_size(sd, ts))
    weights = map_torchscale_weights(sd, ours)
    model = RetNetLM(ours)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConvertError(f"weights do not fit the config: missing {missing}, extra {unexpected}")
    save_pretrained(model.eval(), dst)
    return model


# ---- command line ---------------------------------------------------------------------


def cli(
    source_format: str,
    src: Path,
    dst: Path,
    config: Path | None = None,
    trust_pickle: bool = False,
) -> None:
    """Convert a RetNet from another library (SOURCE_FORMAT: torchscale) into a checkpoint.

    SRC: torch file with a torchscale RetNetDecoder state dict, or a fairseq-style dict
    with "model" and "cfg". DST: checkpoint directory to write. --config: JSON with
    torchscale RetNetConfig fields. --trust-pickle: unpickle arbitrary objects in SRC.
    """
    try:
        if source_format != "torchscale":
            raise ConvertError(
                f"unknown source format {source_format!r}; supported: torchscale, llama"
            )
        model = convert_torchscale(src, dst, config, trust_pickle)
    except ConvertError as exc:  # a user error: one line, no traceback, exit status 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    c = model.config
    print(
        f"wrote {dst}: {c.n_layers} layers, d_model {c.d_model}, {c.n_heads} heads, "
        f"vocab {c.vocab_size}, {model.num_parameters():,} parameters"
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m retnet_core.convert torchscale SRC DST --config CONFIG.json``."""
    p = argparse.ArgumentParser(prog="python -m retnet_core.convert", description=cli.__doc__)
    p.add_argument("source_format", choices=["torchscale"])
    p.add_argument("src", type=Path)
    p.add_argument("dst", type=Path)
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--trust-pickle", action="store_true")
    a = p.parse_args(argv)
    try:
        cli(a.source_format, a.src, a.dst, a.config, a.trust_pickle)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
