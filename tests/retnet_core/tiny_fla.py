"""A tiny random-weight RetNet directory in flash-linear-attention's exact Hugging Face
layout (fla's config.json field names, fla's parameter names and shapes, a small
SentencePiece-style tokenizer.json), and an independent pure-torch forward of it.

The reference is written from fla's documented semantics (``fla.models.retnet``,
``fla.layers.multiscale_retention``, ``fla.modules``), in float64, quadratic in T:

    x_0 = E[ids]
    per layer:  h = RMSNorm(x; w_attn)
                q = h W_Q (H, D_k), k = h W_K (H_kv, D_k), v = h W_V (H_kv, D_v)
                q, k rotated NeoX-style: pairs (i, i + D_k/2), angle p·10000^(−2i/D_k)
                kv head j serves query heads j·G .. j·G+G−1 (G = H/H_kv)
                o_n = Σ_{m≤n} γ_h^{n−m} (q_n·k_m / √D_k) v_m,   γ_h = 1 − 2^(−5−h)
                o = RMS_{D_v}(o) ⊙ w_g   (one w_g for all heads) [⊙ swish(h W_G)]
                x = x + o W_Oᵀ
                h = RMSNorm(x; w_mlp);  x = x + (silu(h W_gate) ⊙ h W_up) W_down
    logits = RMSNorm(x; w_final) W_headᵀ   (W_head = E when tied)
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import Tensor

CORPUS = [
    "Hello world! RetNet keeps a small recurrent state.",
    "The quick brown fox jumps over the lazy dog, 42 times.",
    "User: Hello there, how are you today? Assistant: I am fine, thank you.",
    "System: You are a helpful assistant. Document: The capital of Freedonia is Glimmerstadt.",
    "My name is Ada and I like tea, long walks and 0123456789.",
] * 20

BASE = {  # fla defaults, written out as an fla-hub config.json would have them
    "model_type": "retnet",
    "architectures": ["RetNetForCausalLM"],
    "attn_mode": "chunk",
    "hidden_size": 64,
    "expand_k": 1.0,
    "expand_v": 2.0,
    "hidden_ratio": 2,
    "intermediate_size": None,
    "num_hidden_layers": 2,
    "num_heads": 4,
    "num_kv_heads": None,
    "feature_map": None,
    "hidden_act": "swish",
    "use_short_conv": False,
    "conv_size": 4,
    "use_output_gate": True,
    "max_position_embeddings": 2048,
    "elementwise_affine": True,
    "norm_eps": 1e-6,
    "attn": None,
    "use_cache": True,
    "pad_token_id": None,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "tie_word_embeddings": False,
    "initializer_range": 0.02,
    "fuse_norm": True,
    "fuse_swiglu": True,
    "fuse_cross_entropy": True,
    "vocab_size": 320,
}


def tiny_sp_tokenizer(vocab_size: int = 300) -> Tokenizer:
    """A Llama-like tokenizer.json: BPE over ▁-marked words, <unk> <s> </s> = 0 1 2."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"], min_frequency=2
    )
    tok.train_from_iterator(CORPUS, trainer)
    return tok


def intermediate(cfg: dict[str, Any]) -> int:
    if cfg.get("intermediate_size"):
        return int(cfg["intermediate_size"])
    width = int(cfg["hidden_size"] * cfg["hidden_ratio"] * 2 / 3)
    return 256 * ((width + 255) // 256)


def fla_weights(cfg: dict[str, Any], seed: int = 0, fused_mlp: bool = False) -> dict[str, Tensor]:
    """Random weights under fla's names and shapes (O(1) activations; norms not at 1)."""
    g = torch.Generator().manual_seed(seed)
    d, heads = cfg["hidden_size"], cfg["num_heads"]
    kv = cfg.get("num_kv_heads") or heads
    dk = int(d * cfg["expand_k"]) // heads
    dv = int(d * cfg["expand_v"]) // heads
    ffn, vocab = intermediate(cfg), cfg["vocab_size"]

    def lin(rows: int, cols: int) -> Tensor:
        return torch.randn(rows, cols, generator=g) / math.sqrt(cols)

    def norm(n: int) -> Tensor:
        return 1.0 + 0.3 * torch.randn(n, generator=g)

    w = {
        "model.embeddings.weight": torch.randn(vocab, d, generator=g),
        "model.norm.weight": norm(d),
    }
    if not cfg.get("tie_word_embeddings"):
        w["lm_head.weight"] = lin(vocab, d)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "attn_norm.weight"] = norm(d)
        w[p + "mlp_norm.weight"] = norm(d)
        w[p + "attn.q_proj.weight"] = lin(heads * dk, d)
        w[p + "attn.k_proj.weight"] = lin(kv * dk, d)
        w[p + "attn.v_proj.weight"] = lin(kv * dv, d)
        w[p + "attn.o_proj.weight"] = lin(d, heads * dv)
        gated = cfg.get("use_output_gate", True)
        if gated:
            w[p + "attn.g_proj.weight"] = lin(heads * dv, d)
        if cfg.get("elementwise_affine", True):
            w[p + ("attn.g_norm_swish_gate.weight" if gated else "attn.g_norm.weight")] = norm(dv)
        if fused_mlp:  # fla before Feb 2025: gate_proj holds [gate; up]
            w[p + "mlp.gate_proj.weight"] = lin(2 * ffn, d)
        else:
            w[p + "mlp.gate_proj.weight"] = lin(ffn, d)
            w[p + "mlp.up_proj.weight"] = lin(ffn, d)
        w[p + "mlp.down_proj.weight"] = lin(d, ffn)
    return w


