"""RetNetLM: the decoder language model, with its three ways to run.

    forward(tokens)         parallel form, for training          -> logits (B, T, V)
    prefill(tokens, state)  chunkwise form, continues a state    -> logits, state
    step(tokens, state)     recurrent form, one token per row    -> logits (B, V), state

x_0 = embed_scale · E[tokens] (then RMSNorm if ``embed_norm``); blocks; final RMSNorm;
logits = x W_head (W_head = E when ``tie_embeddings``). All three ways compute the same
function: position p of a sequence always gets rotation p·θ and the same decay history.

Batches of different lengths are right-padded with ``lengths`` (B,): padding never
reaches any sequence's state, nor its valid outputs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retnet_core.config import RetNetConfig
from retnet_core.hybrid_step import hybrid_step, hybrid_step_supported
from retnet_core.layers import (
    EMBEDS,
    TOKENS,
    RetentionContext,
    RetNetBlock,
    RMSNorm,
    head_log_decays,
    rotary_angles,
    rotation_tables,
)
from retnet_core.retention import retention_denominator
from retnet_core.state import STATE_FORMAT_VERSION, RecurrentState, StateError, StateMismatchError

__all__ = ["RetNetLM"]

Memory = Mapping[int, Any] | None  # layer index -> SlotStore (or TensorBank in training)


def _linear_add(x: Tensor, a: Tensor, lin: nn.Module) -> Tensor:
    """x + lin(a) in one op when there is no bias (addmm accumulates onto x); any other
    projection (with a bias, or bf16/int8: ``retnet_core.precision.LowBitLinear``) is called."""
    if isinstance(lin, nn.Linear) and lin.bias is None and x.dim() == 2:
        return torch.addmm(x, a, lin.weight.t())
    return x + lin(a)


def _version(t: Tensor) -> int:
    """In-place update counter; inference tensors (made under inference_mode) have none."""
    return -1 if t.is_inference() else t._version


class RetNetLM(nn.Module):
    """Decoder-only RetNet language model (see the module docstring)."""

    def __init__(self, config: RetNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.embed_norm = RMSNorm(config.d_model, config.norm_eps) if config.embed_norm else None
        self.blocks = nn.ModuleList(RetNetBlock(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        nn.init.normal_(self.embed.weight, std=config.d_model**-0.5)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        else:
            nn.init.normal_(self.head.weight, std=config.d_model**-0.5)
        self._tables: dict[tuple, tuple[Tensor, Tensor]] = {}
        self._weights: list[tuple[str, Tensor]] | None = None
        self._fingerprint: tuple[tuple, str] | None = None
        self._compiled_layers: Any = None  # see compile_step
        if os.environ.get("RETNET_COMPILE_STEP") == "1":  # opt in without code changes
            self.compile_step()

    # ---- fixed tables and dtypes ----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def state_dtype(self) -> torch.dtype:
        """float64 for float64 models (tests), else float32 whatever the weights."""
        return torch.float64 if self.embed.weight.dtype == torch.float64 else torch.float32

    def _decay_and_angles(self) -> tuple[Tensor, Tensor]:
        """log γ (H,) in the state dtype and θ (D_k/2,) float64, cached per device."""
        key = (self.device, self.state_dtype)
        if key not in self._tables:
            c = self.config
            ld = head_log_decays(c).to(self.device, self.state_dtype)
            angles = rotary_angles(c.key_dim, c.rotary_base, c.rotary).to(self.device)
            self._tables[key] = (ld, angles)
        return self._tables[key]

    def context(self, positions: Tensor, mode: str = "parallel", **kw: Any) -> RetentionContext:
        """What every layer of one call shares, for calling a block or its mixer alone
        (e.g. attention transfer: ``block.retention(norm(x), model.context(pos), None)``).

        positions (B, T) absolute; mode "parallel" | "chunkwise" | "step"; ``kw``: the
        other :class:`RetentionContext` fields (lengths, chunk_size, boundaries).
        """
        return self._context(positions, mode, **kw)

    def _context(self, positions: Tensor, mode: str, **kw: Any) -> RetentionContext:
        log_decay, angles = self._decay_and_angles()
        rot = rotation_tables(positions, angles, self.state_dtype)
        c = self.config
        unused = c.retention_norm == "none" or c.mixer == "softmax" or c.decay == "learned"
        decay_norm = None if unused else retention_denominator("decay", log_decay, positions)
        return RetentionContext(positions, rot, log_decay, decay_norm, mode, **kw)

    # ---- fingerprint ----------------------------------------------------------------------
    def fingerprint(self) -> str:
        """BLAKE2b of config, state format and dtype, and every weight (device-independent).

        Cached until a weight changes: in-place updates bump a tensor's version, ``.to()``
        moves its storage, and ``load_state_dict``/``_apply`` drop the cache (they may
        replace Parameter objects). Costs a few µs per call when nothing changed.
        Weights created under ``torch.inference_mode`` have no version counter: in-place
        edits of those are not noticed (they can only happen inside inference mode).
        """
        if self._weights is None:
            self._weights = sorted(self.state_dict(keep_vars=True).items())
        key = tuple((t.data_ptr(), _version(t)) for _, t in self._weights)
        if self._fingerprint is not None and self._fingerprint[0] == key:
            return self._fingerprint[1]
        h = hashlib.blake2b(digest_size=16)
        h.update(self.config.to_json().encode())
        h.update(f"state-v{STATE_FORMAT_VERSION}|{self.state_dtype}".encode())
        for name, t in self._weights:
            t = t.detach().cpu().contiguous()
            h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        self._fingerprint = (key, h.hexdigest())
        return self._fingerprint[1]

    def _apply(self, fn, *args, **kwargs):  # .to(), .double(), .cuda(): weights move
        self._weights, self._tables = None, {}
        return super()._apply(fn, *args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._weights = None  # assign=True replaces Parameter objects
        out = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._weights = None
        return out

    # ---- state ----------------------------------------------------------------------------
    def init_state(self, batch_size: int = 1) -> RecurrentState:
        """The empty state (position 0) of ``batch_size`` sequences."""
        dev, dt = self.device, self.state_dtype
        layers = [b.retention.empty_state(batch_size, dev, dt) for b in self.blocks]
        pos = torch.zeros(batch_size, dtype=torch.long, device=dev)
        return self._pack(layers, pos, self.fingerprint)  # hashed when first needed

    def check_state(self, state: RecurrentState, batch_size: int | None = None) -> str:
        """Refuse a state of another model (StateMismatchError) or of the wrong batch.

        Returns this model's fingerprint (the one new states get).
        """
        mine = self.fingerprint()
        if state.fingerprint != mine:
            raise StateMismatchError(state.fingerprint, mine)
        if batch_size is not None and state.batch_size != batch_size:
            raise StateError(f"state holds {state.batch_size} sequences, tokens {batch_size}")
        if state.n_layers != self.config.n_layers:
            raise StateError(f"state has {state.n_layers} layers, model {self.config.n_layers}")
        return mine

    # ---- the three ways to run ------------------------------------------------------------
    def _embed(self, tokens: Tensor) -> Tensor:
        x = self.embed(tokens)
        if self.config.embed_scale != 1.0:
            x = x * self.config.embed_scale
        return x if self.embed_norm is None else self.embed_norm(x)

    def _run(
        self,
        tokens: Tensor,
        ctx: RetentionContext,
        state: RecurrentState | None,
        memory: Memory,
        capture: dict[int, Tensor] | None,
    ) -> tuple[Tensor, list[dict[str, Tensor] | None]]:
        """Blocks over embedded tokens -> final hidden (B, T, d), per-layer new states."""
        x = self._embed(tokens)
        ctx.embeds, ctx.tokens = x, tokens
        ctx.copies = [] if self.config.memory_copy else None
        if capture is not None:  # token slots are written from these too
            capture[EMBEDS], capture[TOKENS] = x, tokens
        new_states = []
        for i, block in enumerate(self.blocks):
            layer_state = None if state is None else state.layer(i)
            bank = None if memory is None else memory.get(i)
            x, st = block(x, ctx, layer_state, bank, capture)
            new_states.append(st)
        return self.norm(x), new_states

    def _logits(self, hidden: Tensor, copies: list | None) -> Tensor:
        """head(hidden) (B, T, V), with the first memory layer's copy mixed in when it
        read a bank (memory_copy: :func:`retnet_core.memory.copy_mix`, log-probs)."""
        logits = self.head(hidden)
        if not copies:
            return logits
        from retnet_core.memory import copy_mix

        return copy_mix(logits, *copies[0])

    def forward(
        self,
        tokens: Tensor,
        lengths: Tensor | None = None,
        memory: Memory = None,
        capture: dict[int, Tensor] | None = None,
    ) -> Tensor:
        """Parallel form from an empty state. tokens (B, T) -> logits (B, T, V).

        Logits at padding positions (t ≥ lengths[b]) are unspecified. ``capture``, when
        given, receives each memory layer's input (B, T, d_model) by layer index.
        """
        b, t = tokens.shape
        positions = torch.arange(t, device=tokens.device).expand(b, t)
        ctx = self._context(positions, "parallel", lengths=lengths)
        hidden, _ = self._run(tokens, ctx, None, memory, capture)
        return self._logits(hidden, ctx.copies)

    def prefill(
        self,
        tokens: Tensor,
        state: RecurrentState | None = None,
        boundaries: Sequence[int] | None = None,
        lengths: Tensor | None = None,
        memory: Memory = None,
        chunk_size: int | None = None,
        last_only: bool = False,
        capture: dict[int, Tensor] | None = None,
    ) -> tuple[Tensor, RecurrentState]:
        """Feed tokens (B, T) through the chunkwise form, continuing ``state``.

        ``boundaries``: cut positions inside this call (e.g. passage ends), each chunk
        further cut every ``chunk_size`` (default ``config.chunk_size``). ``lengths`` (B,):
        valid tokens per row (right padding). Returns logits (B, T, V) — or (B, V) at each
        row's last valid token when ``last_only`` (zeros for rows with length 0) — and
        the state after each row's last valid token.
        """
        b, t = tokens.shape
        fresh = state is None
        if fresh:  # nothing to check, and no hashing unless the state is used later
            fp: Any = self.fingerprint
            start = torch.zeros(b, dtype=torch.long, device=tokens.device)
        else:
            fp, start = self.check_state(state, b), state.position
        if lengths is not None:
            lengths = lengths.to(device=tokens.device, dtype=torch.long)
        positions = start[:, None] + torch.arange(t, device=tokens.device)
        ctx = self._context(
            positions,
            "chunkwise",
            lengths=lengths,
            chunk_size=chunk_size or self.config.chunk_size,
            boundaries=list(boundaries) if boundaries is not None else None,
        )
        hidden, layers = self._run(tokens, ctx, state, memory, capture)
        advanced = torch.full_like(start, t) if lengths is None else lengths
        new_state = self._pack(layers, start + advanced, fp)
        if not last_only:
            return self._logits(hidden, ctx.copies), new_state
        last = (advanced - 1).clamp(min=0)
        rows = torch.arange(b, device=hidden.device)
        picked = hidden[rows, last][:, None]
        copies = [tuple(c[rows, last][:, None] for c in cp) for cp in ctx.copies or []]
        logits = self._logits(picked, copies)[:, 0] * (advanced > 0)[:, None]
        return logits, new_state

    def step(
        self, tokens: Tensor, state: RecurrentState, memory: Memory = None
    ) -> tuple[Tensor, RecurrentState]:
        """One token per sequence through the recurrent form. tokens (B,) -> logits (B, V).

        Decoding is bound by reading the weights once per token, so the common case (CPU,
        no memory layers, retention_norm "none"/"decay", no dropout) runs
        :meth:`_fast_step`: the same function in a few fused ops per layer. Everything
        else runs the generic per-module path below (the reference).
        """
        b = tokens.shape[0]
        fp = self.check_state(state, b)
        if self._fast_ok():
            return self._fast_step(tokens, state, fp, memory)
        if self._hybrid_fast_ok() and memory is None:
            return hybrid_step(self, tokens, state, fp)
        ctx = self._context(state.position[:, None], "step")
        hidden, layers = self._run(tokens[:, None], ctx, state, memory, None)
        logits = self._logits(hidden, ctx.copies)[:, 0]
        return logits, self._pack(layers, state.position + 1, fp)

    # ---- the decode fast path ------------------------------------------------------------
    def _fast_ok(self) -> bool:
        c = self.config
        return (
            self.device.type == "cpu"  # CUDA keeps the fla_ops seam of the generic path
            and c.retention_norm != "torchscale"
            and (c.dropout == 0.0 or not self.training)
            and self._classic
        )

    def _hybrid_fast_ok(self) -> bool:
        """The hybrid's fused step (``retnet_core.hybrid_step``): CPU, inference."""
        return (
            self.device.type == "cpu"
            and not (self.training and self.config.dropout)
            and hybrid_step_supported(self.config)
        )

    @property
    def _classic(self) -> bool:
        """The layout :meth:`_step_layers` is written for: no variant field in use."""
        c = self.config
        return (
            c.mixer == "retention"
            and c.kv_heads == c.n_heads
            and c.n_heads * c.key_dim == c.d_model
            and c.rotary == "torchscale"
            and c.qk_scale is None
            and c.out_gate
            and c.head_norm != "none"
            and c.decay == "fixed"
            and c.feature_map == "identity"
        )

    def _step_rotation(self, position: Tensor) -> Tensor:
        """[q; k] multipliers (B, 2, H, D_k/2) complex: q gets e^{ipθ}/δ_h, k e^{ipθ}/√D_k.

        One complex product then applies the rotation θ_p, the key scale 1/√D_k and the
        denominator δ (a per-row divisor of o = q S, hence of q: o/δ = (q/δ) S). Formed in
        float64 (phases and δ), then cast to the state's complex dtype.
        """
        c = self.config
        log_decay, angles = self._decay_and_angles()
        phase = position.to(torch.float64)[:, None, None] * angles  # (B, 1, D_k/2)
        rot = torch.polar(torch.ones_like(phase), phase)
        k_rot = rot * c.key_dim**-0.5
        if c.retention_norm == "none":
            q_rot = rot.expand(-1, c.n_heads, -1)
        else:
            ld = log_decay.to(torch.float64)
            delta = retention_denominator("decay", ld, position[:, None])  # (B, H, 1)
            q_rot = rot / delta
        both = torch.stack([q_rot, k_rot.expand_as(q_rot)], dim=1)
        return both.to(torch.complex128 if self.state_dtype == torch.float64 else torch.complex64)

    def _fast_step(
        self, tokens: Tensor, state: RecurrentState, fingerprint: Any, memory: Memory = None
    ) -> tuple[Tensor, RecurrentState]:
        """:meth:`step` in a few ops per layer (see ``layers`` for the equations).

        Per layer: RMSNorm; [q; k; v; g] = one matmul; one complex product rotates and
        scales q and k (:meth:`_step_rotation`); S' = γ S + kᵀ v (addcmul), o = q S';
        head norm; swish gate; output projection fused with the residual (addmm);
        then the FFN, its output projection fused with the residual too. The input
        state is never modified.
        """
        rot = self._step_rotation(state.position)
        x = self._embed(tokens)  # (B, d)
        if self._compiled_layers is None or self.config.memory_layers:  # banks: eager
            logits, new_s = self._step_layers(x, rot, self._step_gamma(), list(state.S), memory)
        else:  # rot as (..., 2) real pairs: inductor generates no code for complex ops
            rot = torch.view_as_real(rot)
            logits, new_s = self._compiled_layers(x, rot, self._step_gamma(), list(state.S))
        return logits, RecurrentState(new_s, None, state.position + 1, fingerprint)

    def _step_layers(
        self, x: Tensor, rot: Tensor, gamma: Tensor, states: list[Tensor], memory: Memory = None
    ) -> tuple[Tensor, list[Tensor]]:
        """The blocks and head of :meth:`_fast_step`: x (B, d), rot of
        :meth:`_step_rotation` (complex, or its ``view_as_real``), γ (H, 1, 1), S per
        layer -> logits (B, V), new S per layer; ``memory`` as in :meth:`step`. Without
        memory layers, a pure function of its tensors (what :meth:`compile_step` compiles;
        models with memory layers step eagerly)."""
        c = self.config
        h, dk, dv = c.n_heads, c.key_dim, c.head_value_dim
        d, vd = c.d_model, c.value_dim
        sdt = gamma.dtype
        new_s = []
        copies: list | None = [] if c.memory_copy else None
        for block, s_old in zip(self.blocks, states, strict=True):
            attn = block.retention
            p = attn.in_proj(block.retention_norm(x))
            p = p.to(sdt)
            pairs = p[:, : 2 * d].unflatten(-1, (2, h, dk // 2, 2))
            if rot.is_complex():  # eager: one complex product
                qk = torch.view_as_real(torch.view_as_complex(pairs) * rot).flatten(-2)
            else:  # compiled: the same product in real arithmetic (inductor fuses it)
                a, b, re, im = pairs[..., 0], pairs[..., 1], rot[..., 0], rot[..., 1]
                qk = torch.stack([a * re - b * im, a * im + b * re], dim=-1).flatten(-2)
            v = p[:, 2 * d : 2 * d + vd].unflatten(-1, (h, dv))
            s = torch.addcmul(qk[:, 1, :, :, None] * v[:, :, None, :], s_old, gamma)
            o = torch.matmul(qk[:, 0, :, None, :], s).flatten(1, 2)  # (B, H, D_v)
            o = attn._normalise_heads(o).flatten(1).to(x.dtype)
            o = F.silu(p[:, 2 * d + vd :].to(x.dtype)) * o
            x = _linear_add(x, o, attn.out_proj)
            new_s.append(s)
            if block.memory is not None:  # (B, 1, d) through the memory layer's read
                bank = None if memory is None else memory.get(block.layer_idx)
                read = block.memory(block.memory_norm(x)[:, None], bank, copies=copies)
                x = x + read[:, 0]
            ffn = block.ffn
            a = ffn.w_in(block.ffn_norm(x))
            a, gate = a.chunk(2, dim=-1)
            x = _linear_add(x, ffn.act(a) * gate, ffn.w_out)
        return self._logits(self.norm(x)[:, None], copies)[:, 0], new_s

    def compile_step(self, enable: bool = True, **options: Any) -> RetNetLM:
        """Opt in (or out) of ``torch.compile`` for the decode fast path (CPU, inductor).

        Fuses the small per-layer ops into a few generated kernels; the matmuls stay
        library calls. Costs a compilation on the first step of each batch size.
        ``options`` go to ``torch.compile`` (default ``dynamic=False``). Setting the
        environment variable ``RETNET_COMPILE_STEP=1`` turns it on for every new model.
        Measured with ``scripts/profile_step.py`` (docs/bench/step_profile.md).
        """
        self._compiled_layers = (
            torch.compile(self._step_layers, **{"dynamic": False, **options}) if enable else None
        )
        return self

    def _step_gamma(self) -> Tensor:
        """γ_h as (H, 1, 1) in the state dtype (cached with the other tables)."""
        key = ("gamma", self.device, self.state_dtype)
        if key not in self._tables:
            log_decay, _ = self._decay_and_angles()
            self._tables[key] = torch.exp(log_decay)[:, None, None]
        return self._tables[key]

    def _pack(self, layers: list, position: Tensor, fingerprint: Any) -> RecurrentState:
        """Per-layer state dicts -> one :class:`RecurrentState` (S, z, named extras)."""
        s = [st["S"] for st in layers]
        z = [st["z"] for st in layers] if "z" in layers[0] else None
        names = [n for n in layers[0] if n not in ("S", "z")]
        extra = {n: [st[n] for st in layers] for n in names}
        return RecurrentState(s, z, position, fingerprint, extra)

    def num_parameters(self) -> int:
        """Distinct parameters (a tied head counts once)."""
        return sum(p.numel() for p in self.parameters())
