"""The service's view of persistence: plain records and the one adapter over ``storage``.

Managers in memsvc talk to :class:`Store` only. Rows never leave this module as ORM
objects: they are converted to the frozen records below, which the API layer turns
into response schemas. Storage's errors are translated here too: ``NotFound`` stays
a :class:`memsvc.errors.NotFound` (unknown and foreign ids alike), a held
lock becomes :class:`Busy`, a lost compare-and-set :class:`Conflict`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class Busy(Exception):
    """The session's lock is held by another turn (→ 409)."""


@dataclass(frozen=True)
class SessionRec:
    id: str
    tenant_id: str
    user_id: str | None
    system_prompt: str | None
    memory_scope: str
    created_at: datetime | None
    metadata: dict[str, Any] | None
    message_count: int
    token_count: int
    version: int


@dataclass(frozen=True)
class MessageRec:
    id: str
    session_id: str
    role: str
    content: str
    created_at: datetime | None
    token_count: int | None


@dataclass(frozen=True)
class LoadedState:
    """A session's persisted state: bytes (None for a new session), version, tier."""

    data: bytes | None
    version: int
    tier: str  # local | redis | lru | sql | miss
    position: int = 0  # tokens of history the state holds
    fingerprint: str = ""  # the model that wrote it ("" when unknown)


#: a slot's ``message_id`` meaning "the user message committed with this turn"
TURN_USER_MESSAGE = -1


@dataclass(frozen=True)
class SlotProvenance:
    """Where a slot written by the service came from (storage reads these fields): its
    memory and its own character span in the memory's source text; never the text."""

    session_id: str | None = None
    message_id: int | None = None  # TURN_USER_MESSAGE: resolved by the turn's commit
    span: tuple[int, int] | None = None
    memory_id: str | None = None


@dataclass(frozen=True)
class PendingMemory:
    """A memory a write is about to make (storage reads the fields of its ``NewMemory``);
    its row is inserted by the commit that writes its slots."""

    id: str
    tenant_id: str
    namespace: str
    user_id: str | None = None
    session_id: str | None = None
    message_id: int | None = None  # TURN_USER_MESSAGE: resolved by the turn's commit
    span: tuple[int, int] = (0, 0)
    text: str | None = None  # only for text without a message
    collection: Sequence[str] | None = None
    key: str | None = None


@dataclass(frozen=True)
class TextMemories:
    """What a turn of a model without memory layers does to memories: ``new`` are kept as
    text only (no slots; read back as a note, :mod:`memsvc.services.memory_notes`) and
    ``retire`` (memory id → cause) are tombstoned, in the turn's transaction."""

    tenant_id: str
    new: tuple[tuple[PendingMemory, str], ...] = ()  # (memory, cause)
    retire: tuple[tuple[str, str], ...] = ()  # (memory id, cause)


def new_memory_id() -> str:
    """A fresh memory id (32 hex digits, as storage's ids)."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class TurnCommit:
    """Everything one acknowledged turn writes, in one transaction."""

    tenant_id: str
    session_id: str
    expected_version: int
    user_content: str
    assistant_content: str
    idempotency_key: str | None
    state: bytes
    fingerprint: str
    position: int  # the state's token position (history length)
    user_tokens: int
    assistant_tokens: int
    slot_changes: tuple = ()  # what the turn's bank views recorded (storage.BankChanges)
    # memories written or retired without slots (a model without memory layers)
    text_memories: TextMemories | None = None
    # when the messages happened (an imported transcript's timestamps); None: now
    user_created_at: datetime | None = None
    assistant_created_at: datetime | None = None


@dataclass(frozen=True)
class DocumentRec:
    id: str
    title: str | None
    scope: str
    user_id: str | None
    passages: int
    tokens: int
    created_at: datetime | None


@dataclass(frozen=True)
class PassageHit:
    passage_id: str
    document_id: str
    text: str
    score: float


@dataclass(frozen=True)
class SlotRec:
    id: str
    tenant_id: str
    user_id: str | None
    session_id: str | None
    message_id: str | None
    scope: str
    layer: int
    gate: float
    reads: int
    created_at: datetime | None
    last_read_at: datetime | None
    text: str | None
    span: tuple[int, int] | None


@dataclass(frozen=True)
class MemoryRec:
    """A memory: one written span with its slots (see :mod:`storage.memories`)."""

    id: str
    tenant_id: str
    user_id: str | None
    namespace: str
    session_id: str | None
    message_id: str | None
    span: tuple[int, int]
    text: str
    collection: list[str] | None
    key: str | None
    gate: float
    slots: int
    reads: int
    last_read_at: datetime | None
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None


@dataclass(frozen=True)
class MemoryEventRec:
    id: int
    memory_id: str
    op: str  # written | merged | read | evicted | deleted
    cause: str
    at: datetime


@dataclass(frozen=True)
class UsageRec:
    """A tenant's usage from the database (see :mod:`storage.usage` for each figure)."""

    tenant_id: str
    sessions: int
    turns: int
    messages: int
    tokens_in: int
    tokens_out: int
    memories: int
    slots: int
    documents: int
    passages: int
    stored_bytes: dict[str, int]


@dataclass(frozen=True)
class SlotFilter:
    tenant_id: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    layer: int | None = None
    min_gate: float | None = None
    max_gate: float | None = None
    min_reads: int | None = None
    max_reads: int | None = None
    older_than_s: float | None = None
    limit: int = 100


