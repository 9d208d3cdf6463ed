"""Layers of the RetNet: multi-scale retention, gated FFN, and the pre-norm block.

Shapes: x (B, T, d_model); per head q, k (B, H, T, D_k), v (B, H, T, D_v).

Multi-scale retention of one block (Sun et al. 2023, §2.2), per head h:
    q = θ_p(x W_Q),  k = θ_p(x W_K) / √D_k,  v = x W_V,  g = x W_G
    o = norm_h(Retention(q, k, v; γ_h) / δ)       δ: retention_denominator, one per row
    y = W_O (swish(g) ⊙ concat_h o)
θ_p rotates each pair (2i, 2i+1) of q and k by the angle p·θ_i, p the absolute position.
Fused parameter layout (for converters): ``in_proj.weight`` rows = [W_Q; W_K; W_V; W_G],
``ffn.w_in.weight`` rows = [W_1; W_gate]  (FFN(x) = W_2 (act(x W_1) ⊙ x W_gate)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retnet_core import retention as R
from retnet_core.config import RetNetConfig

__all__ = [
    "FeedForward",
    "MultiScaleRetention",
    "RMSNorm",
    "RetNetBlock",
    "RetentionContext",
    "head_log_decay",
    "rotary_angles",
    "rotate_pairs",
    "rotation_tables",
]


# ---- fixed tables -----------------------------------------------------------------------


def head_log_decay(n_heads: int, base: float = 5.0) -> Tensor:
    """log γ_h (H,) float64, γ_h = 1 − 2^(−base−h)."""
    h = torch.arange(n_heads, dtype=torch.float64)
    return torch.log1p(-torch.pow(2.0, -base - h))


def rotary_angles(key_dim: int, base: float = 10000.0) -> Tensor:
    """θ (D_k/2,) float64: θ_i = base^(−i/(D_k/2 − 1)), i.e. base^(−linspace(0, 1, D_k/2))."""
    return torch.pow(base, -torch.linspace(0, 1, key_dim // 2, dtype=torch.float64))


def rotation_tables(positions: Tensor, angles: Tensor, dtype: torch.dtype) -> Tensor:
    """e^{i p θ_j} (B, 1, T, D_k/2), complex of ``dtype`` (float32/64), phases in float64.

    Phases p·θ_j are formed in float64 so that large positions keep their accuracy.
    """
    phase = positions.to(torch.float64)[:, None, :, None] * angles.to(positions.device)
    rot = torch.polar(torch.ones_like(phase), phase)
    return rot.to(torch.complex128 if dtype == torch.float64 else torch.complex64)


def rotate_pairs(x: Tensor, rot: Tensor) -> Tensor:
    """Rotate each pair (x_{2j}, x_{2j+1}) as the complex number x_{2j} + i x_{2j+1}.

    x (B, H, T, D) float32/64; rot (B, 1, T, D/2) complex = e^{i p θ_j}:
        (x_{2j}, x_{2j+1}) -> (x_{2j} cos − x_{2j+1} sin,  x_{2j+1} cos + x_{2j} sin)
    """
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)).contiguous())
    return torch.view_as_real(pairs * rot).flatten(-2)


EMBEDS = -1  # key of the embedded input tokens in a ``capture`` dict (layers are ≥ 0)
TOKENS = -2  # key of the input token ids in a ``capture`` dict


@dataclass
class RetentionContext:
    """What every layer of one model call shares (computed once per call).

    positions (B, T) absolute token positions; rot (B, 1, T, D_k/2) complex rotation
    table (:func:`rotation_tables`); log_decay (H,);
    decay_norm (B, H, T) = c_p of :func:`retention_denominator`, or None (mode "none");
    lengths (B,) or None; mode "parallel" | "chunkwise" | "step"; chunking for chunkwise;
    embeds (B, T, d_model) the embedded input tokens (what token slots may store).
    """

    positions: Tensor
    rot: Tensor
    log_decay: Tensor
    decay_norm: Tensor | None
    mode: str
    lengths: Tensor | None = None
    chunk_size: int | None = None
    boundaries: list[int] | None = None
    embeds: Tensor | None = None  # (B, T, d_model) the call's embedded tokens (memory values)
    tokens: Tensor | None = None  # (B, T) the call's token ids (what copying slots store)
    copies: list | None = None  # copy reads of memory layers, for the head (memory_copy)


# ---- modules ----------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """y = x / √(mean(x²) + eps) ⊙ w, computed in at least float32."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float32, torch.float64):  # one fused op on the hot path
            return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
        y = F.rms_norm(x.float(), x.shape[-1:], None, self.eps).to(x.dtype)
        return y if self.weight is None else y * self.weight


