"""Softmax mixers beside retention: the teacher's causal attention and the hybrid window.

Shapes: q̃ (B, H, T, D_k) rotated queries; k̃ (B, H_kv, T, D_k) rotated keys with the key
scale already applied; v (B, H_kv, T, D_v); positions (B, T) the absolute position p of
each token (the call's first is ``start`` (B,)). H = G·H_kv: query head h reads kv head
h // G (Llama's grouped heads). Positions n ≥ lengths[b] are padding: their outputs are 0
and they never reach a state.

Softmax attention over an allowed set A(n) of keys (scores q̃·k̃, no further scaling):

    a_n = Σ_{m∈A(n)} exp(q̃_n·k̃_m) v_m / Σ_{m∈A(n)} exp(q̃_n·k̃_m)

- ``mixer="softmax"`` (the teacher): A(n) = {m ≤ n}. Its state is the KV cache of every
  earlier token, ``kv_k`` (B, H_kv, P, D_k) and ``kv_v`` (B, H_kv, P, D_v), entry m
  holding position m (zeros past a row's own position): O(T) bytes and O(T) work per
  token. Prefill and step are exact continuations, as for retention.
- ``mixer="hybrid"``: A(n) = {n−w < m ≤ n} ∪ {m < s}: the last w tokens (the current one
  included) and the first s ("sinks"). Beside it, retention over what left the window:

    o_n = a_n + α_h · r_n / δ_n,    r_n = Σ_{s ≤ m ≤ n−w} γ_h^{n−m} (φ(q̃_n)·φ(k̃_m)) v_m

  δ_n is the model's retention denominator, φ its feature map, α_h (H,) a learned weight
  per head that starts at 0 (zero-shot the hybrid is the windowed teacher; α = 0 is
  "retention path off"). r is retention over the *delayed* stream

    k'_j = γ_h^w φ(k̃_{j−w}) [j−w ≥ s],   v'_j = v_{j−w}:
    Σ_{j≤n} γ^{n−j} φ(q̃_n)·k'_j v'_j = Σ_{s≤m≤n−w} γ^{n−m} φ(q̃_n)·φ(k̃_m) v_m  (j = m+w)

  so the parallel, chunkwise and recurrent forms, chunk boundaries and padding carry over
  unchanged (``retnet_core.retention``). The state is retention's S (B, H, D_φ, D_v) plus
  the ring of the last w keys/values (they feed the window now and the delayed stream w
  tokens later) and the s sink keys/values: ``win_k``/``win_v`` (B, H_kv, w, D), entry j
  holding position P−w+j (zeros for positions < s, which the sinks hold), and
  ``sink_k``/``sink_v`` (B, H_kv, s, D), entry j holding position j (zeros until seen).
  Fixed size, O(w + s) work per token, exact at every chunk boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "blockwise_attention",
    "delayed_stream",
    "expand_heads",
    "masked_attention",
    "roll_window",
    "softmax_mixer",
    "window_attention",
]


def expand_heads(x: Tensor, groups: int) -> Tensor:
    """(B, H_kv, ...) -> (B, H_kv·G, ...): kv head j serves query heads jG .. jG+G−1."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


QUERY_BLOCK = 256  # queries per block: memory O(block · keys), never O(T²)


def masked_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None) -> Tensor:
    """Σ_m softmax_m(q·k_m) v_m over allowed keys (scale 1: k is pre-scaled).

    q (B, H, T, D_k); k (B, H_kv, S, D_k); v (B, H_kv, S, D_v); allowed (B, T, S) bool,
    or None for plain causal attention with S = T (the fused kernel) -> (B, H, T, D_v).
    Every row must allow at least one key (each query always sees itself here).
    """
    groups = q.shape[1] // k.shape[1]
    k, v = expand_heads(k, groups), expand_heads(v, groups)  # the fused CPU kernel needs it
    mask = None if allowed is None else allowed[:, None]
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=allowed is None, scale=1.0
    )


