"""Inference-time writes into a :class:`~retnet_core.slots.SlotStore`.

Given slots already encoded by the memory layer (unit-norm key, value, gate), a write

1. applies external feedback to the gate (:func:`effective_gate`);
2. skips the slot when the gate is below the write threshold;
3. mode "blend": finds the nearest slots (inner product of unit keys = cosine); if
   any passes ``blend_threshold`` it blends into them, weights
   α_i = g · softmax_i(cos_i / τ) over the passing slots:
       k_i ← normalize((1 − α_i) k_i + α_i k),   v_i ← (1 − α_i) v_i + α_i v
   and otherwise appends — so a near-duplicate updates a slot instead of piling up;
4. mode "append" (or blend with nothing near): when the bank is at capacity, evicts
   by policy (:mod:`retnet_core.eviction`) first, then adds the slot.

Every span yields one :class:`WriteRecord`: what happened, to which slot ids, from
which token span, with which gate and which evictions — what storage persists as the
slot's provenance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from retnet_core.eviction import select_victims
from retnet_core.slots import SlotStore

BLEND_CANDIDATES = 4  # nearest slots considered for one blend write
BLEND_TEMPERATURE = 0.05  # τ: sharp, so the nearest passing slot takes most of α


class _WriteSettings(Protocol):
    write_mode: str
    capacity: int | None
    blend_threshold: float
    eviction: str
    write_threshold: float


@dataclass(frozen=True)
class Feedback:
    """External feedback on one span: remember forces a write, forget vetoes it,
    rating (≥ 0) multiplies the gate. forget wins over remember, remember over rating."""

    remember: bool = False
    forget: bool = False
    rating: float | None = None


@dataclass(frozen=True)
class WriteRecord:
    """Provenance of one span's write.

    op: 'append' (slot_ids = the new slot), 'blend' (slot_ids = the slots blended into,
    weights = their α), or 'skip' (nothing written, slot_ids empty). span: the half-open
    token span [start, end) that produced it. gate: after feedback; raw_gate: before.
    evicted: ids removed to make room for this append.
    """

    op: str
    slot_ids: tuple[int, ...]
    span: tuple[int, int]
    gate: float
    raw_gate: float
    evicted: tuple[int, ...] = ()
    weights: tuple[float, ...] = ()


def effective_gate(gate: float, feedback: Feedback | None) -> float:
    """Gate after feedback: forget → 0, remember → 1, rating r → clamp(g·r, 0, 1)."""
    if feedback is None:
        return gate
    if feedback.forget:
        return 0.0
    if feedback.remember:
        return 1.0
    if feedback.rating is not None:
        return min(max(gate * feedback.rating, 0.0), 1.0)
    return gate


def blend_weights(sims: Tensor, gate: float, threshold: float) -> Tensor:
    """α (M,) for candidate similarities sims (M,): g·softmax(cos/τ) over sims ≥ threshold,
    0 elsewhere."""
    passing = sims >= threshold
    logits = (sims / BLEND_TEMPERATURE).masked_fill(~passing, float("-inf"))
    w = torch.softmax(logits, dim=0).nan_to_num(0.0)
    return gate * w * passing


def _blend(bank: SlotStore, key: Tensor, value: Tensor, gate: float, threshold: float):
    """Blend into the nearest passing slots; returns (ids, α) or None when none passes."""
    _, ids = bank.search(key.unsqueeze(0), BLEND_CANDIDATES)
    ids = ids[0][ids[0] >= 0]
    if ids.numel() == 0:
        return None
    keys, values = bank.fetch(ids)
    alpha = blend_weights(keys @ key, gate, threshold)
    hit = alpha > 0
    if not bool(hit.any()):
        return None
    ids, keys, values, a = ids[hit], keys[hit], values[hit], alpha[hit].unsqueeze(1)
    new_keys = F.normalize((1 - a) * keys + a * key, dim=-1)
    bank.update(ids, new_keys, (1 - a) * values + a * value)
    return ids, a.squeeze(1)


def _add(bank: SlotStore, keys: Tensor, values: Tensor, gates: Tensor, spans: list) -> Tensor:
    """``bank.add``; a bank that records provenance (``add_spans``) also gets each slot's
    token span, so it can store where the slot came from in the same insert."""
    add_spans = getattr(bank, "add_spans", None)
    if add_spans is not None:
        return add_spans(keys, values, gates, spans)
    return bank.add(keys, values, gates)


def _append(
    bank: SlotStore, key: Tensor, value: Tensor, gate: float, policy: str, span: tuple = (0, 0)
):
    """Evict to make room when at capacity, then add; returns (new id, evicted ids)."""
    evicted = torch.empty(0, dtype=torch.int64)
    cap = bank.capacity
    if cap is not None and len(bank) >= cap:
        evicted = select_victims(policy, bank.stats(), len(bank) - cap + 1)
        bank.remove(evicted)
    new_id = _add(bank, key.unsqueeze(0), value.unsqueeze(0), torch.tensor([gate]), [span])
    return int(new_id[0]), evicted


def write_slots(
    bank: SlotStore,
    keys: Tensor,
    values: Tensor,
    gates: Tensor,
    spans: list[tuple[int, int]],
    feedback: list[Feedback | None],
    cfg: _WriteSettings,
) -> list[WriteRecord]:
    """Write S encoded slots in order. keys (S, d_k) unit norm, values (S, d_v), gates (S,).

    Sequential on purpose: a later span of the same call can blend into an earlier one.
    Appends into a bank without a capacity cannot interact, so they go in one ``add``
    (one storage transaction for a whole message of token slots).
    """
    if cfg.write_mode == "append" and bank.capacity is None:
        return _append_all(bank, keys, values, gates, spans, feedback, cfg.write_threshold)
    records = []
    for i, span in enumerate(spans):
        raw = float(gates[i])
        g = effective_gate(raw, feedback[i])
        if g <= 0.0 or g < cfg.write_threshold:
            records.append(WriteRecord("skip", (), span, g, raw))
            continue
        if cfg.write_mode == "blend" and len(bank) > 0:
            hit = _blend(bank, keys[i], values[i], g, cfg.blend_threshold)
            if hit is not None:
                ids, a = hit
                rec = WriteRecord("blend", tuple(ids.tolist()), span, g, raw, (), tuple(a.tolist()))
                records.append(rec)
                continue
        elif cfg.write_mode not in ("append", "blend"):
            raise ValueError(f"unknown write mode {cfg.write_mode!r}")
        new_id, evicted = _append(bank, keys[i], values[i], g, cfg.eviction, span)
        records.append(WriteRecord("append", (new_id,), span, g, raw, tuple(evicted.tolist())))
    return records


def _append_all(
    bank: SlotStore,
    keys: Tensor,
    values: Tensor,
    gates: Tensor,
    spans: list[tuple[int, int]],
    feedback: list[Feedback | None],
    threshold: float,
) -> list[WriteRecord]:
    """Every slot whose gate passes, in one ``bank.add``; the same records as one by one."""
    raw = [float(g) for g in gates]
    eff = [effective_gate(g, f) for g, f in zip(raw, feedback, strict=True)]
    keep = [i for i, g in enumerate(eff) if g > 0.0 and g >= threshold]
    ids: list[int] = []
    if keep:
        sel = torch.tensor(keep)
        kept = torch.tensor([eff[i] for i in keep])
        ids = _add(bank, keys[sel], values[sel], kept, [spans[i] for i in keep]).tolist()
    new_id = dict(zip(keep, ids, strict=True))
    return [
        WriteRecord("append", (new_id[i],), span, eff[i], raw[i])
        if i in new_id
        else WriteRecord("skip", (), span, eff[i], raw[i])
        for i, span in enumerate(spans)
    ]


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def forget_span(bank: SlotStore, records: list[WriteRecord], span: tuple[int, int]) -> Tensor:
    """Remove every live slot a write from a span overlapping ``span`` touched.

    A blended slot mixes several spans and cannot be unmixed, so it goes entirely.
    Returns the removed ids (M,).
    """
    wanted = {i for r in records if _overlaps(r.span, span) for i in r.slot_ids}
    live = bank.stats().ids
    ids = live[torch.isin(live, torch.tensor(sorted(wanted), dtype=torch.int64))]
    bank.remove(ids)
    return ids
