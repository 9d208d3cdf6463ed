"""Admin manager: memory slots (list, detail, delete, evict), stats, reindex, sessions.

Admin calls cross tenants on purpose; they are reachable only with the admin key.
"""

from __future__ import annotations

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
from memsvc.services.sessions import session_out
from memsvc.store import SessionRec, SlotFilter, SlotRec, Store
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


class AdminManager:
    """Operator operations over the store (evictions reach every open index via storage)."""

    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics

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
        return StatsOut(data=data)

    async def reindex(self) -> ReindexOut:
        return ReindexOut(data=await run_in_threadpool(self.store.reindex))

    async def sessions(self, tenant_id: str | None, user_id: str | None, limit: int):
        recs = await run_in_threadpool(self.store.list_sessions, tenant_id, user_id, limit)
        return AdminSessionList(data=[admin_session_out(s) for s in recs])

    async def session(self, session_id: str) -> AdminSessionOut:
        return admin_session_out(await run_in_threadpool(self.store.get_session, None, session_id))