def blockwise_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: Tensor,
    prefix: tuple[Tensor, Tensor, Tensor, Tensor] | None,
    window: int | None = None,
    sinks: int = 0,
    block: int | None = None,
) -> Tensor:
    """Attention of the call's queries over ``prefix`` keys and the call's own keys.

    A key at position m is allowed for the query at position p when it is valid, m ≤ p,
    and (no window, or m > p − w, or m < s). prefix = (k (B, H_kv, S, D_k), v, positions
    (B, S), valid (B, S)) or None. Queries go in blocks; each block takes only the call
    keys it can see (all earlier ones without a window; else the last w and the sinks),
    so a window costs O(T·(w + block)). Masked keys weigh exactly 0, so the blocking
    never changes the result beyond rounding.
    """
    t, block = q.shape[2], block or QUERY_BLOCK
    min_start = int(positions[:, 0].min()) if t else 0
    outs = []
    for a in range(0, t, block):
        e = min(a + block, t)
        lo = 0 if window is None else max(0, a - window + 1)
        head = min(max(0, sinks - min_start), lo) if window is not None else 0
        idx = torch.cat([torch.arange(head), torch.arange(lo, e)]).to(k.device)
        keys, values, key_pos = k[:, :, idx], v[:, :, idx], positions[:, idx]
        key_ok = torch.ones_like(key_pos, dtype=torch.bool)
        if prefix is not None:
            keys, values = torch.cat([prefix[0], keys], 2), torch.cat([prefix[1], values], 2)
            key_pos, key_ok = torch.cat([prefix[2], key_pos], 1), torch.cat([prefix[3], key_ok], 1)
        qp, kp = positions[:, a:e, None], key_pos[:, None, :]
        allowed = key_ok[:, None, :] & (kp <= qp)
        if window is not None:
            allowed = allowed & ((kp > qp - window) | (kp < sinks))
        outs.append(masked_attention(q[:, :, a:e], keys, values, allowed))
    return torch.cat(outs, dim=2) if outs else q.new_zeros(*q.shape[:3], v.shape[-1])


def _gather_time(x: Tensor, index: Tensor) -> Tensor:
    """x (B, H, S, D), index (B, N) -> (B, H, N, D): x[b, :, index[b, n]]."""
    idx = index[:, None, :, None].expand(-1, x.shape[1], -1, x.shape[-1])
    return torch.gather(x, 2, idx)


def _valid(positions: Tensor, lengths: Tensor | None) -> Tensor:
    """(B, T) bool: True on the call's real tokens (n < lengths[b])."""
    n = torch.arange(positions.shape[1], device=positions.device)
    if lengths is None:
        return torch.ones_like(positions, dtype=torch.bool)
    return n[None, :] < lengths[:, None]


def _lengths(positions: Tensor, lengths: Tensor | None) -> Tensor:
    return torch.full_like(positions[:, 0], positions.shape[1]) if lengths is None else lengths


# ---- the teacher: causal softmax attention with a KV cache -------------------------------


def softmax_mixer(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: Tensor,
    lengths: Tensor | None,
    cache: dict[str, Tensor] | None,
    keep_state: bool,
) -> tuple[Tensor, dict[str, Tensor] | None]:
    """Causal softmax attention continuing a KV cache -> (out (B, H, T, D_v), new cache).

    Cache entry m holds position m; a row at position P uses entries m < P. The new
    cache holds positions 0 .. max(P + L) − 1 (zeros past each row's own end).
    """
    valid = _valid(positions, lengths)
    start = positions[:, 0]
    b, hk, t, dk = k.shape
    if cache is None:
        cache = {"kv_k": k.new_zeros(b, hk, 0, dk), "kv_v": v.new_zeros(b, hk, 0, v.shape[-1])}
    ck, cv = cache["kv_k"].to(k.dtype), cache["kv_v"].to(v.dtype)
    c = ck.shape[2]
    if c == 0 and bool((start == 0).all()):  # from the start: plain causal, fused kernel
        out = masked_attention(q, k, v, None)
    else:
        cache_pos = torch.arange(c, device=k.device)[None, :].expand(b, -1)
        prefix = (ck, cv, cache_pos, cache_pos < start[:, None])
        out = blockwise_attention(q, k, v, positions, prefix)
    out = out * valid[:, None, :, None]
    if not keep_state:
        return out, None
    end = start + _lengths(positions, lengths)  # (B,) each row's new position
    m = torch.arange(int(end.max()) if len(end) else 0, device=k.device)[None, :]  # (1, P')
    src = torch.where(m < start[:, None], m, c + m - start[:, None])  # cache or call index
    keep = (m < end[:, None])[:, None, :, None]
    src = src.clamp(0, c + t - 1)
    new = {
        "kv_k": _gather_time(torch.cat([ck, k], 2), src) * keep,
        "kv_v": _gather_time(torch.cat([cv, v], 2), src) * keep,
    }
    return out, new


