"""The Retention Layer: memory slots read with attention and written through a gate.

Yaslioglu 2025 (arXiv 2501.09166), adapted to a RetNet block:

    X̃ = X + Z + R,    R = W_O · softmax(q Kᵀ / √d_k) V          (read, per token)

where q = W_Q h_t and the rows of K, V are memory slots plus one learned "no slot"
entry (key k_∅, value exactly 0), so a token can attend to nothing and an empty bank
contributes exactly zero (W_O has no bias).

A write compresses a token span h_{s:e} (attention pooling, two learned pooling
queries: one for what the slot is *about*, one for what it *says*) into

    key   = normalize(W_K u_key)    (unit norm: inner product = cosine, so FAISS
                                     inner-product search and the blend threshold agree)
    value = W_V u_val
    gate  = σ(w_g · [u_key; u_val] + b_g)

With ``unit="token"`` a span [s, e) is written as e − s slots, one per token t, with

    key_t = normalize(W_K h_t),   value_t = W_V h_{t+1},   gate_t = σ(w_g · [h_t; h_{t+1}] + b_g)

(h_e is the token after the span, e.g. ``<|end|>``): a slot says what came *next* in a
context like t's, so a query whose context matches t's continues the stored text one
token at a time. That is an induction head whose other half lives in the bank: exact
recall of a multi-token name needs no decoder of a compressed vector.

With ``copy`` a token slot also stores the id of the token after t (as the last column
of its value), and the layer hands its read attention a_n to the model's head, which
mixes a copy distribution into the next-token distribution (a pointer-generator):

    p(y) = (1 − λ Σ_n a_n) softmax(z)_y + λ Σ_n a_n [id_n = y],   λ = σ(w_λ · h_t + b_λ)

so a read that finds the right slot emits its token directly — no layer above has to
learn to decode it — and the "no slot" share falls back to the language model.

Two paths share the parameters:

- training (differentiable): slots live in a :class:`TensorBank` built in the same
  graph; the gate enters the read as a log-prior, softmax(q Kᵀ/√d_k + log g), so a
  slot with g → 0 is absent and gradients reach the gate, the pooling and the
  projections from the answer a later session gives;
- inference: slots live in any :class:`~retnet_core.slots.SlotStore`; the read is
  exact over ``bank.all()`` or top-k through ``bank.search``; writes with g below
  ``write_threshold`` are skipped (see :mod:`retnet_core.memory_write`).

Known gap (docs/experiments, ``drift``): training's soft gate (log g in the logits) and
inference's hard threshold disagree for 0 < g < 0.5 — a gate trained only from the task
loss plus a write cost learns g ≈ 0.3 for useful slots that inference then drops. A gate
trained with feedback labels does not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from retnet_core.memory_ops import copy_mix, memory_attention, token_span_mask, token_spans
from retnet_core.memory_write import Feedback, WriteRecord, forget_span, write_slots
from retnet_core.slots import SlotStore

__all__ = [
    "Feedback",
    "MemoryConfig",
    "MemoryLayer",
    "TensorBank",
    "WriteRecord",
    "copy_mix",
    "forget_span",
    "memory_attention",
    "token_span_mask",
    "token_spans",
]


@dataclass(frozen=True)
class MemoryConfig:
    """Settings of one memory layer; :meth:`from_model` reads them off a model config.

    top_k: 0 reads every slot exactly; k > 0 reads the top-k of ``bank.search`` when
    the bank has more than k slots. touch_threshold: a read counts for a slot (bank
    ``touch``) when it gets at least this much attention at some token.
    """

    d_model: int
    d_key: int = 64
    d_value: int = 64
    top_k: int = 0
    write_mode: str = "append"  # "append" | "blend"
    capacity: int | None = None
    blend_threshold: float = 0.9
    eviction: str = "lru"  # "lru" | "lfu" | "utility"
    write_threshold: float = 0.5
    touch_threshold: float = 0.05
    use_gate: bool = True
    pool: str = "attention"  # "attention" | "mean" (the paper's u = mean(X), an ablation)
    unit: str = "span"  # "span": one slot per span | "token": one slot per token of it
    read_scale: float | None = None  # None: q·k/√d_k; s: s·cos(q, k) (sharp reads at once)
    value: str = "hidden"  # unit="token": the next token's "hidden" state or "embedding"
    copy: bool = False  # unit="token": slots also hold the next token's id; reads copy it

    @property
    def stored_value_dim(self) -> int:
        """Width of a stored value: d_value, plus one column for the id when copying."""
        return self.d_value + int(self.copy)

    @classmethod
    def from_model(cls, config: object) -> MemoryConfig:
        """Read ``d_model`` and ``memory_*`` fields off a RetNetConfig-like object."""
        d_key = int(getattr(config, "memory_d_key", 64))
        return cls(
            d_model=int(config.d_model),  # type: ignore[attr-defined]
            d_key=d_key,
            d_value=int(getattr(config, "memory_d_value", d_key)),
            top_k=int(getattr(config, "memory_top_k", 0) or 0),
            write_mode=str(getattr(config, "memory_write_mode", "append")),
            capacity=getattr(config, "memory_capacity", None),
            blend_threshold=float(getattr(config, "memory_blend_threshold", 0.9)),
            eviction=str(getattr(config, "memory_eviction", "lru")),
            write_threshold=float(getattr(config, "memory_write_threshold", 0.5)),
            touch_threshold=float(getattr(config, "memory_touch_threshold", 0.05)),
            use_gate=bool(getattr(config, "memory_gate", True)),
            pool=str(getattr(config, "memory_pool", "attention")),
            unit=str(getattr(config, "memory_unit", "span")),
            read_scale=getattr(config, "memory_read_scale", None),
            value=str(getattr(config, "memory_value", "hidden")),
            copy=bool(getattr(config, "memory_copy", False)),
        )


@dataclass
class TensorBank:
    """Slots as tensors in the autograd graph: the training path of the layer.

    keys (B, N, d_k), values (B, N, d_v), log_gate (B, N) added to the read logits,
    mask (B, N) bool (False = padding). ``write_spans`` (B, S, T) bool, when set,
    asks the next :meth:`MemoryLayer.forward` to write one slot per span of its input
    into this bank (after reading it), so a session's writes reach a later session
    without leaving the graph. ``reads``, when a list, collects the attention of every
    read (what a forget request points at is trained from it).
    """

    keys: Tensor
    values: Tensor
    log_gate: Tensor
    mask: Tensor
    write_spans: Tensor | None = None
    written: list[Tensor] = field(default_factory=list)  # gates (B, S) of each write
    reads: list[Tensor] | None = None  # when a list: each read appends its probs (B, T, N)

    @classmethod
    def empty(cls, batch: int, d_key: int, d_value: int, device=None) -> TensorBank:
        z = torch.zeros(batch, 0, device=device)
        return cls(
            keys=torch.zeros(batch, 0, d_key, device=device),
            values=torch.zeros(batch, 0, d_value, device=device),
            log_gate=z,
            mask=z.bool(),
        )

    def __len__(self) -> int:
        return int(self.keys.shape[1])

    def append(self, keys: Tensor, values: Tensor, log_gate: Tensor, mask: Tensor) -> None:
        """Add S slots per row: keys (B, S, d_k), values (B, S, d_v), log_gate/mask (B, S)."""
        self.keys = torch.cat([self.keys, keys], dim=1)
        self.values = torch.cat([self.values, values], dim=1)
        self.log_gate = torch.cat([self.log_gate, log_gate], dim=1)
        self.mask = torch.cat([self.mask, mask], dim=1)


class MemoryLayer(nn.Module):
    """Read from and write to a bank of memory slots; see the module docstring.

    ``forward(h (B, T, d_model), bank) -> r (B, T, d_model)``, added to the residual.
    ``bank`` is None, a :class:`TensorBank` (training) or a ``SlotStore`` (inference).
    """

    def __init__(self, config: object) -> None:
        super().__init__()
        c = config if isinstance(config, MemoryConfig) else MemoryConfig.from_model(config)
        self.cfg = c
        self.q_proj = nn.Linear(c.d_model, c.d_key, bias=False)
        self.k_proj = nn.Linear(c.d_model, c.d_key, bias=False)
        self.v_proj = nn.Linear(c.d_model, c.d_value, bias=False)
        self.o_proj = nn.Linear(c.d_value, c.d_model, bias=False)
        self.null_key = nn.Parameter(torch.zeros(c.d_key))
        self.pool_norm = nn.LayerNorm(c.d_model)
        self.pool = nn.Linear(c.d_model, 2)  # logits of the key and value pooling queries
        self.gate = nn.Linear(2 * c.d_model, 1)
        nn.init.constant_(self.gate.bias, 2.0)  # start open (σ(2) ≈ 0.88): write, then learn
        self._copies: list | None = None  # where a forward's copy reads go (see forward)
        if c.copy:
            if c.unit != "token":
                raise ValueError("memory copy needs token slots (memory_unit='token')")
            self.copy_gate = nn.Linear(c.d_model, 1)  # λ: how much of a read to copy

    def query(self, h: Tensor) -> Tensor:
        """Read queries q (…, d_k) = W_Q h; with ``read_scale`` s, √d_k · s · q/|q|, so
        the read logits are s · cos(q, k) (keys are unit norm).

        Why: a token-slot read must pick one slot of many, and a dot product only gets
        that sharp once |W_Q h| has grown — slowly, on a small budget. A fixed s gives
        sharp reads from the first step, and adds no weights.
        """
        q = self.q_proj(h)
        if self.cfg.read_scale is None:
            return q
        return F.normalize(q, dim=-1) * (self.cfg.read_scale * math.sqrt(q.shape[-1]))

    # ---- write side: span -> (key, value, gate) ------------------------------------
    def encode(
        self,
        h: Tensor,
        spans: Tensor,
        embeds: Tensor | None = None,
        tokens: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Compress spans of h into slots. h (B, T, d), spans (B, S, T) bool.

        Returns keys (B, S, d_k) unit norm, values (B, S, d_v), gate logits (B, S).
        Pooling: a_{s,t}^j = softmax_t over the span of w_j·LN(h_t), u_s^j = Σ_t a h_t
        (pool="mean": a uniform over the span, the paper's u = mean(X)). With
        unit="token" every span is one position t (see :func:`token_spans`) and
        u_key = h_t, u_val = h_{t+1} — or e_{t+1}, the next token's embedding
        (``embeds`` (B, T, d_model)), with value="embedding"; with ``copy`` the value
        ends with the id of token t + 1 (``tokens`` (B, T)).
        """
        if self.cfg.unit == "token":
            return self._encode_tokens(h, spans, embeds, tokens)
        logits = self.pool(self.pool_norm(h)).transpose(1, 2)  # (B, 2, T)
        if self.cfg.pool == "mean":
            logits = torch.zeros_like(logits)  # uniform weights: u = mean of the span
        logits = logits.unsqueeze(2).expand(-1, -1, spans.shape[1], -1)  # (B, 2, S, T)
        logits = logits.masked_fill(~spans.unsqueeze(1), float("-inf"))
        weights = torch.softmax(logits, dim=-1).nan_to_num(0.0)  # empty span -> zeros
        u = torch.einsum("bjst,btd->bjsd", weights, h)  # (B, 2, S, d)
        keys = F.normalize(self.k_proj(u[:, 0]), dim=-1)
        values = self.v_proj(u[:, 1])
        gate_logit = self.gate(torch.cat([u[:, 0], u[:, 1]], dim=-1)).squeeze(-1)
        if not self.cfg.use_gate:
            gate_logit = torch.full_like(gate_logit, 30.0)  # σ = 1: everything is written
        return keys, values, gate_logit

    def _encode_tokens(
        self, h: Tensor, spans: Tensor, embeds: Tensor | None, tokens: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """unit="token": spans (B, S, T) mark one position t each; value from h_{t+1}
        (value="hidden") or from the embedding e_{t+1} (value="embedding")."""
        after = torch.zeros_like(spans)
        after[..., 1:] = spans[..., :-1]  # the position right after each marked token
        source = h
        if self.cfg.value == "embedding":
            if embeds is None:
                raise ValueError("value='embedding' token slots need the embedded tokens")
            source = embeds.to(h.dtype)
        u_key = torch.einsum("bst,btd->bsd", spans.to(h.dtype), h)
        u_val = torch.einsum("bst,btd->bsd", after.to(h.dtype), source)
        keys = F.normalize(self.k_proj(u_key), dim=-1)
        gate_logit = self.gate(torch.cat([u_key, u_val], dim=-1)).squeeze(-1)
        if not self.cfg.use_gate:
            gate_logit = torch.full_like(gate_logit, 30.0)
        values = self.v_proj(u_val)
        if self.cfg.copy:
            if tokens is None:
                raise ValueError("copying token slots need the token ids")
            ids = torch.einsum("bst,bt->bs", after.to(torch.float64), tokens.to(torch.float64))
            values = torch.cat([values, ids.to(values.dtype).unsqueeze(-1)], dim=-1)
        return keys, values, gate_logit

    def write_tensors(
        self,
        bank: TensorBank,
        h: Tensor,
        spans: Tensor,
        embeds: Tensor | None = None,
        tokens: Tensor | None = None,
    ) -> Tensor:
        """Differentiable write of one slot per span into ``bank``; returns gates (B, S)."""
        keys, values, gate_logit = self.encode(h, spans, embeds, tokens)
        present = spans.any(dim=-1)
        bank.append(keys, values, F.logsigmoid(gate_logit), present)
        gates = torch.sigmoid(gate_logit)
        bank.written.append(gates)
        return gates

    @torch.no_grad()
    def write(
        self,
        bank: SlotStore,
        h: Tensor,
        spans: list[tuple[int, int]],
        feedback: list[Feedback | None] | None = None,
        offset: int = 0,
        embeds: Tensor | None = None,
        tokens: Tensor | None = None,
    ) -> list[WriteRecord]:
        """Write one slot per half-open span [s, e) of h (T, d) or (1, T, d) into ``bank``.

        Feedback (one per span) can force, scale or veto the gate; ``offset`` shifts the
        recorded spans to absolute token positions of the session. Returns one
        :class:`WriteRecord` per span (op 'append', 'blend' or 'skip').
        """
        h = h.reshape(1, -1, h.shape[-1])
        if self.cfg.unit == "token":  # one slot per token; feedback applies to each
            fb = feedback or [None] * len(spans)
            feedback = [f for (s, e), f in zip(spans, fb, strict=True) for _ in range(s, e)]
            spans = token_spans(spans)
            if spans and spans[-1][1] >= h.shape[1]:
                raise ValueError("unit='token' needs the token after each span in h")
        if not spans:
            return []
        mask = torch.zeros(1, len(spans), h.shape[1], dtype=torch.bool, device=h.device)
        for i, (s, e) in enumerate(spans):
            mask[0, i, s:e] = True
        if embeds is not None:
            embeds = embeds.reshape(1, -1, embeds.shape[-1])
        if tokens is not None:
            tokens = torch.as_tensor(tokens, device=h.device).reshape(1, -1)
        keys, values, gate_logit = self.encode(h, mask, embeds, tokens)
        return write_slots(
            bank,
            keys[0].float().cpu(),
            values[0].float().cpu(),
            torch.sigmoid(gate_logit[0]).float().cpu(),
            [(s + offset, e + offset) for s, e in spans],
            feedback or [None] * len(spans),
            self.cfg,
        )

    # ---- read side -----------------------------------------------------------------
    def forward(
        self,
        h: Tensor,
        bank: TensorBank | SlotStore | None,
        embeds: Tensor | None = None,
        tokens: Tensor | None = None,
        copies: list | None = None,
    ) -> Tensor:
        """r (B, T, d_model) = W_O · read(h, bank); exactly zero for None or empty banks.

        ``embeds`` (B, T, d_model) and ``tokens`` (B, T): the call's embedded tokens and
        ids, for writes of token slots. With ``copy``, each read appends
        (probs (B, T, N), ids (B, T, N), λ (B, T, 1)) to ``copies`` for the head."""
        self._copies = copies
        if isinstance(bank, TensorBank):
            r = self.read_tensors(h, bank)
            if bank.write_spans is not None:
                self.write_tensors(bank, h, bank.write_spans, embeds, tokens)
            return r
        if bank is None or len(bank) == 0:
            return torch.zeros_like(h)
        k = self.cfg.top_k
        return self.read_topk(h, bank, k) if 0 < k < len(bank) else self.read_exact(h, bank)

    def _read_out(self, h: Tensor, out: Tensor, probs: Tensor, values: Tensor) -> Tensor:
        """W_O of the read; with ``copy`` the id column is split off and handed on.

        values (B, N, d) or (B·T, k, d) aligned with probs (B, T, N) / (B·T, 1, k)."""
        if not self.cfg.copy:
            return self.o_proj(out)
        ids = values[..., -1].round().long()
        b, t = h.shape[:2]
        probs = probs.reshape(b, t, -1)
        ids = ids.reshape(b, -1, ids.shape[-1]).expand(b, t, -1) if ids.dim() == 2 else ids
        if self._copies is not None:
            lam = torch.sigmoid(self.copy_gate(h))
            self._copies.append((probs, ids.reshape(b, t, -1), lam))
        return self.o_proj(out[..., :-1])

    def read_tensors(self, h: Tensor, bank: TensorBank) -> Tensor:
        """Differentiable exact read of a TensorBank; h (B, T, d) -> (B, T, d)."""
        if len(bank) == 0:
            return torch.zeros_like(h)
        bias = bank.log_gate.masked_fill(~bank.mask, float("-inf"))
        out, probs = memory_attention(self.query(h), bank.keys, bank.values, self.null_key, bias)
        if bank.reads is not None:
            bank.reads.append(probs)
        return self._read_out(h, out, probs, bank.values)

    @torch.no_grad()
    def read_probs(self, h: Tensor, keys: Tensor) -> Tensor:
        """How much each token reads each slot: h (T, d), keys (N, d_k) -> probs (T, N).

        The exact read's attention (:func:`memory_attention`); the "no slot" entry takes
        1 − Σ_n p_n. A forget request removes the slot its last token reads most.
        """
        q = self.query(h.reshape(1, -1, h.shape[-1]))
        k = keys.to(q).unsqueeze(0)
        _, probs = memory_attention(q, k, k.new_zeros(k.shape[:2] + (1,)), self.null_key)
        return probs[0]

    def read_exact(self, h: Tensor, bank: SlotStore) -> Tensor:
        """Exact read over every slot of ``bank``; h (B, T, d) -> (B, T, d)."""
        ids, keys, values = bank.all()
        b = h.shape[0]
        keys = keys.to(h).unsqueeze(0).expand(b, -1, -1)
        values = values.to(h).unsqueeze(0).expand(b, -1, -1)
        out, probs = memory_attention(self.query(h), keys, values, self.null_key)
        self._touch(bank, ids.unsqueeze(0).expand(b, -1).unsqueeze(1), probs)
        return self._read_out(h, out, probs, values)

    def read_topk(self, h: Tensor, bank: SlotStore, k: int) -> Tensor:
        """Read the top-k slots per token from ``bank.search``; h (B, T, d) -> (B, T, d).

        Logits are recomputed from the fetched keys (an approximate index may return
        approximate scores); padding ids (-1) are masked out.
        """
        b, t, _ = h.shape
        q = self.query(h).reshape(b * t, 1, -1)  # each token is its own "batch" row
        _, ids = bank.search(q.reshape(b * t, -1).detach().float().cpu(), k)  # (BT, k)
        valid = ids >= 0
        if not valid.any():
            return torch.zeros_like(h)
        uniq, inverse = torch.unique(ids[valid], return_inverse=True)
        k_u, v_u = bank.fetch(uniq)
        dev_valid = valid.to(h.device)
        keys = h.new_zeros(b * t, k, k_u.shape[-1])
        values = h.new_zeros(b * t, k, v_u.shape[-1])
        keys[dev_valid] = k_u.to(h)[inverse.to(h.device)]
        values[dev_valid] = v_u.to(h)[inverse.to(h.device)]
        bias = torch.zeros(b * t, k, dtype=h.dtype, device=h.device)
        bias = bias.masked_fill(~dev_valid, float("-inf"))
        out, probs = memory_attention(q, keys, values, self.null_key, bias)
        self._touch(bank, ids.unsqueeze(1), probs)
        return self._read_out(h, out.reshape(b, t, -1), probs, values)

    def _touch(self, bank: SlotStore, ids: Tensor, probs: Tensor) -> None:
        """Count a read for every slot with ≥ touch_threshold attention at some token.

        ids (B, 1, N) or (B, T, N) aligned with probs (B, T, N). Skipped in training:
        gradient steps are not reads of the memory.
        """
        if self.training:
            return
        hit = (probs.detach() >= self.cfg.touch_threshold).cpu()
        ids = ids.expand_as(hit)
        got = torch.unique(ids[hit & (ids >= 0)])
        if got.numel():
            bank.touch(got)

    def forget(self, bank: SlotStore, records: list[WriteRecord], span: tuple[int, int]) -> Tensor:
        """Remove every live slot whose provenance overlaps ``span``; returns their ids."""
        return forget_span(bank, records, span)
