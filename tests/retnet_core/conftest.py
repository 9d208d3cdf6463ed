"""Shared fixtures: tiny float64 models in eval mode (forms compared in float64)."""

from __future__ import annotations

import pytest
import torch
from retnet_factory import tiny_model

from retnet_core.model import RetNetLM


@pytest.fixture(params=["none", "decay", "torchscale"])
def model(request) -> RetNetLM:
    return tiny_model(retention_norm=request.param)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 50, (3, 21), generator=torch.Generator().manual_seed(7))
