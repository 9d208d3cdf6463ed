"""Read a Llama-family checkpoint into one neutral form: shapes, HF-named float32 weights,
tokenizer, chat template and sampling defaults (``retnet_core.convert_llama`` maps it).

Two sources:

- a Hugging Face directory of a ``LlamaForCausalLM``: ``config.json``, ``model.safetensors``
  (or shards with ``model.safetensors.index.json``), ``tokenizer.json``,
  ``tokenizer_config.json`` (chat template), ``generation_config.json`` (optional);
- a GGUF file (llama.cpp), read and dequantized with the ``gguf`` package (any type it
  dequantizes: F32, F16, BF16, Q8_0, Q4_1, ...).

GGUF stores q and k permuted. llama.cpp's HF converter reorders the rows of each head
from the half-split pairs (i, i + D/2) that HF's rotate-half pairs, to interleaved
(2i, 2i+1) pairs that ggml's "normal" rope rotates:
gguf_row[h, 2i + j] = hf_row[h, i + j·D/2] (j = 0, 1). :func:`unpermute_rows` undoes it, so
both sources give HF's layout, which ``rotary="neox"`` rotates. (k is permuted with the
kv head count.)

The GGUF tokenizer (``tokenizer.ggml.model == "gpt2"``: byte-level BPE) is rebuilt as a
``tokenizers`` tokenizer from ``tokens``, ``merges`` and ``token_type`` (type 3, control,
becomes a special added token); the pre-tokenizer comes from ``tokenizer.ggml.pre``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LlamaShape",
    "LlamaSource",
    "SourceError",
    "gguf_tokenizer",
    "read_gguf",
    "read_hf_dir",
    "read_source",
    "unpermute_rows",
]

# GGUF tensor names -> HF names ({i}: layer)
GGUF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}
# byte-level BPE pre-tokenizers by ``tokenizer.ggml.pre`` (llama.cpp's names)
_DIGITS_THEN_BYTES = ("smollm", "starcoder", "refact", "codeshell")
_BYTES_ONLY = ("gpt2", "default", "gpt-2")


class SourceError(ValueError):
    """A source this importer cannot read faithfully (with the reason)."""


@dataclass(frozen=True)
class LlamaShape:
    """What a Llama checkpoint's shapes and fixed settings are."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    rms_eps: float
    rope_theta: float
    tied: bool


@dataclass
class LlamaSource:
    """A Llama checkpoint in neutral form: HF weight names, float32."""

    shape: LlamaShape
    weights: dict[str, Tensor]
    tokenizer: Any  # tokenizers.Tokenizer
    chat_template: str | None = None
    special: dict[str, str | None] = field(default_factory=dict)  # bos/eos/pad token text
    generation: dict[str, Any] = field(default_factory=dict)  # sampling defaults


def unpermute_rows(w: Tensor, n_heads: int) -> Tensor:
    """Undo llama.cpp's q/k row permutation: interleaved pairs back to half-split.

    w (n_heads·D, in): per head, row 2i + j goes back to row i + j·D/2 (j = 0, 1).
    """
    rows = w.shape[0]
    return w.reshape(n_heads, rows // n_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(
        w.shape
    )  # fmt: skip


# ---- Hugging Face directory -------------------------------------------------------------


def read_hf_dir(path: str | Path) -> LlamaSource:
    """Read a HF ``LlamaForCausalLM`` directory (see the module docstring)."""
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    src = Path(path)
    cfg = json.loads((src / "config.json").read_text())
    archs = cfg.get("architectures") or ["LlamaForCausalLM"]
    if cfg.get("model_type", "llama") != "llama" or archs[0] != "LlamaForCausalLM":
        raise SourceError(f"{src}: not a LlamaForCausalLM ({cfg.get('model_type')}, {archs})")
    rope = dict(cfg.get("rope_parameters") or {})  # transformers 5; 4.x: top-level fields
    _refuse(cfg.get("rope_scaling"), "rope_scaling")
    _refuse(rope.get("rope_type", "default") not in ("default", None), "rope_type")
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    _refuse(cfg.get("attention_bias") or cfg.get("mlp_bias"), "biases")
    if cfg.get("hidden_act", "silu") != "silu":
        raise SourceError(f"{src}: hidden_act {cfg['hidden_act']!r}, expected silu")
    heads = cfg["num_attention_heads"]
    shape = LlamaShape(
        vocab_size=cfg["vocab_size"],
        hidden=cfg["hidden_size"],
        layers=cfg["num_hidden_layers"],
        heads=heads,
        kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        ffn=cfg["intermediate_size"],
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(theta),
        tied=bool(cfg.get("tie_word_embeddings", False)),
    )
    files = sorted(src.glob("*.safetensors"))
    if not files:
        raise SourceError(f"{src}: no .safetensors weights")
    weights: dict[str, Tensor] = {}
    for f in files:
        weights.update({k: v.float() for k, v in load_file(str(f)).items()})
    tok_cfg = _json_or_empty(src / "tokenizer_config.json")
    gen = _json_or_empty(src / "generation_config.json")
    template = tok_cfg.get("chat_template")
    if template is None and (src / "chat_template.jinja").is_file():
        template = (src / "chat_template.jinja").read_text()
    special = {k: _token_text(tok_cfg.get(f"{k}_token")) for k in ("bos", "eos", "pad")}
    return LlamaSource(
        shape,
        weights,
        Tokenizer.from_file(str(src / "tokenizer.json")),
        template,
        special,
        {k: gen[k] for k in ("temperature", "top_p", "top_k", "max_new_tokens") if k in gen},
    )


