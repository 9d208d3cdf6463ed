"""Sessions and their messages: ``/v1/sessions``. Each route is one manager call."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from memsvc.api.deps import Svc, Tenant
from memsvc.api.errors import ApiError
from memsvc.engine.scheduler import TokenEvent
from memsvc.records import (
    FeedbackIn,
    FeedbackOut,
    LogitsOut,
    MessageCreate,
    MessageList,
    SessionCreate,
    SessionList,
    SessionOut,
    TurnOut,
)

router = APIRouter(prefix="/v1/sessions", tags=["sessions"])


@router.post("", response_model=SessionOut, status_code=201)
async def create_session(body: SessionCreate, tenant: Tenant, services: Svc) -> SessionOut:
    """Start a conversation (optional user id, system prompt, memory scope)."""
    return await services.sessions.create(tenant, body)


@router.get("", response_model=SessionList)
async def list_sessions(
    tenant: Tenant,
    services: Svc,
    user_id: str | None = Query(default=None, min_length=1, max_length=128),
    limit: int = Query(default=50, ge=1, le=1000),
) -> SessionList:
    """The tenant's sessions, newest first."""
    return await services.sessions.list(tenant, user_id, limit)


@router.get("/{session_id}", response_model=SessionOut)
async def get_session(session_id: str, tenant: Tenant, services: Svc) -> SessionOut:
    """One session (404 when unknown or another tenant's)."""
    return await services.sessions.get(tenant, session_id)


@router.delete("/{session_id}", status_code=204)
async def delete_session(session_id: str, tenant: Tenant, services: Svc) -> None:
    """Erase the session's messages, states and session-scoped memory slots."""
    await services.sessions.delete(tenant, session_id)


@router.get("/{session_id}/messages", response_model=MessageList)
async def list_messages(
    session_id: str,
    tenant: Tenant,
    services: Svc,
    limit: int = Query(default=200, ge=1, le=10_000),
) -> MessageList:
    """The session's messages, oldest first."""
    return await services.sessions.messages(tenant, session_id, limit)


@router.post(
    "/{session_id}/messages",
    response_model=TurnOut,
    responses={200: {"content": {"text/event-stream": {}}}, 409: {}, 413: {}},
)
async def post_message(session_id: str, body: MessageCreate, tenant: Tenant, services: Svc):
    """One turn: the reply and usage; with ``stream: true`` Server-Sent Events.

    SSE events: ``delta`` ({"text"}) per piece of the reply, then ``done`` (the same body
    as the non-streaming answer, sent only after the turn is durable) or ``error``. The
    deltas always add up to the stored reply (a replay sends it as one delta).
    """
    turn = await services.turns.start(tenant, session_id, body)
    if not body.stream:
        return await services.turns.complete(turn)
    return StreamingResponse(
        _sse(services.turns.events(turn)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse(events: AsyncIterator[object]) -> AsyncIterator[str]:
    """Engine events → SSE frames."""
    async for event in events:
        if isinstance(event, TokenEvent):
            yield f"event: delta\ndata: {json.dumps({'text': event.text})}\n\n"
        elif isinstance(event, TurnOut):
            if event.replayed:  # an idempotent replay streams its stored text as one delta
                yield f"event: delta\ndata: {json.dumps({'text': event.message.content})}\n\n"
            yield f"event: done\ndata: {event.model_dump_json()}\n\n"
        elif isinstance(event, BaseException):
            code = event.code if isinstance(event, ApiError) else "internal_error"
            msg = event.message if isinstance(event, ApiError) else "turn failed; nothing saved"
            yield f"event: error\ndata: {json.dumps({'code': code, 'message': msg})}\n\n"


@router.post("/{session_id}/feedback", response_model=FeedbackOut)
async def feedback(session_id: str, body: FeedbackIn, tenant: Tenant, services: Svc) -> FeedbackOut:
    """Remember, forget, or rate a reply; it drives the memory write gate."""
    return await services.memory.feedback(tenant, session_id, body)


@router.get("/{session_id}/logits", response_model=LogitsOut, tags=["debug"])
async def next_logits(
    session_id: str,
    tenant: Tenant,
    services: Svc,
    top: int = Query(default=10, ge=1, le=100),
) -> LogitsOut:
    """Debug: logits of a reply's first token from the persisted state (read-only).

    Feeds ``<|assistant|>`` to a copy of the state; the stored state is not changed. Two
    processes holding the same state return the same digest.
    """
    return await services.sessions.next_logits(tenant, session_id, top)
