"""Import a Llama-family model (GGUF file or Hugging Face directory) as a memsvc checkpoint.

    python -m retnet_core.convert_llama SRC DST [--mixer retention|softmax|hybrid]
        [--window 64] [--sinks 4] [--set FIELD=VALUE ...]

DST gets ``config.json``, ``model.safetensors`` (float32), ``tokenizer.json``,
``chat_format.json`` (the source's chat template and special tokens) and
``generation_config.json``. The same weights serve three mixers:

- ``softmax``: causal softmax attention, exactly the source model: the teacher;
- ``retention``: the student initialised from the teacher's weights (retention in place
  of attention, no softmax over positions);
- ``hybrid``: softmax over the last ``window`` tokens and the first ``sinks``, plus
  retention over what left the window (its weight α_h starts at 0: zero-shot it is the
  windowed teacher).

Mapping (HF names; GGUF names are read into these, see ``retnet_core.llama_source``)
-----------------------------------------------------------------------------------
=========================================  ==============================================
Llama                                      memsvc
=========================================  ==============================================
model.embed_tokens                         embed (embed_scale 1, no embed norm)
layers.i.input_layernorm                   blocks.i.retention_norm (RMSNorm, same eps)
self_attn.q_proj; k_proj; v_proj           blocks.i.retention.in_proj rows [W_Q; W_K; W_V]
                                           (n_kv_heads: GQA; head_dim; value_factor 1)
self_attn.o_proj                           blocks.i.retention.out_proj (out_gate False)
rotate-half RoPE, θ = rope_theta           rotary "neox", rotary_base = rope_theta
scores q·k / √head_dim                     qk_scale None (1/√D_k on k)
layers.i.post_attention_layernorm          blocks.i.ffn_norm
mlp: down(silu(gate(x)) ⊙ up(x))           ffn.w_in rows [gate; up], ffn.w_out = down, swish
model.norm; lm_head (or tied)              norm; head (tie_embeddings)
=========================================  ==============================================

No per-head norm (``head_norm="none"``). Refused: rope scaling, biases, activations
other than silu, other architectures (clear errors from ``llama_source``).

Student settings (``retention``/``hybrid``; change any with ``--set``): decay fixed at
γ_h = 1 − 2^(−5−h), ``retention_norm="torchscale"`` (δ = max(|q̃·z|, c_p): the decayed
key sum as normaliser, what keeps a linear attention's output on the teacher's scale),
no head norm, identity feature map. ``--set feature_map=hedgehog`` adds LoLCATs-style
learned feature maps (initialised to the identity matrix), ``--set decay=learned`` learned
decays. In Python, :func:`load_llama` gives the model and tokenizer without a directory.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from retnet_core.checkpoint import save_pretrained
from retnet_core.config import RetNetConfig
from retnet_core.llama_source import LlamaSource, SourceError, read_source
from retnet_core.model import RetNetLM
from retnet_core.tokenizer import ChatFormat, ChatTokenizer

__all__ = [
    "STUDENT_DEFAULTS",
    "SourceError",
    "chat_tokenizer",
    "cli",
    "convert_llama",
    "llama_config",
    "load_llama",
    "map_llama_weights",
]

STUDENT_DEFAULTS: dict[str, Any] = {"retention_norm": "torchscale"}
DEFAULT_SAMPLING = {"temperature": 0.2, "top_p": 0.9, "max_new_tokens": 256}


def llama_config(src: LlamaSource, mixer: str = "retention", **overrides: Any) -> RetNetConfig:
    """The RetNetConfig of ``src`` with ``mixer`` (see the mapping table)."""
    s = src.shape
    fields: dict[str, Any] = dict(
        vocab_size=s.vocab_size,
        d_model=s.hidden,
        n_layers=s.layers,
        n_heads=s.heads,
        n_kv_heads=None if s.kv_heads == s.heads else s.kv_heads,
        head_dim=None if s.head_dim * s.heads == s.hidden else s.head_dim,
        ffn_dim=s.ffn,
        value_factor=1.0,  # D_v = D_k = head_dim
        ffn_activation="swish",
        norm_eps=s.rms_eps,
        head_norm="none",
        retention_norm="none",
        rotary="neox",
        rotary_base=s.rope_theta,
        out_gate=False,
        embed_scale=1.0,
        tie_embeddings=s.tied,
        mixer=mixer,
    )
    if mixer != "softmax":
        fields.update(STUDENT_DEFAULTS)
    if mixer == "hybrid":
        fields.update(window=64, sinks=4)
    fields.update(overrides)
    return RetNetConfig(**fields)


def map_llama_weights(src: LlamaSource, config: RetNetConfig) -> dict[str, Tensor]:
    """HF-named weights -> our state dict names (float32), per the mapping table."""
    w = src.weights

    def take(name: str) -> Tensor:
        try:
            return w[name].float()
        except KeyError:
            raise SourceError(f"source lacks weight {name}") from None

    out = {
        "embed.weight": take("model.embed_tokens.weight"),
        "norm.weight": take("model.norm.weight"),
    }
    if config.tie_embeddings:
        out["head.weight"] = out["embed.weight"]
    else:
        out["head.weight"] = take("lm_head.weight")
    for i in range(config.n_layers):
        pre, b = f"model.layers.{i}.", f"blocks.{i}."
        attn = [take(f"{pre}self_attn.{n}_proj.weight") for n in ("q", "k", "v")]
        out[b + "retention.in_proj.weight"] = torch.cat(attn, dim=0)
        out[b + "retention.out_proj.weight"] = take(f"{pre}self_attn.o_proj.weight")
        out[b + "retention_norm.weight"] = take(f"{pre}input_layernorm.weight")
        out[b + "ffn_norm.weight"] = take(f"{pre}post_attention_layernorm.weight")
        gate_up = [take(f"{pre}mlp.{n}_proj.weight") for n in ("gate", "up")]
        out[b + "ffn.w_in.weight"] = torch.cat(gate_up, dim=0)
        out[b + "ffn.w_out.weight"] = take(f"{pre}mlp.down_proj.weight")
    return out


def chat_tokenizer(src: LlamaSource) -> ChatTokenizer:
    """The source's tokenizer with its chat format (ChatML when its template is ChatML)."""
    template = src.chat_template or ""
    if "<|im_start|>" not in template:
        raise SourceError(
            "only ChatML chat templates are supported so far (the template has no <|im_start|>)"
        )
    tok = src.tokenizer
    pad = next(
        (
            t
            for t in ("<|endoftext|>", src.special.get("pad"))
            if t and tok.token_to_id(t) is not None
        ),
        None,
    )
    if pad is None or pad == "<|im_end|>":
        raise SourceError("no padding token distinct from <|im_end|>")
    return ChatTokenizer(tok, ChatFormat.chatml(pad=pad, template=src.chat_template))


