"""Retention in its three forms (parallel, recurrent, chunkwise), as pure functions.

Shapes: q, k (B, H, T, D_k); v (B, H, T, D_v); ``log_decay`` (H,) holds log γ_h (< 0);
state S (B, H, D_k, D_v); ``lengths`` (B,) int, optional (right padding).

All three forms compute the paper's *unnormalised* retention (Sun et al. 2023, eq. 1-8)
of one call of T tokens, indexed n = 0..T-1 from the start of the call, that continues
from an initial state S₀ (zeros when ``state`` is None):

    o_n = Σ_{m≤n} γ^{n−m} (q_n·k_m) v_m  +  γ^{n+1} q_n S₀
    S_n = γ S_{n−1} + k_nᵀ v_n,   S_{−1} = S₀,   o_n = q_n S_n

so splitting a sequence over several calls, carrying the returned state, gives the same
outputs as one call. No normalisation hides in the forms: the only one lives in
:func:`retention_denominator`, applied by the layer after the form.

Padding: with ``lengths``, position n of sequence b is padding when n ≥ lengths[b]. A
padding position adds nothing to the state, its output is 0, and the returned state is
S_{L_b−1}: the state at the sequence's own end (S₀ when L_b = 0).

Decay powers are always γ^e with e ≥ 0, computed as exp(e · log γ) from integer position
differences: they never overflow, whatever T (no γ^{−n} anywhere).

Device seam: :func:`chunkwise` and :func:`step` dispatch to ``retnet_core.fla_ops`` for
CUDA tensors when that module exists and accepts the call; everything else runs the
pure-torch reference here. The CPU path never imports that module (nor triton).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from types import ModuleType

import torch
from torch import Tensor

__all__ = [
    "chunk_spans",
    "chunkwise",
    "decay_mask",
    "decay_powers",
    "retention_chunkwise",
    "retention_denominator",
    "retention_parallel",
    "retention_recurrent",
    "retention_step",
    "step",
    "valid_mask",
]

NORM_MODES = ("none", "decay", "torchscale")


# ---- decay tables -----------------------------------------------------------------------


def decay_mask(log_decay: Tensor, length: int) -> Tensor:
    """D (H, T, T): D[h, n, m] = γ_h^{n−m} for m ≤ n, else 0."""
    idx = torch.arange(length, device=log_decay.device, dtype=log_decay.dtype)
    diff = idx[:, None] - idx[None, :]
    # clamp first: exp of a positive exponent could overflow before the mask zeroes it
    powers = torch.exp(diff.clamp(min=0) * log_decay[:, None, None])
    return powers * (diff >= 0)


def decay_powers(log_decay: Tensor, count: int) -> Tensor:
    """P (H, count + 1): P[h, e] = γ_h^e for e = 0..count."""
    e = torch.arange(count + 1, device=log_decay.device, dtype=log_decay.dtype)
    return torch.exp(e * log_decay[:, None])


def valid_mask(lengths: Tensor | None, batch: int, length: int, device=None) -> Tensor | None:
    """(B, T) bool, True where n < lengths[b]; None when there is no padding at all."""
    if lengths is None:
        return None
    lengths = lengths.to(device=device, dtype=torch.long).reshape(batch)
    if bool((lengths >= length).all()):
        return None
    return torch.arange(length, device=device) < lengths[:, None]


def _zero_state(q: Tensor, v: Tensor) -> Tensor:
    b, h, _, dk = q.shape
    return q.new_zeros(b, h, dk, v.shape[-1])


def _final_state(k: Tensor, v: Tensor, log_decay: Tensor, s0: Tensor, lengths: Tensor) -> Tensor:
    """S at each sequence's own end, straight from its definition.

    S_{L−1} = γ^L S₀ + Σ_{m<L} γ^{L−1−m} k_mᵀ v_m   (per sequence b, L = lengths[b]).
    """
    t = k.shape[2]
    lengths = lengths.to(device=k.device, dtype=torch.long)
    expo = lengths[:, None] - 1 - torch.arange(t, device=k.device)  # (B, T) = L−1−m
    w = torch.exp(expo.clamp(min=0).to(k.dtype)[:, None, :] * log_decay[None, :, None])
    w = w * (expo >= 0)[:, None, :]  # (B, H, T): zero for m ≥ L
    carry = torch.exp(lengths.to(k.dtype)[:, None] * log_decay[None, :])  # γ^L (B, H)
    return carry[..., None, None] * s0 + (k * w[..., None]).transpose(-1, -2) @ v


# ---- the three forms --------------------------------------------------------------------


def retention_parallel(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    state: Tensor | None = None,
    lengths: Tensor | None = None,
) -> Tensor:
    """Parallel form: O = (Q Kᵀ ⊙ D) V + (Q ⊙ γ^{n+1}) S₀, D[n, m] = γ^{n−m} (m ≤ n).

    q, k (B, H, T, D_k); v (B, H, T, D_v); log_decay (H,); state S₀ (B, H, D_k, D_v) or
    None -> out (B, H, T, D_v). O(T²) memory: the training form.
    """
    log_decay = log_decay.to(q.dtype)
    t = q.shape[2]
    out = ((q @ k.transpose(-1, -2)) * decay_mask(log_decay, t)) @ v
    if state is not None:
        inner = decay_powers(log_decay, t)[:, 1:, None]  # γ^{n+1} (H, T, 1)
        out = out + (q * inner) @ state.to(q.dtype)
    mask = valid_mask(lengths, q.shape[0], t, q.device)
    if mask is not None:
        out = out * mask[:, None, :, None]
    return out


def retention_step(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One token of the recurrent form: S = γ S + kᵀ v,  o = q S.

    q, k (B, H, D_k); v (B, H, D_v); state (B, H, D_k, D_v) or None
    -> out (B, H, D_v), new state (a fresh tensor: the input state is never modified).
    """
    outer = k.unsqueeze(-1) * v.unsqueeze(-2)  # kᵀ v (B, H, D_k, D_v)
    if state is None:
        new = outer
    else:
        gamma = torch.exp(log_decay.to(state.dtype))[:, None, None]
        new = torch.addcmul(outer, state, gamma)
    out = (q.unsqueeze(-2) @ new).squeeze(-2)
    return out, new


