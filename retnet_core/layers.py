"""Layers of the RetNet: multi-scale retention, gated FFN, and the pre-norm block.

Shapes: x (B, T, d_model); per head q, k (B, H, T, D_k), v (B, H, T, D_v).

Multi-scale retention of one block (Sun et al. 2023, §2.2), per head h:
    q = θ_p(x W_Q),  k = θ_p(x W_K) / √D_k,  v = x W_V,  g = x W_G
    o = norm_h(Retention(q, k, v; γ_h) / δ)       δ: retention_denominator, one per row
    y = W_O (swish(g) ⊙ concat_h o)
θ_p rotates each pair (2i, 2i+1) of q and k by the angle p·θ_i, p the absolute position.
Fused parameter layout (for converters): ``in_proj.weight`` rows = [W_Q; W_K; W_V; W_G],
``ffn.w_in.weight`` rows = [W_1; W_gate]  (FFN(x) = W_2 (act(x W_1) ⊙ x W_gate)).

Variants (``RetNetConfig``; the defaults give the form above):
- grouped heads: W_K, W_V have H_kv·D_k, H_kv·D_v rows; query head h reads kv head
  h // (H/H_kv); retention expands k, v to H heads (state per query head, own γ_h).
- ``rotary="neox"``: θ_p rotates pairs (i, i + D_k/2) (rotate-half), θ_i = base^(−2i/D_k).
- ``qk_scale`` s replaces 1/√D_k on k; ``out_gate=False``: y = W_O concat_h o (no W_G rows).
- ``head_norm="none"``: norm_h is the identity.
- ``decay="learned"``: log γ_h = log σ(ρ_h), ρ a parameter of the layer.
- ``feature_map="hedgehog"``: retention uses φ(q̃), φ(k̃) with
  φ(x) = [softmax(x W_h); softmax(−x W_h)] (over features), W_h (D_k, D_k) per head
  (query heads for q, kv heads for k), initialised to I.
- ``mixer="softmax"``: o = norm_h(softmax attention(q̃, k̃, v)), scores q̃·k̃ (the teacher).
- ``mixer="hybrid"``: o = norm_h(a_window + α_h Retention_delayed / δ)
  (``retnet_core.attention`` has the equations and the state).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retnet_core import attention as A
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
    "rotate_half",
    "rotate_pairs",
    "rotation_tables",
]


# ---- fixed tables -----------------------------------------------------------------------


def head_log_decay(n_heads: int, base: float = 5.0) -> Tensor:
    """log γ_h (H,) float64, γ_h = 1 − 2^(−base−h)."""
    h = torch.arange(n_heads, dtype=torch.float64)
    return torch.log1p(-torch.pow(2.0, -base - h))


def rotary_angles(key_dim: int, base: float = 10000.0, mode: str = "torchscale") -> Tensor:
    """θ (D_k/2,) float64.

    "torchscale": θ_i = base^(−i/(D_k/2 − 1)), i.e. base^(−linspace(0, 1, D_k/2));
    "neox":       θ_i = base^(−2i/D_k) (Llama, HF, fla).
    """
    if mode == "neox":
        return torch.pow(base, -torch.arange(0, key_dim, 2, dtype=torch.float64) / key_dim)
    return torch.pow(base, -torch.linspace(0, 1, key_dim // 2, dtype=torch.float64))


def head_log_decays(config: RetNetConfig) -> Tensor:
    """log γ_h (H,) float64 of a config: ``decay_gammas`` when given, else the schedule."""
    if config.decay_gammas is not None:
        return torch.log(torch.tensor(config.decay_gammas, dtype=torch.float64))
    return head_log_decay(config.n_heads, config.decay_base)


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


def rotate_half(x: Tensor, rot: Tensor) -> Tensor:
    """Rotate each pair (x_j, x_{j+D/2}) as the complex number x_j + i x_{j+D/2} (NeoX).

    x (B, H, T, D); rot (B, 1, T, D/2) = e^{i p θ_j}:  x cos + rotate_half(x) sin with
    rotate_half(x) = [−x_{D/2:}; x_{:D/2}], the Llama / HF form.
    """
    half = x.shape[-1] // 2
    z = torch.complex(x[..., :half].contiguous(), x[..., half:].contiguous()) * rot
    return torch.cat([z.real, z.imag], dim=-1)


def hedgehog(x: Tensor, weight: Tensor) -> Tensor:
    """φ(x) = [softmax(x W_h); softmax(−x W_h)] over features: (B, H, T, D) -> (B, H, T, 2D).

    weight (H, D, D). Positive features, so φ(q)·φ(k) > 0 (a kernel like exp(q·k)).
    """
    y = torch.einsum("bhtd,hde->bhte", x, weight.to(x.dtype))
    return torch.cat([torch.softmax(y, dim=-1), torch.softmax(-y, dim=-1)], dim=-1)


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
    """The token mixer of a block (see the module docstring); its state is a dict.

    State per layer: ``S`` (B, H, D_φ, D_v) float32 (float64 for float64 models); ``z``
    (B, H, D_φ) the decayed key sum, only when ``retention_norm == "torchscale"``; the
    hybrid's ring and sinks, or the teacher's KV cache (``retnet_core.attention``).
    """

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        c = config
        self.n_heads, self.key_dim, self.head_value_dim = c.n_heads, c.key_dim, c.head_value_dim
        self.kv_heads, self.groups = c.kv_heads, c.n_heads // c.kv_heads
        self.mixer, self.window, self.sinks = c.mixer, c.window, c.sinks
        qk, kk, vv = c.n_heads * c.key_dim, c.kv_heads * c.key_dim, c.kv_heads * c.head_value_dim
        self.split = [qk, kk, vv] + ([c.value_dim] if c.out_gate else [])
        self.in_proj = nn.Linear(c.d_model, sum(self.split), bias=c.bias)
        self.out_proj = nn.Linear(c.value_dim, c.d_model, bias=c.bias)
        self.norm_mode, self.head_norm, self.eps = c.retention_norm, c.head_norm, c.norm_eps
        self.k_scale = c.qk_scale if c.qk_scale is not None else self.key_dim**-0.5
        self.rotate = rotate_half if c.rotary == "neox" else rotate_pairs
        self.decay_logit: nn.Parameter | None = None
        if c.decay == "learned":  # ρ = logit γ, so log γ = log σ(ρ) < 0 always
            ld = head_log_decays(c)
            self.decay_logit = nn.Parameter((ld - torch.log(-torch.expm1(ld))).float())
        self.feature_q: nn.Parameter | None = None
        self.feature_k: nn.Parameter | None = None
        if c.feature_map == "hedgehog":
            eye = torch.eye(c.key_dim)
            self.feature_q = nn.Parameter(eye.repeat(c.n_heads, 1, 1))
            self.feature_k = nn.Parameter(eye.repeat(c.kv_heads, 1, 1))
        self.mix = nn.Parameter(torch.zeros(c.n_heads)) if c.mixer == "hybrid" else None
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
        """Per-head norm over D_v (affine-free): RMS, layer norm or none; the config's eps."""
        if self.head_norm == "layer":
            return F.layer_norm(o, o.shape[-1:], eps=self.eps)
        if self.head_norm == "none":
            return o
        return F.rms_norm(o, o.shape[-1:], None, self.eps)

    def log_decay(self, ctx: RetentionContext) -> Tensor:
        """log γ_h (H,) in the state dtype: the model's table, or this layer's learned one."""
        if self.decay_logit is None:
            return ctx.log_decay
        return F.logsigmoid(self.decay_logit.to(ctx.log_decay.dtype))

    def empty_state(self, batch: int, device, dtype: torch.dtype) -> dict[str, Tensor]:
        """The state of ``batch`` sequences at position 0 (see the class docstring)."""
        c, kw = self, dict(device=device, dtype=dtype)
        if self.mixer == "softmax":  # no retention state; an empty KV cache
            return {
                "S": torch.zeros(batch, 0, **kw),
                "kv_k": torch.zeros(batch, c.kv_heads, 0, c.key_dim, **kw),
                "kv_v": torch.zeros(batch, c.kv_heads, 0, c.head_value_dim, **kw),
            }
        dphi = c.key_dim * (2 if self.feature_q is not None else 1)
        out = {"S": torch.zeros(batch, c.n_heads, dphi, c.head_value_dim, **kw)}
        if self.norm_mode == "torchscale":
            out["z"] = torch.zeros(batch, c.n_heads, dphi, **kw)
        if self.mixer == "hybrid":
            k = torch.zeros(batch, c.kv_heads, 0, c.key_dim, **kw)
            v = torch.zeros(batch, c.kv_heads, 0, c.head_value_dim, **kw)
            out.update(A.empty_window(k, v, self.window, self.sinks))
        return out

    def forward(
        self, x: Tensor, ctx: RetentionContext, state: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """x (B, T, d_model) -> y (B, T, d_model), new state (None in parallel mode)."""
        b, t, _ = x.shape
        q, k, v, *g = self.in_proj(x).split(self.split, dim=-1)
        sdt = ctx.log_decay.dtype  # retention runs in the state dtype (≥ float32)
        q = q.view(b, t, self.n_heads, self.key_dim).transpose(1, 2).to(sdt)
        k = k.view(b, t, self.kv_heads, self.key_dim).transpose(1, 2).to(sdt)
        v = v.view(b, t, self.kv_heads, self.head_value_dim).transpose(1, 2).to(sdt)
        q = self.rotate(q, ctx.rot)
        k = self.rotate(k, ctx.rot) * self.k_scale
        if self.mixer == "softmax":
            o, new = A.softmax_mixer(
                q, k, v, ctx.positions, ctx.lengths, state, keep_state=ctx.mode != "parallel"
            )
            if new is not None:
                new["S"] = q.new_zeros(b, 0)
        elif self.mixer == "hybrid":
            o, new = self._hybrid(q, k, v, state, ctx)
        else:
            o, new = self._retention(q, k, v, state, ctx)
        o = self._normalise_heads(o).transpose(1, 2).reshape(b, t, -1).to(x.dtype)
        y = self.out_proj(F.silu(g[0]) * o if g else o)
        return y, new

    def features(self, q: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
        """Retention's (φ(q̃) (B, H, T, D_φ), φ(k̃) (B, H_kv, T, D_φ)): the feature map."""
        if self.feature_q is None:
            return q, k
        return hedgehog(q, self.feature_q), hedgehog(k, self.feature_k)

    def _retention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        state: dict[str, Tensor] | None,
        ctx: RetentionContext,
        features: bool = True,
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Retention(φ(q̃), φ(k̃), v) / δ with kv heads expanded -> (o (B, H, T, D_v), state)."""
        b, t = q.shape[0], q.shape[2]
        if features:
            q, k = self.features(q, k)
        if k.shape[1] != self.n_heads:  # grouped heads: one retention state per query head
            k = A.expand_heads(k, self.groups)
        if v.shape[1] != self.n_heads:
            v = A.expand_heads(v, self.groups)
        log_decay = self.log_decay(ctx)
        s0 = None if state is None else state["S"]
        with_z = self.norm_mode == "torchscale"
        if with_z:  # z_p and q·z_p are retention with v ≡ 1: one extra value column
            v = torch.cat([v, v.new_ones(b, self.n_heads, t, 1)], dim=-1)
            if state is not None:
                s0 = torch.cat([state["S"], state["z"].unsqueeze(-1)], dim=-1)
        o, s_new = self._retain(q, k, v, s0, ctx, log_decay)
        qz = z_new = None
        if with_z:
            qz, o = o[..., -1], o[..., :-1]
            if s_new is not None:
                s_new, z_new = s_new[..., :-1].contiguous(), s_new[..., -1].contiguous()
        decay_norm = ctx.decay_norm if self.decay_logit is None else None
        delta = R.retention_denominator(
            self.norm_mode, log_decay, ctx.positions, qz, decay_norm=decay_norm
        )
        if delta is not None:
            o = o / delta.unsqueeze(-1)
        if s_new is None:
            return o, None
        return o, ({"S": s_new} if z_new is None else {"S": s_new, "z": z_new})

    def _hybrid(
        self, q: Tensor, k: Tensor, v: Tensor, state: dict[str, Tensor] | None, ctx
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """o = a_window + α_h · Retention(φ(q̃), k', v') / δ  (``retnet_core.attention``)."""
        w, s = self.window, self.sinks
        buf = A.empty_window(k, v, w, s) if state is None else state
        a = A.window_attention(q, k, v, ctx.positions, ctx.lengths, buf, w, s)
        kd, vd, ok = A.delayed_stream(k, v, ctx.positions, buf, w, s)
        qf, kd = self.features(q, kd)
        # γ_h^w on the delayed keys, per query head: expand first (a no-op without groups)
        kd = A.expand_heads(kd * ok, self.groups)
        kd = kd * torch.exp(w * self.log_decay(ctx))[:, None, None]
        r, new = self._retention(qf, kd, vd, state, ctx, features=False)
        o = a + self.mix.to(r.dtype)[:, None, None] * r
        if new is not None:
            new.update(A.roll_window(k, v, ctx.positions, ctx.lengths, buf, w, s))
        return o, new

    def _retain(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        s0: Tensor | None,
        ctx: RetentionContext,
        log_decay: Tensor,
    ) -> tuple[Tensor, Tensor | None]:
        if ctx.mode == "step":
            o, s = R.step(q[:, :, 0], k[:, :, 0], v[:, :, 0], log_decay, s0)
            return o.unsqueeze(2), s
        if ctx.mode == "chunkwise":
            return R.chunkwise(q, k, v, log_decay, s0, ctx.chunk_size, ctx.boundaries, ctx.lengths)
        return R.retention_parallel(q, k, v, log_decay, s0, ctx.lengths), None


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
        state: dict[str, Tensor] | None = None,
        bank: Any = None,
        capture: dict[int, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor] | None]:
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