def load_llama(
    source: str | Path | LlamaSource, mixer: str = "retention", **overrides: Any
) -> tuple[RetNetLM, ChatTokenizer]:
    """(model in eval mode, float32, CPU; its chat tokenizer) from a GGUF file or HF dir.

    Parameters the source lacks (learned decay, feature maps, the hybrid's α) keep
    their initial values; every source weight must be used.
    """
    src = source if isinstance(source, LlamaSource) else read_source(source)
    config = llama_config(src, mixer, **overrides)
    weights = map_llama_weights(src, config)
    with torch.device("meta"):
        model = RetNetLM(config)
    fresh = {k: v for k, v in _variant_params(config).items() if k not in weights}
    missing = sorted(set(model.state_dict()) - set(weights) - set(fresh))
    unexpected = sorted(set(weights) - set(model.state_dict()))
    if missing or unexpected:
        raise SourceError(f"weights do not fit the model: missing {missing}, extra {unexpected}")
    model.load_state_dict({**weights, **fresh}, strict=True, assign=True)
    if config.tie_embeddings:
        model.head.weight = model.embed.weight
    model._weights = None
    return model.eval(), chat_tokenizer(src)


def _variant_params(config: RetNetConfig) -> dict[str, Tensor]:
    """Initial values of the parameters a Llama source does not have (built on CPU)."""
    from retnet_core.layers import MultiScaleRetention

    layer = MultiScaleRetention(config)
    names = ("decay_logit", "feature_q", "feature_k", "mix")
    out = {}
    for i in range(config.n_layers):
        for n in names:
            p = getattr(layer, n)
            if p is not None:
                out[f"blocks.{i}.retention.{n}"] = p.detach().clone()
    return out


def convert_llama(
    source: str | Path, dst: str | Path, mixer: str = "retention", **overrides: Any
) -> Path:
    """Write the checkpoint directory ``dst`` (see the module docstring); returns it."""
    src = read_source(source)
    model, tok = load_llama(src, mixer, **overrides)
    out = save_pretrained(model, dst, tok)
    sampling = {**DEFAULT_SAMPLING, **src.generation}
    (Path(out) / "generation_config.json").write_text(json.dumps(sampling, indent=2) + "\n")
    return out


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def cli(argv: list[str] | None = None) -> int:
    """``python -m retnet_core.convert_llama SRC DST [--mixer ...] [--set k=v ...]``."""
    ap = argparse.ArgumentParser(
        prog="python -m retnet_core.convert_llama", description=__doc__.split("\n")[0]
    )
    ap.add_argument("src", help="a .gguf file or a Hugging Face LlamaForCausalLM directory")
    ap.add_argument("dst", help="checkpoint directory to write")
    ap.add_argument("--mixer", choices=("retention", "softmax", "hybrid"), default="retention")
    ap.add_argument("--window", type=int, default=None, help="hybrid: softmax window (64)")
    ap.add_argument("--sinks", type=int, default=None, help="hybrid: sink tokens (4)")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any RetNetConfig field, VALUE as JSON or a bare string (e.g. decay=learned)",
    )
    args = ap.parse_args(argv)
    overrides = {k: v for k, v in (("window", args.window), ("sinks", args.sinks)) if v is not None}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = _parse_value(value)
    try:
        out = convert_llama(args.src, args.dst, args.mixer, **overrides)
    except (SourceError, OSError, ValueError) as exc:
        print(f"convert llama: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({args.mixer})")
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
