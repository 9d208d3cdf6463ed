"""Domain records: the requests services take and the records they return (pydantic).

Kept apart from the ORM rows (those stay inside ``storage``); the HTTP API uses these
same models as its bodies.

Every request model forbids unknown fields, so a typo is a 422 rather than a silently
ignored option. Limits that depend on settings (message length, max_tokens) are
checked by the managers and answered with 413.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Id = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@-]+$")

# ---- bounded scalars: every number a client sends is one of these ------------------------
# Python ints are unbounded, SQL BIGINT and torch int64 are not: a value outside 64 bits
# must be a 422 at validation, never an overflow deep in a driver (a 500). Floats must be
# finite, and seconds small enough for ``datetime - timedelta`` (which overflows near
# 2.7e11 s).
I64_MAX = 2**63 - 1
MAX_SECONDS = 1e10  # ~317 years: older than anything stored
Count = Annotated[int, Field(ge=0, le=I64_MAX)]
PositiveCount = Annotated[int, Field(ge=1, le=I64_MAX)]
Seed = Annotated[int, Field(ge=0, le=I64_MAX)]
Seconds = Annotated[float, Field(ge=0.0, le=MAX_SECONDS, allow_inf_nan=False)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
FilterId = Annotated[str, Field(min_length=1, max_length=128)]


def _reject_nul(value: Any) -> Any:
    """Walk a JSON value; NUL characters cannot be stored (PostgreSQL text) and are refused."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("strings must not contain NUL (\\u0000) characters")
    elif isinstance(value, dict):
        for k, v in value.items():
            _reject_nul(k)
            _reject_nul(v)
    elif isinstance(value, list):
        for v in value:
            _reject_nul(v)
    return value


class Strict(BaseModel):
    """Base of every request body: unknown fields and NUL characters are rejected."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        return _reject_nul(data)


# ------------------------------------------------------------------ sessions
class SessionCreate(Strict):
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    system_prompt: str | None = Field(default=None, max_length=1_000_000)
    memory_scope: Literal["session", "user", "tenant", "none"] = "user"
    metadata: dict[str, Any] | None = None


class SessionOut(BaseModel):
    id: str
    user_id: str | None
    system_prompt: str | None
    memory_scope: str
    created_at: datetime | None = None
    message_count: int = 0
    token_count: int = Field(0, description="tokens of history held by the persisted state")
    version: int = 0
    metadata: dict[str, Any] | None = None


class SessionList(BaseModel):
    data: list[SessionOut]
    next_cursor: str | None = None


# ------------------------------------------------------------------ messages
class MessageCreate(Strict):
    content: str = Field(min_length=1)
    stream: bool = False
    max_tokens: PositiveCount | None = None
    # None: the checkpoint's generation_config.json decides (the shipped model: greedy)
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0, le=1_000_000)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=10.0)
    stop: list[str] | str | None = Field(default=None, validate_default=True)
    seed: Seed | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=190)
    use_documents: bool = True
    use_memory: bool = True

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: list[str] | str | None) -> list[str]:
        """One string or a list; empty strings are meaningless stops and rejected."""
        items = [value] if isinstance(value, str) else list(value or [])
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        return items


class MessageOut(BaseModel):
    id: str
    role: str
    content: str
    created_at: datetime | None = None
    token_count: int | None = None


class MessageList(BaseModel):
    data: list[MessageOut]


class Usage(BaseModel):
    prompt_tokens: int = Field(description="tokens fed this turn (message, template, passages)")
    completion_tokens: int
    total_tokens: int
    cached_tokens: int = Field(description="history tokens served from the persisted state")
    state_source: str = Field(description="where the state came from: redis, sql, memory, new")
    passage_tokens: int = 0
    snapshot_hits: int = 0
    snapshot_misses: int = 0
    memory_writes: int = 0
    memory_forgotten: int = Field(0, description="slots a forget request in chat removed")
    forgotten_memories: list[str] = Field(
        default_factory=list,
        description="ids of the memories a forget request in chat removed (their history "
        "keeps the deletion: GET /v1/users/{user_id}/memories/history)",
    )
    noted_memories: list[str] = Field(
        default_factory=list,
        description="ids of the memories this turn read as a note (a model without memory "
        "layers reads its memories' text: memsvc.services.memory_notes)",
    )
    memory_enabled: bool = Field(
        True,
        description="memory features are on for this service (false: the model has no "
        "Retention Layer, or memory is off by setting; see /readyz)",
    )
    memory_limited: bool = Field(
        False, description="no memory written: the user holds the memories-per-user limit"
    )
    state_rebuilt: bool = Field(
        False,
        description="the saved state belonged to another model: the session's stored "
        "messages were re-prefilled on this one before the turn (once; then saved)",
    )
    rebuilt_tokens: int = Field(0, description="history tokens re-prefilled by that rebuild")


class PassageRef(BaseModel):
    passage_id: str
    document_id: str
    score: float
    tokens: int
    boundary: int = Field(description="token offset (within this turn's feed) where it ends")
    snapshot_hit: bool = False


class TurnOut(BaseModel):
    session_id: str
    message: MessageOut
    user_message: MessageOut
    finish_reason: Literal["stop", "length", "stop_sequence"]
    usage: Usage
    passages: list[PassageRef] = []
    replayed: bool = Field(False, description="true when answered from an idempotency key")


class LogitsOut(BaseModel):
    session_id: str
    version: int
    position: int
    top: list[tuple[int, float]]
    logits_sha256: str


# ------------------------------------------------------------------ feedback
class FeedbackIn(Strict):
    kind: Literal["remember", "forget", "rating"]
    message_id: str | None = Field(default=None, min_length=1, max_length=128)
    text: str | None = Field(default=None, min_length=1)
    rating: int | None = Field(default=None, ge=-1, le=1)


class FeedbackOut(BaseModel):
    kind: str
    applied: bool
    slots_written: list[str] = []
    slots_removed: list[str] = []
    detail: str = ""


# ------------------------------------------------------------------ documents
class DocumentCreate(Strict):
    text: str = Field(min_length=1)
    title: str | None = Field(default=None, max_length=500)
    format: Literal["text", "markdown"] = "text"
    scope: Literal["tenant", "user"] = "tenant"
    user_id: str | None = Field(default=None, min_length=1, max_length=128)


class DocumentOut(BaseModel):
    id: str
    title: str | None
    scope: str
    user_id: str | None
    passages: int
    tokens: int
    created_at: datetime | None = None


class DocumentList(BaseModel):
    data: list[DocumentOut]


class SearchIn(Strict):
    query: str = Field(min_length=1)
    top_k: int = Field(default=5, ge=1, le=100)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)


class SearchHit(BaseModel):
    passage_id: str
    document_id: str
    score: float
    text: str


class SearchOut(BaseModel):
    data: list[SearchHit]


# ------------------------------------------------------------------ admin
class SlotOut(BaseModel):
    id: str
    tenant_id: str
    user_id: str | None
    session_id: str | None
    message_id: str | None
    scope: str
    layer: int
    gate: float
    reads: int
    created_at: datetime | None = None
    last_read_at: datetime | None = None
    text: str | None = None
    span: tuple[int, int] | None = None


class SlotList(BaseModel):
    data: list[SlotOut]


class EvictIn(Strict):
    tenant_id: FilterId | None = None
    user_id: FilterId | None = None
    session_id: FilterId | None = None
    layer: Count | None = None
    max_gate: Fraction | None = None
    max_reads: Count | None = None
    older_than_s: Seconds | None = None


class EvictOut(BaseModel):
    evicted: int
    ids: list[str]


class StatsOut(BaseModel):
    data: dict[str, Any]


class ReindexOut(BaseModel):
    data: dict[str, Any]


class AdminSessionOut(SessionOut):
    tenant_id: str


class AdminSessionList(BaseModel):
    data: list[AdminSessionOut]


# ------------------------------------------------------------------ memories
class MemoryCreate(Strict):
    """Text to remember for a user; it goes through the Retention Layer's gate."""

    text: str = Field(min_length=1, max_length=16_000)
    collection: list[str] | None = Field(default=None, max_length=16)
    key: str | None = Field(default=None, min_length=1, max_length=500)
    force: bool = Field(default=False, description="store even when the gate would not")

    @field_validator("text", "key", "collection")
    @classmethod
    def _no_nul(cls, v: Any) -> Any:
        return _reject_nul(v)

    @field_validator("collection")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not 1 <= len(n) <= 200 for n in v):
            raise ValueError("collection names have 1 to 200 characters")
        return v


