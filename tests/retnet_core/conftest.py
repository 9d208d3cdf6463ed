"""Shared fixtures: tiny float64 models in eval mode (forms compared in float64); value
pools and a tiny tokenizer trained on the memory dialogues (memory-training tests)."""

from __future__ import annotations

import pytest
import torch
from retnet_factory import tiny_model

from retnet_core.model import RetNetLM
from retnet_core.tokenizer import ChatTokenizer
from retnet_core.training.dialogues import DialogueGenerator, ValuePools


@pytest.fixture(params=["none", "decay", "torchscale"])
def model(request) -> RetNetLM:
    return tiny_model(retention_norm=request.param)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (3, 21), generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def pools() -> ValuePools:
    return ValuePools.build(per_kind=300)


@pytest.fixture(scope="module")
def tok(pools: ValuePools) -> ChatTokenizer:
    """A 400-token tokenizer trained on 300 memory dialogues of ``pools`` (modules
    that need another ``pools`` or ``tok`` define their own)."""
    gen = DialogueGenerator(pools, "train", seed=0)
    texts = [m.content for ex in gen.sample(300) for s in ex.sessions for m in s]
    return ChatTokenizer.train(texts, vocab_size=400)
