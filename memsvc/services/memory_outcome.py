"""Pure helpers of memory writes: the provenance each slot gets, what a write did, and
why memory is off (:func:`memory_off_reason`).

A write runs on the model thread, into a turn's (or a write's) bank views, tensors only.
What it did to memories is read off the layer's :class:`retnet_core.memory_write.WriteRecord`
list there (:func:`outcome_of`, pure) and noted on the views, so the one commit that
writes the slots also writes the memory row (or its ``merged`` event). The ids the commit
assigns come back with it (:meth:`PendingOutcome.slot_ids`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass
class ProvenanceBank:
    """A slot bank whose adds record a provenance (what the layer wrote): the memory,
    and each slot's own character span (``span_of`` maps a token span to it)."""

    bank: Any
    provenance: Any
    span_of: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bank, name)

    def __len__(self) -> int:
        return len(self.bank)

    def add(self, keys, values, gates):
        n = int(keys.shape[0])
        return self.bank.add_with_provenance(keys, values, gates, [self.provenance] * n)

    def add_spans(self, keys, values, gates, spans):
        if self.span_of is None:
            return self.add(keys, values, gates)
        provs = [replace(self.provenance, span=self.span_of(span)) for span in spans]
        return self.bank.add_with_provenance(keys, values, gates, provs)


def char_span_of(content_start: int, offsets: list[tuple[int, int]] | None, whole: Any):
    """token span [s, e) in prefill positions → the slot's character span in the source.

    The text's tokens start at ``content_start``, so token t is ``offsets[t -
    content_start]``. Without offsets (a tokenizer that gives none), or for a span
    outside the text, the memory's ``whole`` span.
    """

    def span_of(span: tuple[int, int]) -> tuple[int, int] | None:
        a, b = span[0] - content_start, span[1] - content_start - 1
        if offsets and whole is not None and 0 <= a <= b < len(offsets):
            return (whole[0] + offsets[a][0], whole[0] + offsets[b][1])
        return whole

    return span_of


@dataclass(frozen=True)
class WriteOutcome:
    """What a memory write did: ``stored`` (a new memory), ``merged`` (into ``memory``,
    a duplicate) or ``skipped`` (``reason``: e.g. the gate was below the threshold)."""

    status: str
    memory: Any
    slots_written: list[str]
    gate: float = 0.0
    reason: str | None = None


@dataclass(frozen=True)
class PendingOutcome:
    """:class:`WriteOutcome` before the commit: the views' ids of the appended slots per
    layer (``appended``), every written slot (blends too, ``written``), the memory id."""

    status: str
    memory_id: str | None
    appended: dict[int, list[int]]
    written: int
    gate: float
    reason: str | None = None

    def slot_ids(self, layers: list[int], stored: list[dict[int, int]]) -> list[str]:
        """The appended slots' stored ids; ``stored[n]`` maps layer ``layers[n]``'s view ids."""
        got = dict(zip(layers, stored, strict=True))
        return [str(got[layer].get(i, i)) for layer, ids in self.appended.items() for i in ids]


def outcome_of(records: dict[int, list[Any]], memory_id: str | None = None) -> PendingOutcome:
    """Pure: stored (slots appended), merged (only blends) or skipped, from each layer's
    write records. The gate is the appended slots' mean, else the highest seen."""
    appended = {
        layer: [int(i) for r in recs if r.op == "append" for i in r.slot_ids]
        for layer, recs in records.items()
    }
    appended = {layer: ids for layer, ids in appended.items() if ids}
    flat = [r for recs in records.values() for r in recs]
    written = sum(len(r.slot_ids) for r in flat if r.op != "skip")
    appends = [r for r in flat if r.op == "append"]
    if appends:
        gate = sum(r.gate for r in appends) / len(appends)
        return PendingOutcome("stored", memory_id, appended, written, gate)
    gate = max((r.gate for r in flat), default=0.0)
    if any(r.op == "blend" for r in flat):
        return PendingOutcome("merged", None, {}, written, gate, "similar to memory")
    return PendingOutcome("skipped", None, {}, written, gate, "gate below threshold")


def blended_slots(records: dict[int, list[Any]]) -> list[int]:
    """The (stored) slots the write blended into, every layer."""
    return sorted(
        {int(i) for recs in records.values() for r in recs if r.op == "blend" for i in r.slot_ids}
    )


NO_RETENTION_LAYER = (
    "memory is off: the model has no Retention Layer (memory slots), e.g. a converted base "
    "model. Train one on it with the memory stage of `memsvc distill` or `memsvc train`"
)
MEMORY_DISABLED = "memory is off by setting (MEMSVC_MEMORY_ENABLED=false)"


def memory_off_reason(memory: Any) -> str | None:
    """Why memory features are off (None when on); ``memory``: the service's
    ``MemoryManager``, or None when memory is disabled by setting."""
    if memory is None:
        return MEMORY_DISABLED
    return None if memory.enabled else NO_RETENTION_LAYER
