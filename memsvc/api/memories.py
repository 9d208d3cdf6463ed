"""The per-user memory API: ``/v1/users/{user_id}/memories``, ``/v1/memories/{id}``,
``DELETE /v1/users/{user_id}`` (tenant key; another tenant's ids are 404)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import StreamingResponse

from memsvc.api.deps import Svc, Tenant
from memsvc.records import (
    MemoryCreate,
    MemoryDeleted,
    MemoryHistory,
    MemoryList,
    MemoryOut,
    MemoryWriteOut,
    TranscriptIn,
    TranscriptOut,
    UserErased,
)

router = APIRouter(tags=["memories"])

UserId = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")]
MemoryId = Annotated[str, Path(min_length=1, max_length=64)]
Limit = Annotated[int, Query(ge=1, le=200, description="page length")]
Offset = Annotated[int, Query(ge=0, le=1_000_000)]


@router.get("/v1/users/{user_id}/memories", response_model=MemoryList)
async def list_memories(
    user_id: UserId,
    tenant: Tenant,
    services: Svc,
    query: Annotated[str | None, Query(min_length=1, max_length=2000)] = None,
    session_id: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    since: datetime | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> MemoryList:
    """The user's memories, newest first; with ``query``, most similar first (MiniLM)."""
    return await services.memories.list(
        tenant,
        user_id,
        query=query,
        session_id=session_id,
        since=since,
        limit=limit,
        offset=offset,
    )


@router.post("/v1/users/{user_id}/memories", response_model=MemoryWriteOut)
async def write_memory(
    user_id: UserId, body: MemoryCreate, tenant: Tenant, services: Svc
) -> MemoryWriteOut:
    """Write text through the Retention Layer's gate; says what was stored, or why not."""
    return await services.memories.write(tenant, user_id, body)


@router.get("/v1/users/{user_id}/memories/export")
async def export_memories(user_id: UserId, tenant: Tenant, services: Svc) -> StreamingResponse:
    """JSON Lines of everything held about the user: memories, change log, messages."""
    return StreamingResponse(
        services.memories.export(tenant, user_id), media_type="application/x-ndjson"
    )


@router.get("/v1/users/{user_id}/memories/history", response_model=MemoryHistory)
async def memory_history(
    user_id: UserId, tenant: Tenant, services: Svc, limit: Limit = 100, offset: Offset = 0
) -> MemoryHistory:
    """The change log (written, merged, evicted, deleted), newest first, with causes."""
    return await services.memories.history(tenant, user_id, limit, offset)


@router.get("/v1/memories/{memory_id}", response_model=MemoryOut)
async def get_memory(memory_id: MemoryId, tenant: Tenant, services: Svc) -> MemoryOut:
    """One memory with its history."""
    return await services.memories.get(tenant, memory_id)


@router.delete("/v1/memories/{memory_id}", response_model=MemoryDeleted)
async def delete_memory(memory_id: MemoryId, tenant: Tenant, services: Svc) -> MemoryDeleted:
    """Delete a memory and its slots (gone from the index too; chat no longer recalls it)."""
    return await services.memories.delete(tenant, memory_id)


@router.delete("/v1/users/{user_id}", response_model=UserErased)
async def erase_user(user_id: UserId, tenant: Tenant, services: Svc) -> UserErased:
    """Erase the user's sessions, messages, states, memories with slots, user documents."""
    return await services.memories.erase_user(tenant, user_id)


@router.post("/v1/sessions/{session_id}/transcript", response_model=TranscriptOut)
async def import_transcript(
    session_id: Annotated[str, Path(min_length=1, max_length=64)],
    body: TranscriptIn,
    tenant: Tenant,
    services: Svc,
) -> TranscriptOut:
    """Import past user/assistant turns: the state advances and memories are written as
    if they had happened; nothing is generated."""
    return await services.transcripts.run(tenant, session_id, body)
