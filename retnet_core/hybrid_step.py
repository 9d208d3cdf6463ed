"""The hybrid mixer's decode step in a few fused ops per layer (``mixer="hybrid"``).

The generic step (``RetNetBlock`` → ``MultiScaleRetention._hybrid``) is written for any
call length: it gathers rings by index, builds per-block masks and concatenates prefixes,
about 20 small ops per layer that cost more than the layer's matmuls at batch 1. For one
token per row the same equations (``retnet_core.attention``) reduce to, per layer, with
p_b the row's position, w the window, s the sinks, G = H / H_kv:

    q̃, k̃ = rotate(q, p), rotate(k, p)·k_scale
    window:   a = softmax over [sinks j < p] ∪ [ring entries j ≥ 1 at p − w + j ≥ s] ∪ [p]
    delayed:  k' = γ^w φ(k̃_{p−w}) [p − w ≥ s],  v' = v_{p−w}   (ring entry 0)
    S' = γ S + k'ᵀ v',   z' = γ z + k',   r = φ(q̃) S' / max(|φ(q̃)·z'|, c_p)
    o = a + α r;   ring' = [ring[1:], k̃ [p ≥ s]];   sink'[p] = k̃ when p < s

with query head h reading kv head h // G (grouped without copying: queries are viewed
as (B, H_kv, G, D)). The mask of the window is shared by all layers, so it is built
once per step. Exactly the generic step's function (tests compare them in float64).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from retnet_core.layers import rotation_tables
from retnet_core.state import RecurrentState

__all__ = ["hybrid_step", "hybrid_step_supported", "window_mask"]


def hybrid_step_supported(config: Any) -> bool:
    """Whether :func:`hybrid_step` covers this config (else the generic step runs)."""
    c = config
    return (
        c.mixer == "hybrid"
        and not c.memory_layers
        and c.retention_norm in ("torchscale", "decay", "none")
        and c.rotary == "neox"
    )


def window_mask(position: Tensor, window: int, sinks: int) -> Tensor:
    """Keys a step at ``position`` (B,) may read: (B, s + w + 1) bool over
    [sinks | ring | the current token] (see the module docstring)."""
    dev = position.device
    p = position[:, None]
    sink_ok = torch.arange(sinks, device=dev)[None, :] < p
    j = torch.arange(window, device=dev)[None, :]
    ring_ok = (j >= 1) & (p - window + j >= sinks)
    return torch.cat([sink_ok, ring_ok, torch.ones_like(p, dtype=torch.bool)], dim=1)


def _rotate_neox(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """NeoX rotation of x (B, H, D) by cos, sin (B, 1, D/2): [x₁c − x₂s; x₁s + x₂c]."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def _window_read(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """Softmax read, grouped: q (B, H, D), keys (B, H_kv, S, D), values (B, H_kv, S, D_v),
    mask (B, S) -> (B, H, D_v). Scores are q·k (k carries its scale)."""
    b, h, d = q.shape
    hk = keys.shape[1]
    qg = q.view(b, hk, h // hk, d)
    scores = torch.matmul(qg, keys.transpose(-1, -2))  # (B, H_kv, G, S)
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), values).view(b, h, -1)


@dataclass
class _StepTables:
    """What every layer of one step shares: rotation, window mask, masks of the delayed
    stream and the sinks, and per-layer decay tables (L, H) and c_p (B, L, H)."""

    cos: Tensor  # (B, 1, D/2)
    sin: Tensor
    mask: Tensor  # (B, s + w + 1) bool
    ok: Tensor  # (B, 1, 1): position p − w enters retention
    keep: Tensor  # (B, 1, 1): the current key enters the ring (p ≥ s)
    sink_at: Tensor | None  # (B, 1, s, 1) bool: the sink the current token fills; None: none
    gamma: Tensor  # (L, H)
    gamma_w: Tensor  # (L, H): γ^w
    c_p: Tensor  # (B, L, H): √(Σ_{j≤p} γ^j)


def _tables(model: Any, position: Tensor, sdt: torch.dtype) -> _StepTables:
    c = model.config
    w, s = c.window, c.sinks
    table, angles = model._decay_and_angles()
    rot = rotation_tables(position[:, None], angles, sdt)[:, :, 0]  # (B, 1, D/2)
    logits = [b.retention.decay_logit for b in model.blocks]
    if logits[0] is None:
        ld = table[None].expand(len(logits), -1)
    else:
        ld = F.logsigmoid(torch.stack(logits).to(sdt))  # (L, H)
    count = (position.to(sdt) + 1)[:, None, None]
    c_p = torch.sqrt(torch.expm1(count * ld) / torch.expm1(ld))
    sink_at = None
    if bool((position < s).any()):
        sink_at = torch.arange(s, device=position.device)[None] == position[:, None]
        sink_at = sink_at[:, None, :, None]
    return _StepTables(
        cos=rot.real.to(sdt),
        sin=rot.imag.to(sdt),
        mask=window_mask(position, w, s),
        ok=(position - w >= s).to(sdt)[:, None, None],
        keep=(position >= s).to(sdt)[:, None, None],
        sink_at=sink_at,
        gamma=torch.exp(ld),
        gamma_w=torch.exp(w * ld),
        c_p=c_p,
    )


def _features(x: Tensor, weight: Tensor | None) -> Tensor:
    """Hedgehog φ of x (B, H, D) with weight (H, D, D) -> (B, H, 2D); identity without."""
    if weight is None:
        return x
    y = torch.matmul(x[:, :, None], weight.to(x.dtype))[:, :, 0]
    return torch.cat([torch.softmax(y, dim=-1), torch.softmax(-y, dim=-1)], dim=-1)


def _layer(
    i: int, block: Any, x: Tensor, st: dict[str, Tensor], tb: _StepTables, sdt: torch.dtype
) -> tuple[Tensor, dict[str, Tensor]]:
    """Block i for one token per row: x (B, d) -> x', the layer's new state dict."""
    attn = block.retention
    b = x.shape[0]
    h, hk, dk, dv = attn.n_heads, attn.kv_heads, attn.key_dim, attn.head_value_dim
    g = attn.groups
    p = attn.in_proj(block.retention_norm(x)).to(sdt)
    qk = _rotate_neox(p[:, : (h + hk) * dk].view(b, h + hk, dk), tb.cos, tb.sin)
    q, k = qk[:, :h], qk[:, h:] * attn.k_scale
    v = p[:, (h + hk) * dk : (h + hk) * dk + hk * dv].view(b, hk, dv)
    keys = torch.cat([st["sink_k"], st["win_k"], k[:, :, None]], dim=2)
    values = torch.cat([st["sink_v"], st["win_v"], v[:, :, None]], dim=2)
    a = _window_read(q, keys, values, tb.mask)

    gamma = tb.gamma[i]  # (H,)
    qf = _features(q, attn.feature_q)
    kf = _features(st["win_k"][:, :, 0], attn.feature_k)  # position p − w
    kf = kf.repeat_interleave(g, dim=1) * (tb.ok * tb.gamma_w[i][:, None])
    vd = st["win_v"][:, :, 0].repeat_interleave(g, dim=1)  # (B, H, D_v)
    new_s = torch.addcmul(kf[..., None] * vd[:, :, None, :], st["S"], gamma[:, None, None])
    r = torch.matmul(qf[:, :, None], new_s)[:, :, 0]  # (B, H, D_v)
    new = {"S": new_s}
    if attn.norm_mode == "torchscale":
        new["z"] = torch.addcmul(kf, st["z"], gamma[:, None])
        r = r / torch.maximum((qf * new["z"]).sum(-1).abs(), tb.c_p[:, i])[..., None]
    elif attn.norm_mode == "decay":
        r = r / tb.c_p[:, i, :, None]
    o = a + attn.mix.to(sdt)[:, None] * r
    o = attn._normalise_heads(o).reshape(b, -1).to(x.dtype)
    if len(attn.split) == 4:  # the output gate
        o = F.silu(p[:, -attn.split[3] :].to(x.dtype)) * o
    x = x + attn.out_proj(o)
    x = x + block.ffn(block.ffn_norm(x))

    new["win_k"] = torch.cat([st["win_k"][:, :, 1:], (k * tb.keep)[:, :, None]], dim=2)
    new["win_v"] = torch.cat([st["win_v"][:, :, 1:], (v * tb.keep)[:, :, None]], dim=2)
    if tb.sink_at is None:
        new["sink_k"], new["sink_v"] = st["sink_k"], st["sink_v"]
    else:
        new["sink_k"] = torch.where(tb.sink_at, k[:, :, None], st["sink_k"])
        new["sink_v"] = torch.where(tb.sink_at, v[:, :, None], st["sink_v"])
    return x, new


def hybrid_step(
    model: Any, tokens: Tensor, state: RecurrentState, fingerprint: Any
) -> tuple[Tensor, RecurrentState]:
    """``model.step`` for :func:`hybrid_step_supported` configs. tokens (B,) -> logits
    (B, V), the state one token further (the input state is never modified)."""
    position = state.position
    sdt = model._decay_and_angles()[0].dtype
    tb = _tables(model, position, sdt)
    x = model._embed(tokens)
    layers = []
    for i, block in enumerate(model.blocks):
        x, new = _layer(i, block, x, state.layer(i), tb, sdt)
        layers.append(new)
    logits = model.head(model.norm(x))
    return logits, model._pack(layers, position + 1, fingerprint)
