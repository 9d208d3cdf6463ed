"""A bank that records provenance (``add_spans``) is told each new slot's span, in the
order of its ids, on the one-add path and on the sequential (capacity) path."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from retnet_core.memory_write import write_slots
from retnet_core.slots import ExactSlotStore


class SpanBank(ExactSlotStore):
    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.spans: dict[int, tuple[int, int]] = {}

    def add_spans(self, keys, values, gates, spans):
        ids = self.add(keys, values, gates)
        assert len(spans) == len(ids)
        self.spans.update(zip(ids.tolist(), spans, strict=True))
        return ids


@pytest.mark.parametrize("capacity", [None, 8])
def test_new_slots_get_their_own_spans(capacity: int | None) -> None:
    torch.manual_seed(0)
    n = 6
    keys = torch.nn.functional.normalize(torch.randn(n, 4), dim=1)
    gates = torch.tensor([0.9, 0.1, 0.8, 0.05, 0.7, 0.95])  # two fall below 0.5
    spans = [(t, t + 1) for t in range(10, 10 + n)]
    cfg = SimpleNamespace(
        write_mode="append",
        capacity=capacity,
        blend_threshold=0.9,
        eviction="lru",
        write_threshold=0.5,
    )
    bank = SpanBank(4, 2, capacity)
    records = write_slots(bank, keys, torch.zeros(n, 2), gates, spans, [None] * n, cfg)
    kept = {r.slot_ids[0]: r.span for r in records if r.op == "append"}
    assert len(kept) == 4 and bank.spans == kept
    assert sorted(kept.values()) == [(10, 11), (12, 13), (14, 15), (15, 16)]