class Store(Protocol):
    """Interface every memsvc manager uses; :mod:`memsvc.store_adapter` implements it."""

    # tenants
    def authenticate(self, key: str) -> str | None: ...
    def create_tenant(self, name: str) -> tuple[str, str]: ...
    def list_tenants(self) -> list[dict[str, Any]]: ...
    def revoke_tenant(self, tenant_id: str) -> int: ...

    # sessions and messages
    def create_session(
        self,
        tenant_id: str,
        user_id: str | None,
        system_prompt: str | None,
        memory_scope: str,
        metadata: dict[str, Any] | None,
    ) -> SessionRec: ...
    def get_session(
        self, tenant_id: str | None, session_id: str, with_position: bool = True
    ) -> SessionRec: ...
    def list_sessions(
        self, tenant_id: str | None, user_id: str | None, limit: int
    ) -> list[SessionRec]: ...
    def delete_session(self, tenant_id: str, session_id: str) -> None: ...
    def list_messages(self, tenant_id: str, session_id: str, limit: int) -> list[MessageRec]: ...
    def find_turn(
        self, tenant_id: str, session_id: str, key: str, content: str | None = None
    ) -> tuple[MessageRec, MessageRec] | None: ...

    # turns
    def session_lock(self, tenant_id: str, session_id: str, wait_s: float) -> Any: ...
    def load_state(self, tenant_id: str, session_id: str) -> LoadedState: ...
    def commit_turn(self, commit: TurnCommit) -> tuple[MessageRec, MessageRec]: ...
    def bank_views(
        self, tenant_id: str, ns: tuple[str, str], layers: list[int], dims: tuple[int, int, Any]
    ) -> dict[int, Any]: ...
    def commit_slots(self, changes: list[Any]) -> list[dict[int, int]]: ...
    def commit_text_memories(self, changes: TextMemories) -> None: ...

    # documents
    def add_document(
        self,
        tenant_id: str,
        user_id: str | None,
        scope: str,
        title: str | None,
        passages: list[tuple[str, int, int]],
        embeddings: Any,
        tokens: int,
    ) -> DocumentRec: ...
    def list_documents(self, tenant_id: str, limit: int) -> list[DocumentRec]: ...
    def delete_document(self, tenant_id: str, document_id: str) -> None: ...
    def has_passages(self, tenant_id: str) -> bool: ...
    def search_passages(
        self, tenant_id: str, user_id: str | None, query: Any, k: int
    ) -> list[PassageHit]: ...

    # snapshots (exact states after passage chains), per tenant
    def get_snapshot(
        self, tenant_id: str, fingerprint: str, start_hash: str, chain: list[str]
    ) -> bytes | None: ...
    def put_snapshot(
        self,
        tenant_id: str,
        fingerprint: str,
        start_hash: str,
        chain: list[str],
        blob: bytes,
        position: int,
    ) -> None: ...

    # slots
    # memories (memsvc.store_adapter_memories)
    def memory_merged(self, tenant_id: str, memory_id: str, cause: str) -> MemoryRec: ...
    def find_memory_text(self, tenant_id: str, namespace: str, text: str) -> str | None: ...
    def search_memory_text(self, tenant_id: str, namespace: str, needle: str) -> list[str]: ...
    def retire_memories(self, tenant_id: str, memory_ids: list[str], cause: str) -> int: ...
    def get_memory(self, tenant_id: str, memory_id: str) -> MemoryRec: ...
    def get_memories(self, tenant_id: str, memory_ids: list[str]) -> list[MemoryRec]: ...
    def list_memories(self, tenant_id: str, user_id: str, **filters: Any) -> list[MemoryRec]: ...
    def memory_events(self, tenant_id: str, memory_id: str) -> list[MemoryEventRec]: ...
    def delete_memory(self, tenant_id: str, memory_id: str, cause: str) -> int: ...
    def memory_history(
        self, tenant_id: str, user_id: str, memory_id: str | None, limit: int, offset: int
    ) -> list[MemoryEventRec]: ...
    def erase_user(self, tenant_id: str, user_id: str) -> dict[str, int]: ...

    # slots another model wrote (memsvc.store_adapter_reindex; namespace "scope:id")
    def set_slot_model(self, fingerprint: str) -> None: ...
    def adopt_slot_banks(self, fingerprint: str, d_key: int, d_value: int) -> int: ...
    def stale_slot_namespaces(
        self, fingerprint: str, d_key: int, d_value: int
    ) -> list[tuple[str, str]]: ...
    def namespace_memories(self, tenant_id: str, namespace: str) -> list[MemoryRec]: ...
    def namespace_version(self, tenant_id: str, namespace: str) -> tuple: ...
    def reset_slot_namespace(self, tenant_id: str, namespace: str) -> int: ...
    def finish_slot_namespace(self, tenant_id: str, namespace: str, fingerprint: str) -> None: ...

    # usage and limits (memsvc.store_adapter_usage)
    def tenant_usage(self, tenant_id: str) -> UsageRec: ...
    def user_memory_count(self, tenant_id: str, user_id: str) -> int: ...
    def count_hit(self, name: str, window_s: int) -> tuple[int, float]: ...
    def acquire_slot(self, name: str, limit: int, ttl_s: float) -> str | None: ...
    def release_slot(self, name: str, token: str) -> None: ...

    def list_slots(self, f: SlotFilter) -> list[SlotRec]: ...
    def get_slot(self, slot_id: str) -> SlotRec: ...
    def delete_slot(self, slot_id: str) -> None: ...
    def evict_slots(self, f: SlotFilter) -> list[str]: ...
    def stats(self) -> dict[str, Any]: ...
    def reindex(self) -> dict[str, Any]: ...

    # health
    def ping(self) -> dict[str, Any]: ...
    def close(self) -> None: ...