# ---- the hybrid: a softmax window (+ sinks) and the delayed retention stream -------------


def empty_window(k: Tensor, v: Tensor, window: int, sinks: int) -> dict[str, Tensor]:
    """Zero ring and sinks shaped for k (B, H_kv, ·, D_k) and v (B, H_kv, ·, D_v)."""
    b, hk, dk, dv = k.shape[0], k.shape[1], k.shape[-1], v.shape[-1]
    return {
        "win_k": k.new_zeros(b, hk, window, dk),
        "win_v": v.new_zeros(b, hk, window, dv),
        "sink_k": k.new_zeros(b, hk, sinks, dk),
        "sink_v": v.new_zeros(b, hk, sinks, dv),
    }


def window_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: Tensor,
    lengths: Tensor | None,
    buf: dict[str, Tensor],
    window: int,
    sinks: int,
) -> Tensor:
    """a_n over A(n) = {n−w < m ≤ n} ∪ {m < s}, from the sinks, the ring and the call.

    -> (B, H, T, D_v), zeros at padding. Keys: sinks (position j, valid when j < start),
    ring (position start−w+j, valid when ≥ s: lower ones are sinks or do not exist),
    the call (position p, valid: causality hides padding from real queries).
    """
    start = positions[:, 0]
    dev = k.device
    sink_pos = torch.arange(sinks, device=dev)[None, :].expand(len(start), -1)
    ring_pos = start[:, None] - window + torch.arange(window, device=dev)[None, :]
    prefix = (
        torch.cat([buf["sink_k"].to(k.dtype), buf["win_k"].to(k.dtype)], dim=2),
        torch.cat([buf["sink_v"].to(v.dtype), buf["win_v"].to(v.dtype)], dim=2),
        torch.cat([sink_pos, ring_pos], dim=1),
        torch.cat([sink_pos < start[:, None], ring_pos >= sinks], dim=1),
    )
    out = blockwise_attention(q, k, v, positions, prefix, window, sinks)
    return out * _valid(positions, lengths)[:, None, :, None]


def delayed_stream(
    k: Tensor, v: Tensor, positions: Tensor, buf: dict[str, Tensor], window: int, sinks: int
) -> tuple[Tensor, Tensor, Tensor]:
    """(k̃, v) of position p_n − w, and whether it enters retention (p_n − w ≥ s).

    k (B, H_kv, T, D_k), v (B, H_kv, T, D_v) -> the same shapes and ok (B, 1, T, 1); the
    layer applies φ, then the mask ok and γ^w (φ(0) ≠ 0, so the mask comes after φ).
    Entries older than the call come from the ring.
    """
    t = k.shape[2]
    ok = ((positions - window) >= sinks)[:, None, :, None]
    kd = torch.cat([buf["win_k"].to(k.dtype), k], dim=2)[:, :, :t]
    vd = torch.cat([buf["win_v"].to(v.dtype), v], dim=2)[:, :, :t]
    return kd, vd, ok


def roll_window(
    k: Tensor,
    v: Tensor,
    positions: Tensor,
    lengths: Tensor | None,
    buf: dict[str, Tensor],
    window: int,
    sinks: int,
) -> dict[str, Tensor]:
    """The ring and sinks after the call's real tokens (see the module docstring)."""
    start = positions[:, 0]
    length = _lengths(positions, lengths)
    t = k.shape[2]
    j = torch.arange(window, device=k.device)[None, :]
    ring_idx = length[:, None] + j  # ext index of position start + L − w + j
    ring_keep = ((start + length)[:, None] - window + j >= sinks)[:, None, :, None]
    out = {
        "win_k": _gather_time(torch.cat([buf["win_k"].to(k.dtype), k], 2), ring_idx) * ring_keep,
        "win_v": _gather_time(torch.cat([buf["win_v"].to(v.dtype), v], 2), ring_idx) * ring_keep,
    }
    s = torch.arange(sinks, device=k.device)[None, :]
    from_call = (s >= start[:, None]) & (s < (start + length)[:, None])
    sink_idx = torch.where(from_call, sinks + s - start[:, None], s).clamp(0, sinks + t - 1)
    sink_keep = ((s < start[:, None]) | from_call)[:, None, :, None]
    for name, x in (("sink_k", k), ("sink_v", v)):
        ext = torch.cat([buf[name].to(x.dtype), x], 2)
        out[name] = _gather_time(ext, sink_idx) * sink_keep
    return out
