"""OpenAI-compatible endpoints: ``GET /v1/models`` and ``POST /v1/chat/completions``.

Point the official ``openai`` client at the server (``base_url=<server>/v1``,
``api_key=<tenant API key>``). How a request maps onto a memsvc session is described
in :mod:`memsvc.services.openai`; in short: ``X-Memsvc-Session`` header or
``metadata.session_id``, a new session otherwise, and the session id comes back in the
``X-Memsvc-Session`` response header.

Streaming sends ``data: {chat.completion.chunk}`` events and ends with ``data: [DONE]``;
``stream_options.include_usage`` adds a last chunk with ``choices: []`` and the usage.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Response
from fastapi.responses import StreamingResponse

from memsvc.api.deps import Svc, Tenant
from memsvc.api.errors import ApiError
from memsvc.engine.scheduler import TokenEvent
from memsvc.records import TurnOut
from memsvc.services.openai import MappedTurn, OpenAIChat, completion_id, finish_reason, usage_of
from memsvc.services.openai_schemas import (
    IDEMPOTENCY_HEADER,
    SESSION_HEADER,
    ChatCompletion,
    ChatCompletionRequest,
    ModelList,
)

router = APIRouter(prefix="/v1", tags=["openai"])
SessionHeader = Annotated[
    str | None,
    Header(
        alias=SESSION_HEADER,
        min_length=1,
        max_length=128,
        description="memsvc session to continue (default: a new session)",
    ),
]
IdempotencyHeader = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_HEADER,
        min_length=1,
        max_length=190,
        description="retry-safe turn: the same key and message answer the committed turn "
        "again; the key with another message is 409 (needs a named session)",
    ),
]


@router.get("/models", response_model=ModelList)
async def list_models(tenant: Tenant, services: Svc) -> ModelList:
    """The model this server serves (one per process)."""
    return OpenAIChat(services).models()


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    responses={
        200: {"content": {"text/event-stream": {}}},
        **{code: {} for code in (400, 404, 409, 413, 422)},
    },
)
async def chat_completions(
    body: ChatCompletionRequest,
    tenant: Tenant,
    services: Svc,
    response: Response,
    session: SessionHeader = None,
    idempotency_key: IdempotencyHeader = None,
):
    """One turn of a session, in OpenAI's Chat Completions format (JSON or SSE)."""
    chat = OpenAIChat(services)
    mapped = await chat.map(tenant, body, session, idempotency_key)
    headers = {SESSION_HEADER: mapped.session_id}
    if not body.stream:
        response.headers.update(headers)
        return await chat.complete(tenant, mapped, body.model)
    turn = await services.turns.start(tenant, mapped.session_id, mapped.body)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    chunks = ChunkWriter(body.model, chat.fingerprint(), mapped, include_usage)
    return StreamingResponse(
        chunks.frames(services.turns.events(turn)),
        media_type="text/event-stream",
        headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class ChunkWriter:
    """Turn events → ``chat.completion.chunk`` SSE frames."""

    def __init__(self, model: str, fingerprint: str, mapped: MappedTurn, usage: bool) -> None:
        self.base = {
            "id": completion_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": fingerprint,
            "session_id": mapped.session_id,
        }
        self.usage = usage

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _frame({**self.base, "choices": [choice]})

    async def frames(self, events: AsyncIterator[object]) -> AsyncIterator[str]:
        yield self.chunk({"role": "assistant", "content": ""})
        async for event in events:
            if isinstance(event, TokenEvent):
                yield self.chunk({"content": event.text})
            elif isinstance(event, TurnOut):
                if event.replayed:  # an idempotent replay: the stored text as one delta
                    yield self.chunk({"content": event.message.content})
                yield self.chunk({}, finish_reason(event))
                if self.usage:
                    usage = usage_of(event).model_dump()
                    yield _frame({**self.base, "choices": [], "usage": usage})
            elif isinstance(event, BaseException):
                yield _frame({"error": _error(event)})
        yield "data: [DONE]\n\n"


def _error(exc: BaseException) -> dict[str, Any]:
    """An in-stream error in OpenAI's shape (the openai client raises it as APIError)."""
    if isinstance(exc, ApiError):
        return {"message": exc.message, "type": exc.code, "code": exc.code}
    return {"message": "turn failed; nothing saved", "type": "internal_error", "code": None}


def _frame(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"
