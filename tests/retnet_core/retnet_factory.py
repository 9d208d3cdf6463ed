"""Tiny float64 models for the retnet_core tests (forms compared in float64).

A module of its own, not conftest.py: several test folders have a conftest, and
`from conftest import ...` would get whichever was imported last.
"""

from __future__ import annotations

import torch

from retnet_core.config import RetNetConfig
from retnet_core.model import RetNetLM


def tiny_config(**overrides) -> RetNetConfig:
    """A model small enough for the CPU suite: 2 layers, 2 heads, d_model 16."""
    base = dict(vocab_size=50, d_model=16, n_layers=2, n_heads=2, ffn_dim=32, chunk_size=4)
    return RetNetConfig(**{**base, **overrides})


def tiny_model(seed: int = 0, dtype=torch.float64, **overrides) -> RetNetLM:
    torch.manual_seed(seed)
    model = RetNetLM(tiny_config(**overrides)).to(dtype).eval()
    with torch.no_grad():  # non-trivial norm weights, so a wrong norm cannot hide
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return model
