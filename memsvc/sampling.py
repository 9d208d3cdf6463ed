"""Next-token choice for one session: greedy, temperature, top-k and top-p (nucleus).

Each turn owns a ``torch.Generator`` seeded from the request (or at random), so two
sessions decoded in the same batch never share randomness and a seeded turn repeats.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """temperature 0 is greedy; top_k 0 and top_p 1 switch those filters off."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def generator(self) -> torch.Generator:
        """A CPU generator seeded from ``seed`` (or from fresh entropy)."""
        g = torch.Generator()
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        return g


def sample(logits: Tensor, params: SamplingParams, generator: torch.Generator, banned=()) -> int:
    """Pick one id from logits (V,). ``banned`` ids (e.g. padding) are never chosen."""
    logits = logits.detach().float().cpu().clone()
    for b in banned:
        logits[b] = float("-inf")
    if params.temperature <= 0.0:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if 0 < params.top_k < logits.numel():
        kth = torch.topk(logits, params.top_k).values[-1]
        logits[logits < kth] = float("-inf")
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < params.top_p
        keep[0] = True
        filtered = torch.zeros_like(probs)
        filtered[order[keep]] = probs[order[keep]]
        probs = filtered / filtered.sum()
    return int(torch.multinomial(probs, 1, generator=generator))