class MultiScaleRetention(nn.Module):
    """Multi-scale retention (see the module docstring); state is (S, z) per layer.

    S (B, H, D_k, D_v) float32 (float64 for float64 models); z (B, H, D_k) the decayed
    key sum, kept only when ``retention_norm == "torchscale"`` (else None).
    """

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        c = config
        self.n_heads, self.key_dim, self.head_value_dim = c.n_heads, c.key_dim, c.head_value_dim
        self.split = [c.d_model, c.d_model, c.value_dim, c.value_dim]
        self.in_proj = nn.Linear(c.d_model, sum(self.split), bias=c.bias)
        self.out_proj = nn.Linear(c.value_dim, c.d_model, bias=c.bias)
        self.norm_mode, self.head_norm, self.eps = c.retention_norm, c.head_norm, c.norm_eps
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchscale's init: Xavier with gain 2^−2.5 on q, k, v, g; plain on the output."""
        for w in self.in_proj.weight.split(self.split, dim=0):
            fan_out, fan_in = w.shape
            bound = 2**-2.5 * math.sqrt(6.0 / (fan_in + fan_out))
            nn.init.uniform_(w, -bound, bound)
        nn.init.xavier_uniform_(self.out_proj.weight)
        for lin in (self.in_proj, self.out_proj):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def _normalise_heads(self, o: Tensor) -> Tensor:
        """Per-head norm over D_v (affine-free): RMS or layer norm, same eps as the config."""
        if self.head_norm == "layer":
            return F.layer_norm(o, o.shape[-1:], eps=self.eps)
        return F.rms_norm(o, o.shape[-1:], None, self.eps)

    def forward(
        self, x: Tensor, ctx: RetentionContext, state: tuple[Tensor, Tensor | None] | None
    ) -> tuple[Tensor, tuple[Tensor, Tensor | None] | None]:
        """x (B, T, d_model) -> y (B, T, d_model), new state (None in parallel mode)."""
        b, t, _ = x.shape
        q, k, v, g = self.in_proj(x).split(self.split, dim=-1)
        sdt = ctx.log_decay.dtype  # retention runs in the state dtype (≥ float32)
        q = q.view(b, t, self.n_heads, self.key_dim).transpose(1, 2).to(sdt)
        k = k.view(b, t, self.n_heads, self.key_dim).transpose(1, 2).to(sdt)
        v = v.view(b, t, self.n_heads, self.head_value_dim).transpose(1, 2).to(sdt)
        q = rotate_pairs(q, ctx.rot)
        k = rotate_pairs(k, ctx.rot) * self.key_dim**-0.5
        s0 = None if state is None else state[0]
        with_z = self.norm_mode == "torchscale"
        if with_z:  # z_p and q·z_p are retention with v ≡ 1: one extra value column
            v = torch.cat([v, v.new_ones(b, self.n_heads, t, 1)], dim=-1)
            if state is not None:
                s0 = torch.cat([state[0], state[1].unsqueeze(-1)], dim=-1)
        o, s_new = self._retain(q, k, v, s0, ctx)
        qz = z_new = None
        if with_z:
            qz, o = o[..., -1], o[..., :-1]
            if s_new is not None:
                s_new, z_new = s_new[..., :-1].contiguous(), s_new[..., -1].contiguous()
        delta = R.retention_denominator(
            self.norm_mode, ctx.log_decay, ctx.positions, qz, decay_norm=ctx.decay_norm
        )
        if delta is not None:
            o = o / delta.unsqueeze(-1)
        o = self._normalise_heads(o).transpose(1, 2).reshape(b, t, -1).to(x.dtype)
        y = self.out_proj(F.silu(g) * o)
        return y, (None if s_new is None else (s_new, z_new))

    @staticmethod
    def _retain(
        q: Tensor, k: Tensor, v: Tensor, s0: Tensor | None, ctx: RetentionContext
    ) -> tuple[Tensor, Tensor | None]:
        if ctx.mode == "step":
            o, s = R.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], ctx.log_decay, s0)
            return o.unsqueeze(2), s
        if ctx.mode == "chunkwise":
            return R.chunkwise(
                q, k, v, ctx.log_decay, s0, ctx.chunk_size, ctx.boundaries, ctx.lengths
            )
        return R.retention_parallel(q, k, v, ctx.log_decay, s0, ctx.lengths), None


class FeedForward(nn.Module):
    """Gated FFN: y = W_2 (act(x W_1) ⊙ x W_gate); act = swish gives SwiGLU."""

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        self.w_in = nn.Linear(config.d_model, 2 * config.ffn_dim, bias=config.bias)
        self.w_out = nn.Linear(config.ffn_dim, config.d_model, bias=config.bias)
        self.act = F.silu if config.ffn_activation == "swish" else F.gelu

    def forward(self, x: Tensor) -> Tensor:
        a, gate = self.w_in(x).chunk(2, dim=-1)
        return self.w_out(self.act(a) * gate)


class RetNetBlock(nn.Module):
    """Pre-norm block: x += MSR(norm(x)); [x += Memory(norm(x), bank)]; x += FFN(norm(x))."""

    def __init__(self, config: RetNetConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.dropout = config.dropout
        self.retention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.retention = MultiScaleRetention(config)
        self.memory: nn.Module | None = None
        if layer_idx in config.memory_layers:
            from retnet_core.memory import MemoryLayer  # lazy: only models with memory need it

            self.memory_norm = RMSNorm(config.d_model, config.norm_eps)
            self.memory = MemoryLayer(config)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = FeedForward(config)

    def forward(
        self,
        x: Tensor,
        ctx: RetentionContext,
        state: tuple[Tensor, Tensor | None] | None = None,
        bank: Any = None,
        capture: dict[int, Tensor] | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor | None] | None]:
        """x (B, T, d_model) -> (x', new retention state or None)."""
        y, new_state = self.retention(self.retention_norm(x), ctx, state)
        x = x + F.dropout(y, self.dropout, self.training)
        if self.memory is not None:
            h = self.memory_norm(x)
            if capture is not None:  # the memory layer's input, for later writes
                capture[self.layer_idx] = h
            x = x + self.memory(h, bank, ctx.embeds, ctx.tokens, ctx.copies)
        x = x + F.dropout(self.ffn(self.ffn_norm(x)), self.dropout, self.training)
        return x, new_state