def retention_recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    state: Tensor | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Recurrent form, one token at a time: S_n = γ S_{n−1} + k_nᵀ v_n,  o_n = q_n S_n.

    q, k (B, H, T, D_k); v (B, H, T, D_v); state (B, H, D_k, D_v) or None
    -> out (B, H, T, D_v), state after the last valid token of each sequence.
    """
    log_decay = log_decay.to(q.dtype)
    s = _zero_state(q, v) if state is None else state.to(q.dtype)
    mask = valid_mask(lengths, q.shape[0], q.shape[2], q.device)
    outs = []
    for n in range(q.shape[2]):
        o, s_new = retention_step(q[:, :, n], k[:, :, n], v[:, :, n], log_decay, s)
        if mask is not None:
            keep = mask[:, n, None, None, None]
            s = torch.where(keep, s_new, s)  # padding leaves the state as it was
            o = o * keep[..., 0]
        else:
            s = s_new
        outs.append(o)
    out = torch.stack(outs, dim=2) if outs else v.new_zeros(v.shape)
    return out, s


def chunk_spans(
    length: int, chunk_size: int | None = None, boundaries: Sequence[int] | None = None
) -> list[tuple[int, int]]:
    """Half-open chunks [s, e) covering 0..length.

    ``boundaries`` are increasing cut positions (0 and ``length`` may be included or
    not); each resulting segment is further cut every ``chunk_size`` tokens. With
    neither, the whole call is one chunk.
    """
    cuts = [0]
    for b in boundaries or ():
        b = int(b)
        if b < cuts[-1] or b > length or (b == cuts[-1] and b != 0):
            raise ValueError(f"boundaries must increase within [0, {length}]: {boundaries}")
        if b > cuts[-1]:
            cuts.append(b)
    if cuts[-1] != length:
        cuts.append(length)
    spans = []
    for s, e in zip(cuts[:-1], cuts[1:], strict=True):
        step = chunk_size if chunk_size else e - s
        if step <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        spans.extend((i, min(i + step, e)) for i in range(s, e, step))
    return spans


def retention_chunkwise(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    state: Tensor | None = None,
    chunk_size: int | None = None,
    boundaries: Sequence[int] | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Chunkwise form: parallel inside each chunk, recurrent across chunks.

    For a chunk of c tokens (i = 0..c−1 inside it) entering with state S:
        O   = (Q Kᵀ ⊙ D) V + (Q ⊙ γ^{i+1}) S
        S'  = γ^c S + Kᵀ (V ⊙ γ^{c−1−i})
    Chunks come from :func:`chunk_spans` (any lengths, 1 included).
    q, k (B, H, T, D_k); v (B, H, T, D_v) -> out (B, H, T, D_v), state (B, H, D_k, D_v).
    """
    log_decay = log_decay.to(q.dtype)
    t = q.shape[2]
    spans = chunk_spans(t, chunk_size, boundaries)
    longest = max((e - s for s, e in spans), default=0)
    mask_all = decay_mask(log_decay, longest)  # top-left c×c block is a c-chunk's D
    powers = decay_powers(log_decay, longest)  # γ^0 .. γ^longest
    s_prev = None if state is None else state.to(q.dtype)
    outs = []
    for s, e in spans:
        c = e - s
        qc, kc, vc = q[:, :, s:e], k[:, :, s:e], v[:, :, s:e]
        o = ((qc @ kc.transpose(-1, -2)) * mask_all[:, :c, :c]) @ vc
        kv = (kc * powers[:, :c].flip(-1)[:, :, None]).transpose(-1, -2) @ vc
        if s_prev is None:
            s_prev = kv
        else:
            o = o + (qc * powers[:, 1 : c + 1, None]) @ s_prev
            s_prev = powers[:, c, None, None] * s_prev + kv
        outs.append(o)
    out = torch.cat(outs, dim=2) if outs else v.new_zeros(v.shape)
    if s_prev is None:
        s_prev = _zero_state(q, v)
    mask = valid_mask(lengths, q.shape[0], t, q.device)
    if mask is not None:
        s0 = _zero_state(q, v) if state is None else state.to(q.dtype)
        s_prev = _final_state(k, v, log_decay, s0, lengths)
        out = out * mask[:, None, :, None]
    return out, s_prev


