"""Import a flash-linear-attention RetNet (the fla-hub models) as a memsvc checkpoint.

    python -m retnet_core.convert_fla SRC DST        (or ``memsvc convert fla SRC DST``)

SRC is a Hugging Face directory of fla's ``RetNetForCausalLM`` (e.g. a download of
``fla-hub/retnet-1.3B-100B``): ``config.json`` with fla's ``RetNetConfig`` fields,
``model.safetensors`` (or shards), ``tokenizer.json`` (or ``tokenizer.model``, converted
when ``transformers`` and ``sentencepiece`` are importable). DST gets ``config.json``,
``model.safetensors`` (float32), ``tokenizer.json``, ``chat_format.json`` and
``generation_config.json``. The result is a *base* model: no Retention Layer (no memory
slots) until one is trained on it (``memsvc distill`` / ``memsvc train``, memory stage).

fla's RetNet, per block (read from fla's source, layers/multiscale_retention.py):
    x' = x + W_O(RMSNorm_w(o_h) ⊙ swish(x W_G)),   o = Retention(θ(q), θ(k), v; γ_h)
    x'' = x' + W_down(silu(x' W_gate) ⊙ x' W_up)                        (both pre-normed)
with q = x W_Q (H heads of D_k = hidden·expand_k/H), k = x W_K, v = x W_V (H_kv heads,
D_v = hidden·expand_v/H), query head h reading kv head h // (H/H_kv); scores scaled by
D_k^(−1/2) on q; γ_h = 1 − 2^(−5−h); rotary NeoX (pairs (i, i + D_k/2),
θ_i = 10000^(−2i/D_k)); no per-row normaliser; RMSNorm_w: RMS over D_v per head with one
affine weight w (D_v,) shared by all heads; final RMSNorm; untied head by default.

Mapping
-------
=======================================  ================================================
fla                                      memsvc
=======================================  ================================================
model.embeddings                         embed (embed_scale 1, no embed norm)
layers.i.attn_norm / mlp_norm            blocks.i.retention_norm / ffn_norm (same eps)
attn.q_proj; k_proj; v_proj; g_proj      retention.in_proj rows [W_Q; W_K; W_V; W_G]
                                         (n_kv_heads, head_dim, value_factor D_v/D_k)
attn.o_proj, g_norm(_swish_gate).weight  retention.out_proj = W_O diag(w tiled over heads)
                                         (head_norm "rms": exact, the weight folded)
1/√D_k on q                              qk_scale None (1/√D_k on k: the same scores)
rotary                                   rotary "neox", rotary_base 10000
(no normaliser)                          retention_norm "none"; decay fixed, base 5
mlp.gate_proj; up_proj; down_proj        ffn.w_in rows [gate; up], ffn.w_out (swish)
  (fla < 0.2: gate_proj = [gate; up])
model.norm; lm_head                      norm; head (tie_embeddings if tied)
=======================================  ================================================

The fold: W_O(swish(g) ⊙ (w ⊙ n)) = (W_O diag(w))(swish(g) ⊙ n), n the normed head.
Refused with a clear error: short convolutions, feature maps, hybrid attention layers,
attention residuals, activations other than swish, and weights whose names or shapes do
not match the config.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from retnet_core.checkpoint import save_pretrained
from retnet_core.config import RetNetConfig
from retnet_core.convert_fla_tokenizer import (
    base_chat_format,
    check_round_trip,
    fla_tokenizer,
    special_tokens,
)
from retnet_core.llama_source import SourceError
from retnet_core.model import RetNetLM
from retnet_core.tokenizer import ChatTokenizer

__all__ = [
    "FLA_DEFAULTS",
    "FlaShape",
    "SourceError",
    "base_chat_format",
    "cli",
    "convert_fla",
    "fla_config",
    "fla_shape",
    "fla_tokenizer",
    "load_fla",
    "map_fla_weights",
]

# fla's RetNetConfig defaults for the fields that shape the function.
FLA_DEFAULTS: dict[str, Any] = {
    "expand_k": 1.0,
    "expand_v": 2.0,
    "hidden_ratio": 2,
    "intermediate_size": None,
    "num_kv_heads": None,
    "feature_map": None,
    "hidden_act": "swish",
    "use_short_conv": False,
    "use_output_gate": True,
    "elementwise_affine": True,
    "norm_eps": 1e-6,
    "attn": None,
    "tie_word_embeddings": False,
    "attnres_block_size": None,
}
REQUIRED = ("hidden_size", "num_hidden_layers", "num_heads", "vocab_size")
DEFAULT_SAMPLING = {"temperature": 0.7, "top_p": 0.9, "max_new_tokens": 128}


@dataclass(frozen=True)
class FlaShape:
    """What an fla RetNet's config fixes: sizes per head, eps, gate, affine, tying."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_k: int  # D_k
    head_v: int  # D_v
    ffn: int
    eps: float
    gate: bool
    affine: bool
    tied: bool


