"""Operator API (``Authorization: Bearer <admin key>``): memory slots, stats, sessions."""

from __future__ import annotations

from fastapi import APIRouter, Path, Query

from memsvc.api.deps import Admin, Svc
from memsvc.records import (
    AdminSessionList,
    AdminSessionOut,
    Count,
    EvictIn,
    EvictOut,
    FilterId,
    Fraction,
    ReindexOut,
    Seconds,
    SlotList,
    SlotOut,
    StatsOut,
)
from memsvc.records_usage import UsageOut
from memsvc.store import SlotFilter

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Admin])


@router.get("/memory/slots", response_model=SlotList)
async def list_slots(
    services: Svc,
    tenant_id: FilterId | None = None,
    user_id: FilterId | None = None,
    session_id: FilterId | None = None,
    layer: Count | None = None,
    min_gate: Fraction | None = None,
    max_gate: Fraction | None = None,
    min_reads: Count | None = None,
    max_reads: Count | None = None,
    older_than_s: Seconds | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
) -> SlotList:
    """Slots matching every given filter (provenance included)."""
    f = SlotFilter(
        tenant_id,
        user_id,
        session_id,
        layer,
        min_gate,
        max_gate,
        min_reads,
        max_reads,
        older_than_s,
        limit,
    )
    return await services.admin.list_slots(f)


@router.get("/memory/slots/{slot_id}", response_model=SlotOut)
async def get_slot(slot_id: str, services: Svc) -> SlotOut:
    """One slot: provenance text and span, gate score, reads."""
    return await services.admin.get_slot(slot_id)


@router.delete("/memory/slots/{slot_id}", status_code=204)
async def delete_slot(slot_id: str, services: Svc) -> None:
    """Remove one slot from SQL and from its index."""
    await services.admin.delete_slot(slot_id)


@router.post("/memory/evict", response_model=EvictOut)
async def evict(body: EvictIn, services: Svc) -> EvictOut:
    """Remove every slot matching the filter (at least one criterion is required)."""
    return await services.admin.evict(body)


@router.get("/stats", response_model=StatsOut)
async def stats(services: Svc) -> StatsOut:
    """Slot counts, index sizes, cache hit rates."""
    return await services.admin.stats()


@router.post("/reindex", response_model=ReindexOut)
async def reindex(services: Svc) -> ReindexOut:
    """Rebuild every vector index from SQL."""
    return await services.admin.reindex()


@router.get("/tenants/{tenant_id}/usage", response_model=UsageOut)
async def tenant_usage(
    services: Svc, tenant_id: str = Path(min_length=1, max_length=64)
) -> UsageOut:
    """A tenant's tokens in and out, turns, memories and stored bytes (from the database),
    and the limits that apply; 404 for an unknown tenant."""
    return await services.admin.usage(tenant_id)


@router.get("/sessions", response_model=AdminSessionList)
async def sessions(
    services: Svc,
    tenant_id: FilterId | None = None,
    user_id: FilterId | None = None,
    limit: int = Query(default=100, ge=1, le=10_000),
) -> AdminSessionList:
    """Sessions of every tenant (or one)."""
    return await services.admin.sessions(tenant_id, user_id, limit)


@router.get("/sessions/{session_id}", response_model=AdminSessionOut)
async def session(session_id: str, services: Svc) -> AdminSessionOut:
    """One session of any tenant."""
    return await services.admin.session(session_id)