# ---- the one normalisation --------------------------------------------------------------


def retention_denominator(
    mode: str,
    log_decay: Tensor,
    positions: Tensor,
    qz: Tensor | None = None,
    decay_norm: Tensor | None = None,
) -> Tensor | None:
    """Per-row divisor δ applied to the unnormalised output before the per-head norm.

    positions (B, T): absolute position p of each token in its sequence (0 = first);
    qz (B, H, T) = q̃_p · z_p with z_p = Σ_{m≤p} γ^{p−m} k̃_m (retention with v ≡ 1).
    Returns δ (B, H, T) or None (mode "none"). With c_p = √(Σ_{j=0}^{p} γ^j):

    - "none":       δ = 1 (the paper's form; the per-head RMS norm absorbs scale);
    - "decay":      δ = c_p — torchscale 0.3.0's recurrent form (its running ``scale``);
    - "torchscale": δ = max(|qz|, c_p) — torchscale 0.3.0's parallel form, whose decay
      mask rows are divided by c_p and whose score rows by max(|Σ_m scores|, 1).

    A per-row divisor cancels in RMS norm except through eps (out/√(ms(out)+eps·δ²)), so
    these modes differ only slightly, but torchscale parity needs the right one.
    ``qz`` is detached, as torchscale detaches its score normaliser. ``decay_norm``: c_p
    already computed (a model shares it across layers), else it is computed here.
    """
    if mode == "none":
        return None
    if mode not in NORM_MODES:
        raise ValueError(f"unknown retention normalisation {mode!r}; expected {NORM_MODES}")
    c = decay_norm
    if c is None:
        dtype = qz.dtype if qz is not None else log_decay.dtype
        ld = log_decay.to(dtype)
        count = (positions.to(dtype) + 1)[:, None, :]  # terms in the sum (B, 1, T)
        # Σ_{j<count} γ^j = (1 − γ^count)/(1 − γ), via expm1 for accuracy near γ → 1
        c = torch.sqrt(torch.expm1(count * ld[None, :, None]) / torch.expm1(ld)[None, :, None])
    if mode == "decay":
        return c
    if qz is None:
        raise ValueError("mode 'torchscale' needs qz")
    return torch.maximum(qz.detach().abs(), c)


# ---- dispatch (the CUDA seam) -----------------------------------------------------------

_fast: list[ModuleType | None] = []


def _cuda_ops(x: Tensor) -> ModuleType | None:
    """``retnet_core.fla_ops`` for CUDA tensors when importable, else None (never on CPU)."""
    if not x.is_cuda:
        return None
    if not _fast:
        try:
            from retnet_core import fla_ops  # only on CUDA: it imports triton
        except Exception as exc:  # no fla, or a triton that cannot start: the reference runs
            warnings.warn(
                f"fast CUDA retention unavailable ({exc}); using the reference", stacklevel=2
            )
            fla_ops = None
        _fast.append(fla_ops)
    return _fast[0]


def chunkwise(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    state: Tensor | None = None,
    chunk_size: int | None = None,
    boundaries: Sequence[int] | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`retention_chunkwise`, through ``fla_ops.chunkwise`` on CUDA when it fits.

    Contract for the fast path: ``fla_ops.chunkwise(q, k, v, log_decay, state, chunk_size,
    boundaries, lengths)`` returns (out, state) with this module's exact semantics, or
    None to decline (then the reference runs).
    """
    ops = _cuda_ops(q)
    if ops is not None:
        res = ops.chunkwise(q, k, v, log_decay, state, chunk_size, boundaries, lengths)
        if res is not None:
            return res
    return retention_chunkwise(q, k, v, log_decay, state, chunk_size, boundaries, lengths)


def step(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """:func:`retention_step`, through ``fla_ops.step`` on CUDA when it exists and fits."""
    ops = _cuda_ops(q)
    if ops is not None and hasattr(ops, "step"):
        res = ops.step(q, k, v, log_decay, state)
        if res is not None:
            return res
    return retention_step(q, k, v, log_decay, state)
