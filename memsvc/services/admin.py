"""Admin manager: memory slots (list, detail, delete, evict), stats, reindex, sessions,
tenant usage.

Admin calls cross tenants on purpose; they are reachable only with the admin key.
"""

from __future__ import annotations

from typing import Any

from memsvc.errors import Unprocessable
from memsvc.metrics import Metrics
from memsvc.records import (
    AdminSessionList,
    AdminSessionOut,
    EvictIn,
    EvictOut,
    ReindexOut,
    SlotList,
    SlotOut,
    StatsOut,
)
from memsvc.records_usage import LimitsOut, StoredBytes, UsageOut
from memsvc.services.sessions import session_out
from memsvc.store import SessionRec, SlotFilter, SlotRec, Store, UsageRec
from memsvc.threads import run_in_threadpool


def slot_out(s: SlotRec) -> SlotOut:
    return SlotOut(
        id=s.id,
        tenant_id=s.tenant_id,
        user_id=s.user_id,
        session_id=s.session_id,
        message_id=s.message_id,
        scope=s.scope,
        layer=s.layer,
        gate=s.gate,
        reads=s.reads,
        created_at=s.created_at,
        last_read_at=s.last_read_at,
        text=s.text,
        span=s.span,
    )


def admin_session_out(s: SessionRec) -> AdminSessionOut:
    return AdminSessionOut(tenant_id=s.tenant_id, **session_out(s).model_dump())


def limits_out(settings: Any) -> LimitsOut:
    """The configured limits, 0 shown as None (both mean unlimited)."""
    return LimitsOut(
        requests_per_minute=settings.limit_requests_per_minute or None,
        concurrent_turns=settings.limit_concurrent_turns or None,
        memories_per_user=settings.limit_memories_per_user or None,
    )


def usage_out(u: UsageRec, limits: LimitsOut) -> UsageOut:
    return UsageOut(
        tenant_id=u.tenant_id,
        sessions=u.sessions,
        turns=u.turns,
        messages=u.messages,
        tokens_in=u.tokens_in,
        tokens_out=u.tokens_out,
        memories=u.memories,
        slots=u.slots,
        documents=u.documents,
        passages=u.passages,
        stored_bytes=StoredBytes(**u.stored_bytes),
        limits=limits,
    )


class AdminManager:
    """Operator operations over the store (evictions reach every open index via storage)."""

    def __init__(
        self, store: Store, metrics: Metrics, settings: Any = None, snapshots: Any = None
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.snapshots = snapshots  # the in-process snapshot cache (its size in stats)

    async def list_slots(self, f: SlotFilter) -> SlotList:
        recs = await run_in_threadpool(self.store.list_slots, f)
        return SlotList(data=[slot_out(s) for s in recs])

    async def get_slot(self, slot_id: str) -> SlotOut:
        return slot_out(await run_in_threadpool(self.store.get_slot, slot_id))

    async def delete_slot(self, slot_id: str) -> None:
        await run_in_threadpool(self.store.delete_slot, slot_id)

    async def evict(self, body: EvictIn) -> EvictOut:
        """Evict by filter; an empty filter would wipe everything and is refused (422)."""
        if not body.model_dump(exclude_none=True):
            raise Unprocessable("give at least one filter (tenant, user, session, layer, ...)")
        f = SlotFilter(
            tenant_id=body.tenant_id,
            user_id=body.user_id,
            session_id=body.session_id,
            layer=body.layer,
            max_gate=body.max_gate,
            max_reads=body.max_reads,
            older_than_s=body.older_than_s,
            limit=1_000_000,
        )
        ids = await run_in_threadpool(self.store.evict_slots, f)
        return EvictOut(evicted=len(ids), ids=ids)

    async def stats(self) -> StatsOut:
        data = await run_in_threadpool(self.store.stats)
        hits = self.metrics.value("memsvc_snapshot_lookups_total", result="hit")
        misses = self.metrics.value("memsvc_snapshot_lookups_total", result="miss")
        data["snapshot_cache"] = {
            "hits": hits,
            "misses": misses,
            "hit_rate": hits / (hits + misses) if hits + misses else None,
        }
        if self.snapshots is not None:
            data["snapshot_cache"].update(
                entries=len(self.snapshots),
                bytes=self.snapshots.nbytes,
                max_bytes=self.snapshots.max_bytes,
            )
        return StatsOut(data=data)

    async def reindex(self) -> ReindexOut:
        return ReindexOut(data=await run_in_threadpool(self.store.reindex))

    async def usage(self, tenant_id: str) -> UsageOut:
        """The tenant's usage from SQL (404 when unknown); refreshes its gauges."""
        u = await run_in_threadpool(self.store.tenant_usage, tenant_id)
        self.metrics.tenant_memories.labels(tenant_id).set(u.memories)
        self.metrics.tenant_stored_bytes.labels(tenant_id).set(u.stored_bytes["total"])
        return usage_out(u, limits_out(self.settings))

    async def sessions(self, tenant_id: str | None, user_id: str | None, limit: int):
        recs = await run_in_threadpool(self.store.list_sessions, tenant_id, user_id, limit)
        return AdminSessionList(data=[admin_session_out(s) for s in recs])

    async def session(self, session_id: str) -> AdminSessionOut:
        return admin_session_out(await run_in_threadpool(self.store.get_session, None, session_id))
