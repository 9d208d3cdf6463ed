"""Memories re-encoded for the serving model (``memsvc reindex``, and at start).

Slots are keys k ∈ R^{d_key} and values v ∈ R^{d_value} that one model's Retention
Layer wrote from its own hidden states; another model (another checkpoint, or the same
one with other weights: the fingerprint changes) cannot read them. Each slot bank
records the fingerprint of the model that wrote it. When the serving model differs (or
the bank's dims do), every memory of that namespace is written again from its
provenance text, through the memory write path of an explicit write:

    hidden = prefill(<|user|> text <|end|>)      (the engine, from no state)
    slots  = layer.write(hidden[span])           (every memory layer; forced past the gate)

The memory keeps its id, collection/key, text or message reference and history; its old
slots are evicted first (one ``evicted`` event, cause ``reindex``) and its bank rows
recreated with the new model's dims. What a chat turn's write saw around the message
(the earlier conversation) is not replayed: the text is encoded on its own.

A model without a Retention Layer (or memory off) reindexes nothing; the memories and
their old slots stay stored for a model that can read them.

Run it with no other process writing memories (``serve`` does it before taking
requests): replicas still serving the old model would write into banks being rebuilt.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from memsvc.services.memory_outcome import outcome_of
from memsvc.store import SlotProvenance, Store
from memsvc.threads import run_in_threadpool

log = logging.getLogger("memsvc.services.reindex")

#: the fingerprint prefix of banks a running reindex recreated (not yet finished)
PENDING = "pending:"

#: progress callback: (memories done, memories in all)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ReindexReport:
    """What a reindex did: namespaces and memories re-encoded, slots evicted/written."""

    fingerprint: str
    namespaces: int = 0
    memories: int = 0
    slots_evicted: int = 0
    slots_written: int = 0
    skipped: str | None = None  # why nothing was done (memory off), else None


def split_namespace(namespace: str) -> tuple[str, str]:
    """``"user:alice"`` → ``("user", "alice")`` (the id may contain ':')."""
    scope, _, ident = namespace.partition(":")
    return scope, ident


class Reindexer:
    """Finds the namespaces another model wrote and re-encodes their memories."""

    def __init__(self, store: Store, memory: object) -> None:
        self.store, self.memory = store, memory

    @property
    def enabled(self) -> bool:
        return self.memory is not None and bool(getattr(self.memory, "enabled", False))

    @property
    def fingerprint(self) -> str:
        return str(self.memory.runtime.fingerprint) if self.memory is not None else ""

    def stale(self, adopt: bool = True) -> list[tuple[str, str]]:
        """Thread pool: (tenant, namespace) pairs to re-encode; with ``adopt``, banks
        without a fingerprint and with this model's dims are stamped as this model's."""
        if not self.enabled:
            return []
        d_key, d_value, _ = self.memory.dims
        self.store.set_slot_model(self.fingerprint)
        if adopt:
            self.store.adopt_slot_banks(self.fingerprint, d_key, d_value)
        return self.store.stale_slot_namespaces(self.fingerprint, d_key, d_value)

    async def run(
        self, namespaces: list[tuple[str, str]] | None = None, progress: Progress | None = None
    ) -> ReindexReport:
        """Re-encode ``namespaces`` (default: the stale ones)."""
        if not self.enabled:
            return ReindexReport(self.fingerprint, skipped="the model has no memory layers")
        if namespaces is None:
            namespaces = await run_in_threadpool(self.stale)
        plan = []
        for tenant_id, ns in namespaces:
            mems = await run_in_threadpool(self.store.namespace_memories, tenant_id, ns)
            plan.append((tenant_id, ns, mems))
        total = sum(len(m) for *_, m in plan)
        done = evicted = written = 0
        # banks recreated meanwhile are stamped "pending": a reindex cut short (a crash)
        # leaves them stale, so the next start does that namespace again
        self.store.set_slot_model(PENDING + self.fingerprint)
        try:
            for tenant_id, ns, mems in plan:
                evicted += await run_in_threadpool(self.store.reset_slot_namespace, tenant_id, ns)
                for m in mems:
                    written += await self._reencode(tenant_id, ns, m)
                    done += 1
                    if progress is not None:
                        progress(done, total)
                await run_in_threadpool(
                    self.store.finish_slot_namespace, tenant_id, ns, self.fingerprint
                )
        finally:
            self.store.set_slot_model(self.fingerprint)
        return ReindexReport(self.fingerprint, len(plan), total, evicted, written)

    async def _reencode(self, tenant_id: str, namespace: str, m) -> int:
        """One memory's text written again as its slots (engine prefill, tensors on the
        thread pool, one commit); returns the slots written."""
        if not m.text:
            return 0
        mem = self.memory
        ns = split_namespace(namespace)
        views = await run_in_threadpool(self.store.bank_views, tenant_id, ns, mem.layers, mem.dims)
        message_id = None if m.message_id is None else int(m.message_id)
        prov = SlotProvenance(m.session_id, message_id, tuple(m.span), m.id)
        hidden, span = await mem._encode(m.text)  # the engine: model thread
        records = await run_in_threadpool(
            mem._write, views, hidden, span, prov, {"remember": True}, m.text
        )
        await run_in_threadpool(self.store.commit_slots, [v.changes() for v in views.values()])
        return outcome_of(records).written


async def reindex_at_start(reindexer: Reindexer) -> ReindexReport | None:
    """Re-encode the memories another model wrote, before the service takes requests
    (logged); None when nothing is stale."""
    stale = await run_in_threadpool(reindexer.stale)
    if not stale:
        return None
    log.warning(
        "memory slots of %d namespace(s) were written by another model: re-encoding them for %s",
        len(stale),
        reindexer.fingerprint,
    )
    report = await reindexer.run(stale)
    log.warning(
        "reindexed %d memories in %d namespace(s): %d slots evicted, %d written",
        report.memories,
        report.namespaces,
        report.slots_evicted,
        report.slots_written,
    )
    return report