class MemoryEventOut(BaseModel):
    memory_id: str
    op: Literal["written", "merged", "read", "evicted", "deleted"]
    cause: str
    at: datetime


class MemoryOut(BaseModel):
    """One memory: the span a user said (or text written), with its slots and reads."""

    id: str
    user_id: str | None
    scope: str
    session_id: str | None
    message_id: str | None
    span: tuple[int, int]
    text: str
    collection: list[str] | None = None
    key: str | None = None
    gate: float
    slots: int
    reads: int
    last_read_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    score: float | None = Field(default=None, description="similarity to `query`, if given")
    history: list[MemoryEventOut] | None = None


class MemoryList(BaseModel):
    memories: list[MemoryOut]
    limit: int
    offset: int


class MemoryWriteOut(BaseModel):
    """What a write did: ``stored`` (``memory``), ``merged`` (a duplicate of ``memory``),
    or ``skipped`` (``reason``, e.g. the gate was below the threshold)."""

    status: Literal["stored", "merged", "skipped"]
    memory: MemoryOut | None = None
    gate: float
    slots_written: int
    reason: str | None = None


class MemoryHistory(BaseModel):
    events: list[MemoryEventOut]
    limit: int
    offset: int


class MemoryDeleted(BaseModel):
    id: str
    slots_removed: int


class UserErased(BaseModel):
    user_id: str
    sessions: int
    messages: int
    memories: int
    slots: int
    documents: int


# ------------------------------------------------------------------ transcripts
class TranscriptTurn(Strict):
    role: Literal["user", "assistant"]
    content: str = Field(min_length=1, max_length=16_000)
    timestamp: datetime | None = Field(
        default=None,
        description="when the message was sent (ISO 8601; no zone means UTC); default: now",
    )

    @field_validator("content")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        return _reject_nul(v)

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        """A naive time is UTC; an aware one is converted to UTC."""
        if v is None:
            return None
        try:
            return v.replace(tzinfo=UTC) if v.tzinfo is None else v.astimezone(UTC)
        except OverflowError as exc:  # e.g. 0001-01-01T00:00+05:00 has no UTC time
            raise ValueError("timestamp out of range") from exc


class TranscriptIn(Strict):
    """Past turns, oldest first, in user/assistant pairs."""

    turns: list[TranscriptTurn] = Field(min_length=2, max_length=200)

    @model_validator(mode="after")
    def _pairs(self) -> TranscriptIn:
        roles = [t.role for t in self.turns]
        if len(roles) % 2 or roles != ["user", "assistant"] * (len(roles) // 2):
            raise ValueError("turns must alternate user, assistant (pairs, user first)")
        return self


class TranscriptOut(BaseModel):
    session_id: str
    turns_imported: int
    messages: int
    memory_writes: int
    version: int
    token_count: int
    state_rebuilt: bool = Field(
        False, description="the saved state was another model's: rebuilt from the messages first"
    )