def _intermediate(hidden: int, ratio: float | None, size: int | None) -> int:
    """fla GatedMLP's width: ``intermediate_size``, else ⌈hidden·ratio·2/3⌉ to 256."""
    if size is not None:
        return int(size)
    width = int(hidden * (4 if ratio is None else ratio) * 2 / 3)
    return 256 * ((width + 255) // 256)


def fla_shape(cfg: dict[str, Any]) -> FlaShape:
    """Validate an fla ``config.json`` (dict) and read its shape; SourceError if refused."""
    missing = [k for k in REQUIRED if k not in cfg]
    if missing:
        raise SourceError(f"config.json lacks required fla RetNetConfig fields {missing}")
    if cfg.get("model_type", "retnet") != "retnet":
        raise SourceError(f"model_type {cfg['model_type']!r} is not fla's 'retnet'")
    c = {**FLA_DEFAULTS, **{k: v for k, v in cfg.items() if k in FLA_DEFAULTS}}
    refused = {
        "use_short_conv": bool(c["use_short_conv"]),
        "feature_map": c["feature_map"] is not None,
        "attn": bool(c["attn"]),  # hybrid softmax-attention layers
        "attnres_block_size": c["attnres_block_size"] is not None,
        "hidden_act": c["hidden_act"] not in ("swish", "silu"),
    }
    bad = [f"{k}={c[k]!r}" for k, v in refused.items() if v]
    if bad:
        raise SourceError(f"unsupported fla settings {bad} (the converted model would differ)")
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_heads"])
    kv = int(c["num_kv_heads"] or heads)
    key_dim, value_dim = int(hidden * c["expand_k"]), int(hidden * c["expand_v"])
    if key_dim % heads or value_dim % heads or heads % kv:
        raise SourceError(
            f"key dim {key_dim} / value dim {value_dim} must divide by num_heads {heads}, "
            f"and num_heads by num_kv_heads {kv}"
        )
    return FlaShape(
        vocab_size=int(cfg["vocab_size"]),
        hidden=hidden,
        layers=int(cfg["num_hidden_layers"]),
        heads=heads,
        kv_heads=kv,
        head_k=key_dim // heads,
        head_v=value_dim // heads,
        ffn=_intermediate(hidden, c["hidden_ratio"], c["intermediate_size"]),
        eps=float(c["norm_eps"]),
        gate=bool(c["use_output_gate"]),
        affine=c["elementwise_affine"] is not False,
        tied=bool(c["tie_word_embeddings"]),
    )


def fla_config(s: FlaShape, **overrides: Any) -> RetNetConfig:
    """The RetNetConfig that computes fla's function (see the mapping table)."""
    fields: dict[str, Any] = dict(
        vocab_size=s.vocab_size,
        d_model=s.hidden,
        n_layers=s.layers,
        n_heads=s.heads,
        n_kv_heads=None if s.kv_heads == s.heads else s.kv_heads,
        head_dim=None if s.head_k * s.heads == s.hidden else s.head_k,
        ffn_dim=s.ffn,
        value_factor=s.head_v / s.head_k,
        ffn_activation="swish",
        norm_eps=s.eps,
        head_norm="rms",
        retention_norm="none",
        decay_base=5.0,
        rotary="neox",
        rotary_base=10000.0,
        qk_scale=None,
        out_gate=s.gate,
        embed_scale=1.0,
        tie_embeddings=s.tied,
    )
    fields.update(overrides)
    config = RetNetConfig(**fields)
    if config.head_value_dim != s.head_v:
        raise SourceError(f"D_v {s.head_v} is not expressible (got {config.head_value_dim})")
    return config


def _expected_shapes(s: FlaShape) -> dict[str, tuple[int, ...]]:
    """fla parameter name -> shape, for one model of shape ``s`` (fused MLP not listed)."""
    d, hk, hv = s.hidden, s.heads * s.head_k, s.heads * s.head_v
    out: dict[str, tuple[int, ...]] = {
        "model.embeddings.weight": (s.vocab_size, d),
        "model.norm.weight": (d,),
    }
    if not s.tied:
        out["lm_head.weight"] = (s.vocab_size, d)
    norm = "g_norm_swish_gate" if s.gate else "g_norm"
    for i in range(s.layers):
        p = f"model.layers.{i}."
        out.update({
            p + "attn_norm.weight": (d,),
            p + "mlp_norm.weight": (d,),
            p + "attn.q_proj.weight": (hk, d),
            p + "attn.k_proj.weight": (s.kv_heads * s.head_k, d),
            p + "attn.v_proj.weight": (s.kv_heads * s.head_v, d),
            p + "attn.o_proj.weight": (d, hv),
            p + "mlp.down_proj.weight": (d, s.ffn),
        })  # fmt: skip
        if s.gate:
            out[p + "attn.g_proj.weight"] = (hv, d)
        if s.affine:
            out[p + f"attn.{norm}.weight"] = (s.head_v,)
    return out


def _mlp_in(w: dict[str, Tensor], prefix: str, s: FlaShape) -> Tensor:
    """[W_gate; W_up] (2·ffn, hidden): split weights, or fla < 0.2's fused gate_proj."""
    gate = w.get(prefix + "gate_proj.weight")
    up = w.get(prefix + "up_proj.weight")
    if gate is None:
        raise SourceError(f"source lacks weight {prefix}gate_proj.weight")
    if up is None and tuple(gate.shape) == (2 * s.ffn, s.hidden):
        return gate  # fused: gate, up = gate_proj(x).chunk(2)
    if up is None:
        raise SourceError(f"source lacks weight {prefix}up_proj.weight")
    for name, t in (("gate_proj", gate), ("up_proj", up)):
        if tuple(t.shape) != (s.ffn, s.hidden):
            raise SourceError(
                f"{prefix}{name}.weight has shape {tuple(t.shape)}, expected {(s.ffn, s.hidden)}"
            )
    return torch.cat([gate, up], dim=0)


def map_fla_weights(weights: dict[str, Tensor], s: FlaShape) -> dict[str, Tensor]:
    """fla-named weights -> our state dict (float32), shapes checked, the norm weight folded."""
    expected = _expected_shapes(s)
    for name, shape in expected.items():
        if name not in weights:
            raise SourceError(f"source lacks weight {name}")
        if tuple(weights[name].shape) != shape:
            raise SourceError(
                f"weight {name} has shape {tuple(weights[name].shape)}, expected {shape} "
                "from config.json"
            )
    mlp = {f"model.layers.{i}.mlp.{n}_proj.weight" for i in range(s.layers) for n in ("gate", "up")}
    extra = sorted(set(weights) - set(expected) - mlp - {"lm_head.weight"})
    if extra:
        raise SourceError(f"source has weights this converter does not know: {extra[:8]}")
    w = {k: v.float() for k, v in weights.items()}
    out = {"embed.weight": w["model.embeddings.weight"], "norm.weight": w["model.norm.weight"]}
    out["head.weight"] = out["embed.weight"] if s.tied else w["lm_head.weight"]
    norm = "g_norm_swish_gate" if s.gate else "g_norm"
    for i in range(s.layers):
        p, b = f"model.layers.{i}.", f"blocks.{i}."
        names = ("q", "k", "v", "g") if s.gate else ("q", "k", "v")
        out[b + "retention.in_proj.weight"] = torch.cat(
            [w[f"{p}attn.{n}_proj.weight"] for n in names], dim=0
        )
        o_proj = w[p + "attn.o_proj.weight"]
        if s.affine:  # W_O diag(w tiled over the H heads)
            o_proj = o_proj * w[p + f"attn.{norm}.weight"].repeat(s.heads)[None, :]
        out[b + "retention.out_proj.weight"] = o_proj
        out[b + "retention_norm.weight"] = w[p + "attn_norm.weight"]
        out[b + "ffn_norm.weight"] = w[p + "mlp_norm.weight"]
        out[b + "ffn.w_in.weight"] = _mlp_in(w, p + "mlp.", s)
        out[b + "ffn.w_out.weight"] = w[p + "mlp.down_proj.weight"]
    return out


def read_weights(src: Path) -> dict[str, Tensor]:
    """Every tensor of the directory's ``*.safetensors`` files (one file or shards)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise SourceError(f"{src}: no .safetensors weights")
    weights: dict[str, Tensor] = {}
    for f in files:
        try:
            weights.update(load_file(str(f)))
        except (SafetensorError, OSError) as exc:
            raise SourceError(f"{f}: unreadable weights: {exc}") from exc
    return weights


def load_fla(src: str | Path, **overrides: Any) -> tuple[RetNetLM, ChatTokenizer]:
    """(model in eval mode, float32, CPU; its chat tokenizer) from an fla RetNet directory."""
    src = Path(src)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise SourceError(f"{src}: no config.json")
    try:
        raw = json.loads(cfg_path.read_text())
    except ValueError as exc:
        raise SourceError(f"{cfg_path}: not JSON: {exc}") from exc
    shape = fla_shape(raw)
    config = fla_config(shape, **overrides)
    weights = map_fla_weights(read_weights(src), shape)
    with torch.device("meta"):
        model = RetNetLM(config)
    model.load_state_dict(weights, strict=True, assign=True)
    if config.tie_embeddings:
        model.head.weight = model.embed.weight
    model._weights = None
    raw_tok = fla_tokenizer(src)
    if raw_tok.get_vocab_size(with_added_tokens=True) > shape.vocab_size:
        raise SourceError(
            f"the tokenizer has {raw_tok.get_vocab_size(with_added_tokens=True)} ids, "
            f"the model {shape.vocab_size}"
        )
    tok = ChatTokenizer(raw_tok, base_chat_format(raw_tok, special_tokens(src)))
    check_round_trip(tok)
    return model.eval(), tok


def convert_fla(src: str | Path, dst: str | Path, **overrides: Any) -> Path:
    """Write the checkpoint directory ``dst`` (see the module docstring); returns it."""
    model, tok = load_fla(src, **overrides)
    out = save_pretrained(model, dst, tok)
    gen_path = Path(src) / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    keep = ("temperature", "top_p", "top_k", "max_new_tokens")
    sampling = {**DEFAULT_SAMPLING, **{k: gen[k] for k in keep if k in gen}}
    (Path(out) / "generation_config.json").write_text(json.dumps(sampling, indent=2) + "\n")
    return out


def cli(argv: list[str] | None = None) -> int:
    """``python -m retnet_core.convert_fla SRC DST``; exit 2 with the reason on refusal."""
    ap = argparse.ArgumentParser(
        prog="python -m retnet_core.convert_fla", description=__doc__.split("\n")[0]
    )
    ap.add_argument("src", help="a Hugging Face directory of fla's RetNetForCausalLM")
    ap.add_argument("dst", help="checkpoint directory to write")
    args = ap.parse_args(argv)
    try:
        out = convert_fla(args.src, args.dst)
    except (SourceError, OSError, ValueError) as exc:
        print(f"convert fla: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} (a base model: memory features are off until a Retention Layer is "
          "trained on it)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
