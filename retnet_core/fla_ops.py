"""CUDA fast paths for retention through flash-linear-attention's kernels (PyPI ``fla-core``).

Imported only for CUDA tensors (see ``retention._cuda_ops``); it imports ``fla`` and so
triton at module level, which is why the CPU path must never import it.

Each function keeps :mod:`retnet_core.retention`'s exact semantics and returns None to
decline a call it cannot serve, so the pure-torch reference runs instead.

How our forms map onto fla's ``simple_gla`` family (fla 0.6):

- Layout: ours is head-first (B, H, T, D); fla takes (B, T, H, D). We transpose in and out.
- Scale: fla multiplies q·k by ``scale`` and defaults it to D_k^{-1/2}. Our forms are
  unnormalised (any q or k scaling happens in the layer), so we always pass ``scale=1``.
- Decay: ``g_gamma`` (H,) is a per-head *log* decay, the same as our ``log_decay``; fla's
  kernels multiply the state by exp(g_gamma) before adding kᵀv, and read o = q·S after it:
  S_n = γ S_{n−1} + k_nᵀ v_n, o_n = q_n S_n, which is exactly our recurrence. (fla's own
  ``chunk_retention`` hard-codes γ_h = 1 − 2^(−5−h); ``g_gamma`` lets any decay through.)
- State: ``initial_state`` and the final state are (N, H, D_k, D_v) with D_k first (our
  layout, with ``state_v_first`` left False), accumulated in float32. With no initial
  state fla starts from zeros, as we do. We return the state in q's dtype, as the
  reference does.
- Chunking: the chunkwise form's result does not depend on where chunks are cut (that is
  what the equivalence tests prove), so ``chunk_size`` and ``boundaries`` only matter to
  the reference; fla uses its own power-of-two chunks.
- Padding (``lengths``): fla would let padding tokens decay the state, so padded batches
  go through fla's variable-length mode instead: valid tokens are packed into one row
  with ``cu_seqlens``, and outputs are scattered back with zeros at padding.
- Precision: in float32, triton's ``tl.dot`` uses TF32 on Hopper/Ampere unless
  ``TRITON_F32_DEFAULT=ieee`` is set before the kernels compile. The chunk kernels use
  ``tl.dot``; the recurrent kernel does not. ``scripts/gpu_check.py`` measures both.
"""

from __future__ import annotations

import torch
from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla
from torch import Tensor

__all__ = ["chunkwise", "recurrent", "step"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _fits(q: Tensor, k: Tensor, v: Tensor, state: Tensor | None) -> bool:
    """Whether fla can take these (B, H, T, D) tensors: CUDA, a float dtype, T ≥ 1."""
    same = q.device == k.device == v.device and q.dtype == k.dtype == v.dtype
    if not (q.is_cuda and same and q.dtype in _DTYPES and q.shape[2] > 0):
        return False
    return state is None or state.device == q.device


def _to_fla(x: Tensor) -> Tensor:
    """(B, H, T, D) -> (B, T, H, D), contiguous as the kernels expect."""
    return x.transpose(1, 2).contiguous()


def _state_in(state: Tensor | None) -> Tensor | None:
    """Our state (B, H, D_k, D_v) in any dtype -> fla's float32 initial state."""
    return None if state is None else state.float().contiguous()


def _run(
    kernel, q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None, lengths
) -> tuple[Tensor, Tensor]:
    """Run an fla kernel on (B, H, T, D) inputs; pack valid tokens when there is padding.

    -> out (B, H, T, D_v) with zeros at padding, state (B, H, D_k, D_v) at each end.
    """
    b, _, t, _ = q.shape
    g_gamma = log_decay.to(device=q.device, dtype=torch.float32)
    qf, kf, vf = _to_fla(q), _to_fla(k), _to_fla(v)
    mask = None
    if lengths is not None:
        lengths = lengths.to(device=q.device, dtype=torch.long).reshape(b).clamp(0, t)
        if bool((lengths < t).any()):
            mask = torch.arange(t, device=q.device) < lengths[:, None]  # (B, T)
    common = {"g_gamma": g_gamma, "scale": 1.0, "initial_state": _state_in(state)}
    if mask is None:
        o, ht = kernel(q=qf, k=kf, v=vf, output_final_state=True, **common)
        return o.transpose(1, 2).to(q.dtype), ht.to(q.dtype)
    # variable length: valid tokens packed into one row, sequences cut by cu_seqlens (B + 1,)
    cu = torch.zeros(b + 1, device=q.device, dtype=torch.long)
    cu[1:] = torch.cumsum(lengths, 0)
    packed = {"q": qf[mask][None], "k": kf[mask][None], "v": vf[mask][None]}
    o, ht = kernel(**packed, output_final_state=True, cu_seqlens=cu, **common)
    out = vf.new_zeros(vf.shape)
    out[mask] = o[0].to(q.dtype)
    return out.transpose(1, 2), ht.to(q.dtype)


def chunkwise(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    state: Tensor | None = None,
    chunk_size: int | None = None,
    boundaries=None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor] | None:
    """``retention_chunkwise`` through fla's ``chunk_simple_gla``; None to decline.

    q, k (B, H, T, D_k); v (B, H, T, D_v); log_decay (H,); state (B, H, D_k, D_v) or None;
    lengths (B,) or None -> out (B, H, T, D_v), state (B, H, D_k, D_v).
    ``chunk_size`` and ``boundaries`` do not change the result (see the module notes).
    """
    del chunk_size, boundaries  # the result is the same for any chunking
    if not _fits(q, k, v, state):
        return None
    if lengths is not None and bool((lengths == 0).any()):
        return None  # an empty sequence has no place in cu_seqlens: let the reference do it
    return _run(chunk_simple_gla, q, k, v, log_decay, state, lengths)


def recurrent(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    log_decay: Tensor,
    state: Tensor | None = None,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor] | None:
    """``retention_recurrent`` through fla's ``fused_recurrent_simple_gla``; None to decline.

    Same shapes as :func:`chunkwise`. One kernel walks the T tokens in registers.
    """
    if not _fits(q, k, v, state):
        return None
    if lengths is not None and bool((lengths == 0).any()):
        return None
    return _run(fused_recurrent_simple_gla, q, k, v, log_decay, state, lengths)


def step(
    q: Tensor, k: Tensor, v: Tensor, log_decay: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor] | None:
    """``retention_step`` (one token) through fla's fused recurrent kernel; None to decline.

    q, k (B, H, D_k); v (B, H, D_v); state (B, H, D_k, D_v) or None
    -> out (B, H, D_v), new state (B, H, D_k, D_v). The input state is not modified.
    """
    res = recurrent(q.unsqueeze(2), k.unsqueeze(2), v.unsqueeze(2), log_decay, state)
    if res is None:
        return None
    out, new = res
    return out.squeeze(2), new
