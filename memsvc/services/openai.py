"""OpenAI Chat Completions on top of memsvc sessions: mapping a request onto one turn.

A Chat Completions request carries the whole conversation; a memsvc session already
holds it as a recurrent state. This module maps one onto the other and then runs the
same turn path as ``POST /v1/sessions/{id}/messages`` (:class:`memsvc.turns.TurnManager`).

Session mapping
    - The session is named by the ``X-Memsvc-Session`` request header, or by
      ``metadata.session_id`` in the body. The header wins when both are given.
    - With neither, a new session is created; ``user`` becomes its user id (memory
      slots are shared across a user's sessions), system/developer messages become its
      system prompt. Every response names the session in the ``X-Memsvc-Session``
      header (and in ``session_id`` of the body); send it back to continue.
    - The trailing run of user messages is the new turn (several are joined by a blank
      line). Everything before it must be what the session already holds: its whole
      history, a suffix of it (clients that trim old turns), or nothing. Only the new
      turn is fed; the history is served from the persisted state and reported as
      ``usage.prompt_tokens_details.cached_tokens``. A history that differs is 400
      ``history_mismatch`` (nothing is fed).
    - A new session created from a request that already carries a history (earlier
      user/assistant messages) starts from a system prompt that holds that history as
      a transcript; those messages count as the session's history afterwards.
    - System messages only matter when a session is created.

Idempotency
    An ``Idempotency-Key`` request header becomes the turn's idempotency key, as on
    ``POST /v1/sessions/{id}/messages``: a retry with the same key and the same new user
    message answers the committed turn again (whatever history it resends, since that
    history no longer ends where the session does); other content under the key is 409
    ``idempotency_mismatch``. Keys are per session, so a key needs a named session: with
    no session the request would start a new one each time, and a key is 422.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from pydantic import ValidationError

from memsvc.errors import BadRequest, NotFound, Unprocessable
from memsvc.records import MessageCreate, SessionCreate, TurnOut
from memsvc.services.container import Services
from memsvc.services.openai_schemas import (
    MODEL_ID,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    CompletionUsage,
    ModelCard,
    ModelList,
    PromptTokensDetails,
)
from memsvc.threads import run_in_threadpool

T = TypeVar("T")
SEED_KEY = "openai_seed"
SYSTEM_ROLES = {"system", "developer"}
_STARTED = int(time.time())


class HistoryMismatch(BadRequest):
    code = "history_mismatch"


Pair = tuple[str, str]  # (role, content)


@dataclass
class MappedTurn:
    """Where a request goes: the session, the new user content, and the turn body."""

    session_id: str
    body: MessageCreate
    created: bool


def merge_runs(messages: list[Pair]) -> list[Pair]:
    """Consecutive messages of one role become one (joined by a blank line)."""
    merged: list[Pair] = []
    for role, content in messages:
        if merged and merged[-1][0] == role:
            merged[-1] = (role, merged[-1][1] + "\n\n" + content)
        else:
            merged.append((role, content))
    return merged


def split_request(req: ChatCompletionRequest) -> tuple[list[str], list[Pair], str]:
    """(system texts, prior conversation, the new user content) of a request."""
    system = [m.text() for m in req.messages if m.role in SYSTEM_ROLES]
    convo = merge_runs([(m.role, m.text()) for m in req.messages if m.role not in SYSTEM_ROLES])
    if not convo or convo[-1][0] != "user":
        raise Unprocessable("the last non-system message must come from the user")
    return system, convo[:-1], convo[-1][1]


def matches_history(prior: list[Pair], history: list[Pair]) -> bool:
    """True when ``prior`` is empty, the whole ``history``, or a suffix of it."""
    if not prior:
        return True
    return len(prior) <= len(history) and history[len(history) - len(prior) :] == prior


def seed_prompt(system: list[str], prior: list[Pair]) -> str | None:
    """The system prompt of a new session: system texts, then any earlier history."""
    parts = [s for s in system if s]
    if prior:
        transcript = "\n".join(f"{role}: {content}" for role, content in prior)
        parts.append("Conversation so far:\n" + transcript)
    return "\n\n".join(parts) or None


def build(factory: Callable[..., T], **fields) -> T:
    """A session-API body from mapped fields; what it refuses is the client's 422."""
    try:
        return factory(**fields)
    except ValidationError as exc:
        details = [
            {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        raise Unprocessable("request cannot be mapped onto a memsvc turn", details=details) from exc


def finish_reason(turn: TurnOut) -> str:
    """memsvc's finish reasons in OpenAI's words (a stop sequence is a ``stop``)."""
    return "length" if turn.finish_reason == "length" else "stop"


def usage_of(turn: TurnOut) -> CompletionUsage:
    """OpenAI usage: prompt tokens include those served from the persisted state."""
    u = turn.usage
    prompt = u.prompt_tokens + u.cached_tokens
    return CompletionUsage(
        prompt_tokens=prompt,
        completion_tokens=u.completion_tokens,
        total_tokens=prompt + u.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=u.cached_tokens),
    )


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class OpenAIChat:
    """The OpenAI-compatible face of the session and turn managers."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def models(self) -> ModelList:
        """The one model this process serves."""
        return ModelList(data=[ModelCard(id=MODEL_ID, created=_STARTED)])

    def check_model(self, model: str) -> None:
        if model != MODEL_ID:
            raise NotFound(f"model {model!r} does not exist; this server serves {MODEL_ID!r}")

    async def map(
        self,
        tenant_id: str,
        req: ChatCompletionRequest,
        header_session: str | None,
        idempotency_key: str | None = None,
    ) -> MappedTurn:
        """Resolve (or create) the session and build the turn body (see module doc)."""
        self.check_model(req.model)
        system, prior, content = split_request(req)
        session_id = header_session or req.session_hint()
        created = session_id is None
        body = self._body(req, content, idempotency_key)
        if created and idempotency_key:
            raise Unprocessable(
                "an Idempotency-Key needs a session (X-Memsvc-Session or metadata.session_id): "
                "without one every request starts a new session"
            )
        if created:
            session_id = await self._create(tenant_id, req, system, prior)
        elif not await self._committed(tenant_id, session_id, body):
            await self._check_history(tenant_id, session_id, prior)
        return MappedTurn(session_id, body, created)

    async def _committed(self, tenant_id: str, session_id: str, body: MessageCreate) -> bool:
        """Whether the body's idempotency key names a committed turn (409 when it was
        committed with other content); its replay skips the history check."""
        if not body.idempotency_key:
            return False
        await self.services.sessions.get(tenant_id, session_id)  # 404 for unknown/foreign ids
        store = self.services.store
        args = (tenant_id, session_id, body.idempotency_key, body.content)
        return await run_in_threadpool(store.find_turn, *args) is not None

    async def _create(
        self, tenant_id: str, req: ChatCompletionRequest, system: list[str], prior: list[Pair]
    ) -> str:
        body = build(
            SessionCreate,
            user_id=req.user,
            system_prompt=seed_prompt(system, prior),
            metadata={SEED_KEY: [list(p) for p in prior], "source": "openai"},
        )
        return (await self.services.sessions.create(tenant_id, body)).id

    async def history(self, tenant_id: str, session_id: str) -> list[Pair]:
        """What the session holds: its seed history, then its stored messages."""
        session = await self.services.sessions.get(tenant_id, session_id)
        seed = [(r, c) for r, c in (session.metadata or {}).get(SEED_KEY, [])]
        limit = max(1, min(session.message_count, 10_000))
        stored = await self.services.sessions.messages(tenant_id, session_id, limit)
        return merge_runs(seed + [(m.role, m.content) for m in stored.data])

    async def _check_history(self, tenant_id: str, session_id: str, prior: list[Pair]) -> None:
        history = await self.history(tenant_id, session_id)  # 404 for unknown/foreign ids
        if not matches_history(prior, history):
            raise HistoryMismatch(
                f"the messages before the last user turn differ from session {session_id}'s "
                f"history ({len(history)} messages); send the same history, only the new "
                "message, or no session id to start a new session"
            )

    def _body(
        self, req: ChatCompletionRequest, content: str, idempotency_key: str | None = None
    ) -> MessageCreate:
        """The session-API turn body for this request (unset values: the checkpoint's defaults)."""
        return build(
            MessageCreate,
            content=content,
            idempotency_key=idempotency_key,
            stream=req.stream,
            max_tokens=req.new_tokens(),
            temperature=req.temperature,  # None: the checkpoint's default
            top_p=req.top_p,
            stop=req.stop,
            seed=req.seed,
            use_documents=req.use_documents,
            use_memory=req.use_memory,
        )

    async def complete(self, tenant_id: str, mapped: MappedTurn, model: str) -> ChatCompletion:
        """Run the turn to the end and answer with a ``chat.completion``."""
        turns = self.services.turns
        result = await turns.complete(await turns.start(tenant_id, mapped.session_id, mapped.body))
        return ChatCompletion(
            id=completion_id(),
            created=int(time.time()),
            model=model,
            choices=[
                Choice(
                    message=AssistantMessage(content=result.message.content),
                    finish_reason=finish_reason(result),
                )
            ],
            usage=usage_of(result),
            system_fingerprint=self.fingerprint(),
            session_id=result.session_id,
        )

    def fingerprint(self) -> str:
        """A short id of the loaded checkpoint (OpenAI's ``system_fingerprint``)."""
        return "fp_" + self.services.runtime.fingerprint[:16]
