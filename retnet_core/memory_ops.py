"""The Retention Layer's pure tensor functions: the read, the copy mix, token spans.

Kept apart from :mod:`retnet_core.memory` (the module and its parameters) so each can be
read, tested and reused alone; every function states its shapes and its equation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def token_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[(s, e), ...] -> [(t, t + 1) for every t of every span]: unit="token" slots."""
    return [(t, t + 1) for s, e in spans for t in range(s, e)]


def token_span_mask(spans: Tensor) -> tuple[Tensor, Tensor]:
    """Split span masks (B, S, T) into one-position masks (B, S', T) for unit="token".

    Returns the masks and owner (B, S') long: the span each token slot came from
    (−1 for padding rows), so a caller can still find "the slots of span i".
    """
    b, _, t = spans.shape
    counts = spans.sum(dim=(1, 2))
    width = max(int(counts.max()) if b else 0, 1)
    out = torch.zeros(b, width, t, dtype=torch.bool, device=spans.device)
    owner = torch.full((b, width), -1, dtype=torch.long, device=spans.device)
    for row in range(b):
        span_idx, pos = spans[row].nonzero(as_tuple=True)  # sorted by span, then position
        n = int(pos.numel())
        out[row, torch.arange(n, device=spans.device), pos] = True
        owner[row, :n] = span_idx
    return out, owner


def copy_mix(logits: Tensor, probs: Tensor, ids: Tensor, lam: Tensor) -> Tensor:
    """Log of p = (1 − λ Σ_n a_n) softmax(z) + λ Σ_n a_n onehot(id_n) (in float32).

    logits z (B, T, V); probs a (B, T, N) read attention over slots (the "no slot" share
    is 1 − Σ a); ids (B, T, N) the token each slot copies; lam λ (B, T, 1). The result
    is a log-distribution, so softmax, sampling and cross-entropy treat it as logits.
    """
    p_lm = torch.softmax(logits.float(), dim=-1)
    a = probs.float()
    copy = torch.zeros_like(p_lm).scatter_add_(-1, ids.clamp(0, p_lm.shape[-1] - 1), a)
    lam = lam.float()
    p = p_lm * (1.0 - lam * a.sum(-1, keepdim=True)) + lam * copy
    return torch.log(p.clamp_min(1e-30))


def memory_attention(
    q: Tensor, keys: Tensor, values: Tensor, null_key: Tensor, bias: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Attention over slots plus the "no slot" entry (whose value is exactly zero).

    q (B, T, d_k); keys (B, N, d_k); values (B, N, d_v); null_key (d_k,);
    bias (B, N) or (B, T, N) added to the logits (log gate, −inf for padding).
    Returns out (B, T, d_v) = Σ_i p_i v_i and probs (B, T, N) over the real slots
    (the no-slot entry takes 1 − Σ_i p_i).
        p = softmax([q·k_∅, q·k_1, …, q·k_N] / √d_k + [0, bias])
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = torch.einsum("btd,bnd->btn", q, keys) * scale
    if bias is not None:
        logits = logits + (bias.unsqueeze(1) if bias.dim() == 2 else bias)
    null = (q @ null_key * scale).unsqueeze(-1)  # (B, T, 1)
    probs = torch.softmax(torch.cat([null, logits], dim=-1), dim=-1)[..., 1:]
    return torch.einsum("btn,bnd->btd", probs, values), probs