def write_fla_dir(
    directory: Path,
    seed: int = 0,
    fused_mlp: bool = False,
    dtype: torch.dtype = torch.float32,
    **fields: Any,
) -> tuple[Path, dict[str, Any], dict[str, Tensor]]:
    """(directory, config dict, weights as stored): config.json, model.safetensors (in
    ``dtype``, as fla-hub ships bf16), tokenizer.json and the special-token files."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = tiny_sp_tokenizer()
    cfg = {**BASE, **fields}
    cfg["vocab_size"] = max(cfg["vocab_size"], tok.get_vocab_size())
    weights = {k: v.to(dtype).contiguous() for k, v in fla_weights(cfg, seed, fused_mlp).items()}
    (directory / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tok.save(str(directory / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (directory / "special_tokens_map.json").write_text(json.dumps(special) + "\n")
    (directory / "tokenizer_config.json").write_text(json.dumps(special) + "\n")
    return directory, cfg, weights


# ---- the independent reference --------------------------------------------------------


def _rms(x: Tensor, w: Tensor | None, eps: float) -> Tensor:
    y = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return y if w is None else y * w


def _neox(x: Tensor, dim: int) -> Tensor:
    """x (T, heads, D) rotated at positions 0..T−1: x cos + [−x₂, x₁] sin."""
    t = x.shape[0]
    inv = 1.0 / (10000.0 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None, :]  # (T, D/2)
    cos = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
    sin = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
    half = dim // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rotated * sin


def reference_logits(cfg: dict[str, Any], weights: dict[str, Tensor], ids: list[int]) -> Tensor:
    """fla's RetNetForCausalLM on one sequence, float64 -> logits (T, V)."""
    w = {k: v.double() for k, v in weights.items()}
    d, heads = cfg["hidden_size"], cfg["num_heads"]
    kv = cfg.get("num_kv_heads") or heads
    dk, dv = int(d * cfg["expand_k"]) // heads, int(d * cfg["expand_v"]) // heads
    eps, gated = cfg["norm_eps"], cfg.get("use_output_gate", True)
    ffn = intermediate(cfg)
    t = len(ids)
    x = w["model.embeddings.weight"][torch.tensor(ids)]
    n = torch.arange(t, dtype=torch.float64)
    diff = n[:, None] - n[None, :]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = _rms(x, w[p + "attn_norm.weight"], eps)
        q = _neox((h @ w[p + "attn.q_proj.weight"].T).view(t, heads, dk), dk)
        k = _neox((h @ w[p + "attn.k_proj.weight"].T).view(t, kv, dk), dk)
        v = (h @ w[p + "attn.v_proj.weight"].T).view(t, kv, dv)
        k = k.repeat_interleave(heads // kv, dim=1)
        v = v.repeat_interleave(heads // kv, dim=1)
        outs = []
        for hd in range(heads):
            gamma = 1.0 - 2.0 ** (-5.0 - hd)
            decay = torch.where(diff >= 0, gamma ** diff.clamp(min=0), torch.zeros_like(diff))
            scores = (q[:, hd] * dk**-0.5) @ k[:, hd].T * decay
            outs.append(scores @ v[:, hd])
        o = torch.stack(outs, dim=1)  # (T, H, D_v)
        gw = w.get(p + ("attn.g_norm_swish_gate.weight" if gated else "attn.g_norm.weight"))
        o = _rms(o, gw, eps)
        if gated:
            g = (h @ w[p + "attn.g_proj.weight"].T).view(t, heads, dv)
            o = o * g * torch.sigmoid(g)
        x = x + o.reshape(t, heads * dv) @ w[p + "attn.o_proj.weight"].T
        h = _rms(x, w[p + "mlp_norm.weight"], eps)
        if p + "mlp.up_proj.weight" in w:
            gate, up = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
        else:
            gate, up = (h @ w[p + "mlp.gate_proj.weight"].T).split(ffn, dim=-1)
        x = x + (gate * torch.sigmoid(gate) * up) @ w[p + "mlp.down_proj.weight"].T
    x = _rms(x, w["model.norm.weight"], eps)
    head = w["model.embeddings.weight"] if cfg.get("tie_word_embeddings") else w["lm_head.weight"]
    return x @ head.T
