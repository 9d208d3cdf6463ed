"""A tiny random Llama (Hugging Face directory, ChatML tokenizer) for distillation tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "hey how are you doing today? i am fine thanks, what about you",
    "my name is sam and i live in a small town near the sea",
    "what do you like to do for fun? i like reading and hiking",
    "user assistant system passage the and of to in is it",
] * 20


def _weights(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Random HF-named Llama weights (norms near 1, the rest N(0, 0.2²)); tied head."""
    g = torch.Generator().manual_seed(seed)
    d, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    hd = d // cfg["num_attention_heads"]
    kv = cfg["num_key_value_heads"] * hd

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    def norm() -> torch.Tensor:
        return 0.8 + 0.4 * torch.rand(d, generator=g)

    out = {"model.embed_tokens.weight": rand(v, d), "model.norm.weight": norm()}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {
            p + "input_layernorm.weight": norm(),
            p + "post_attention_layernorm.weight": norm(),
            p + "self_attn.q_proj.weight": rand(d, d),
            p + "self_attn.k_proj.weight": rand(kv, d),
            p + "self_attn.v_proj.weight": rand(kv, d),
            p + "self_attn.o_proj.weight": rand(d, d),
            p + "mlp.gate_proj.weight": rand(f, d),
            p + "mlp.up_proj.weight": rand(f, d),
            p + "mlp.down_proj.weight": rand(d, f),
        }
    return out


def tiny_llama_dir(root: Path, layers: int = 2, seed: int = 0) -> Path:
    """Write a random GQA Llama (d 64, 4 heads, 2 kv heads, tied head) in the Hugging Face
    layout, with a ChatML byte-level BPE tokenizer, to ``root/llama``; returns it.

    Written directly (config.json, model.safetensors, tokenizer files): the same files
    ``LlamaForCausalLM.save_pretrained`` writes, without importing transformers."""
    from safetensors.torch import save_file

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": tok.get_vocab_size(), "hidden_size": 64, "intermediate_size": 96,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
        "rope_theta": 10000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
        "hidden_act": "silu", "max_position_embeddings": 512,
    }  # fmt: skip
    out = root / "llama"
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(_weights(cfg, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"})
    )
    return out
