"""A tiny random-weight RetNet checkpoint (with a trained byte-level BPE) for service tests."""

from __future__ import annotations

from pathlib import Path

import torch

from retnet_core.checkpoint import save_pretrained
from retnet_core.config import RetNetConfig
from retnet_core.model import RetNetLM
from retnet_core.tokenizer import ChatTokenizer

CORPUS = [
    "Hello there, how are you today?",
    "The capital of Freedonia is Glimmerstadt, a city of bridges.",
    "I like tea and long walks. My name is Ada.",
    "RetNet keeps a small recurrent state instead of a growing cache.",
] * 20


def make_tiny_checkpoint(
    directory: Path, seed: int = 0, memory_layers=(1,), memory_d: int = 16
) -> Path:
    """Write config.json, model.safetensors and tokenizer.json of a 2-layer model
    (``memory_d``: the slots' d_key and d_value)."""
    torch.manual_seed(seed)
    tok = ChatTokenizer.train(CORPUS, vocab_size=400, min_frequency=2)
    cfg = RetNetConfig(
        vocab_size=tok.vocab_size,
        d_model=32,
        n_layers=2,
        n_heads=2,
        ffn_dim=64,
        chunk_size=16,
        memory_layers=list(memory_layers),
        memory_d_key=memory_d,
        memory_d_value=memory_d,
        memory_write_threshold=0.0,
    )
    model = RetNetLM(cfg)
    save_pretrained(model, directory, tokenizer=tok)
    return directory