def _json_or_empty(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _token_text(token: Any) -> str | None:
    return token.get("content") if isinstance(token, dict) else token


def _refuse(value: Any, what: str) -> None:
    if value:
        raise SourceError(f"{what} {value!r} is not supported (the model would differ)")


# ---- GGUF -------------------------------------------------------------------------------


def _fields(reader: Any) -> dict[str, Any]:
    out = {}
    for name, f in reader.fields.items():
        try:
            out[name] = f.contents()
        except Exception:  # an unreadable field we do not need
            continue
    return out


def read_gguf(path: str | Path) -> LlamaSource:
    """Read and dequantize a llama GGUF file (see the module docstring)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta = _fields(reader)
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise SourceError(f"{path}: architecture {arch!r}, expected 'llama'")
    _refuse(meta.get("llama.rope.scaling.type", "none") not in ("none", None), "rope scaling")

    def get(key: str, default: Any = None) -> Any:
        value = meta.get(f"llama.{key}", default)
        if value is None:
            raise SourceError(f"{path}: missing llama.{key}")
        return value

    heads, hidden = int(get("attention.head_count")), int(get("embedding_length"))
    head_dim = int(meta.get("llama.attention.key_length", hidden // heads))
    if int(meta.get("llama.rope.dimension_count", head_dim)) != head_dim:
        raise SourceError(f"{path}: partial rotary dimensions are not supported")
    weights: dict[str, Tensor] = {}
    names = _gguf_name_table(int(get("block_count")))
    for t in reader.tensors:
        if t.name not in names:
            raise SourceError(f"{path}: unexpected tensor {t.name}")
        array = gguf.quants.dequantize(t.data, t.tensor_type)
        weights[names[t.name]] = torch.from_numpy(array.copy()).float().reshape(
            [int(d) for d in reversed(t.shape)]
        )  # fmt: skip
    kv_heads = int(meta.get("llama.attention.head_count_kv", heads))
    for i in range(int(get("block_count"))):
        q, k = (f"model.layers.{i}.self_attn.{n}_proj.weight" for n in ("q", "k"))
        weights[q] = unpermute_rows(weights[q], heads)
        weights[k] = unpermute_rows(weights[k], kv_heads)
    tokens = meta["tokenizer.ggml.tokens"]
    shape = LlamaShape(
        vocab_size=int(meta.get("llama.vocab_size", len(tokens))),
        hidden=hidden,
        layers=int(get("block_count")),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        ffn=int(get("feed_forward_length")),
        rms_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)),
        tied="lm_head.weight" not in weights,
    )

    def token(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return None if i is None else tokens[int(i)]

    special = {"bos": token("bos"), "eos": token("eos"), "pad": token("padding")}
    return LlamaSource(
        shape, weights, gguf_tokenizer(meta), meta.get("tokenizer.chat_template"), special
    )


def _gguf_name_table(layers: int) -> dict[str, str]:
    table = {}
    for g, h in GGUF_NAMES.items():
        if "{i}" in g:
            table.update({g.format(i=i): h.format(i=i) for i in range(layers)})
        else:
            table[g] = h
    return table


def gguf_tokenizer(meta: dict[str, Any]) -> Any:
    """A byte-level BPE ``tokenizers.Tokenizer`` from GGUF tokenizer fields."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise SourceError(f"tokenizer model {kind!r} is not supported (only byte-level BPE)")
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type")
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_THEN_BYTES:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level]
        )
    elif pre in _BYTES_ONLY:
        tok.pre_tokenizer = byte_level
    else:
        raise SourceError(f"pre-tokenizer {pre!r} is not supported yet (known: smollm, gpt2)")
    tok.decoder = decoders.ByteLevel()
    if types is not None:
        control = [tokens[i] for i, ty in enumerate(types) if int(ty) == 3]
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


def read_source(path: str | Path) -> LlamaSource:
    """A GGUF file (by suffix or magic) or a HF directory."""
    p = Path(path)
    if p.is_dir():
        return read_hf_dir(p)
    with p.open("rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return read_gguf(p)
    raise SourceError(f"{p}: neither a GGUF file nor a Hugging Face directory")
