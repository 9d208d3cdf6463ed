"""SQLAlchemy 2.0 ORM models: the one schema for PostgreSQL and SQLite.

Every tenant-owned row carries ``tenant_id``, and every query in storage filters on it.
Vectors are stored as little-endian float32 bytes (``LargeBinary``), identical on both
databases. Slots and passages live in *vector banks*: one bank per (tenant, namespace,
layer) for slots and one per tenant for passages; each bank has a gapless change log
(``change_log``: the slot change log, also used by passages) that FAISS indexes replay.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT on Postgres, INTEGER (the rowid alias, so it autoincrements) on SQLite. Tables
# whose ids must never be reused also set ``sqlite_autoincrement``: without AUTOINCREMENT
# SQLite hands out max(rowid)+1, i.e. the id of a just-deleted highest row again.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Timezone-aware now, the timestamp of every row."""
    return datetime.now(UTC)


def new_id() -> str:
    """A fresh 32-hex-digit id."""
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UtcStamp(TypeDecorator):
    """A timezone-aware UTC timestamp on both databases.

    SQLite keeps no zone and reads back naive datetimes; they are UTC (every stamp is
    written by :func:`utcnow`), so they come back aware, equal to what was written: a
    replayed turn reports the same ``created_at`` as its first answer.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


Stamp = UtcStamp()


def tenant_fk() -> ForeignKey:
    """A fresh foreign key to tenants (a ForeignKey object belongs to one column)."""
    return ForeignKey("tenants.id", ondelete="CASCADE")


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class ApiKey(Base):
    """An API key of a tenant; only its SHA-256 is stored."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(Stamp, nullable=True)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant_id", "external_id"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    external_id: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class ChatSession(Base):
    """A conversation; ``version`` is bumped by every acknowledged state write."""

    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    user_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), nullable=True, index=True
    )
    title: Mapped[str] = mapped_column(String(500), default="")
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class Message(Base):
    """One message; ``seq`` orders a session, ``client_key`` makes appends idempotent."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("session_id", "seq"),
        UniqueConstraint("session_id", "client_key"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String(32))
    content: Mapped[str] = mapped_column(Text)
    client_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class SessionState(Base):
    """The durable copy of a session's recurrent state (opaque bytes to storage).

    The stored frames (``storage.state_codec``) live inline in ``blob`` when there is one
    (``n_chunks`` 0), else in ``state_chunks`` rows of this ``version``. ``codec`` says
    how to decode them (NULL: rows written before it, one raw frame); ``checksum`` is
    over the stored frames (``xxh3_128:...``, or a bare SHA-256 hex for old rows); ``size``
    is the decoded blob's length, ``stored_size`` the frames'.
    """

    __tablename__ = "session_states"
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    version: Mapped[int] = mapped_column(Integer)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    checksum: Mapped[str] = mapped_column(String(64))
    fingerprint: Mapped[str] = mapped_column(String(200))
    position: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    codec: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    n_chunks: Mapped[int] = mapped_column(Integer, server_default="0")
    stored_size: Mapped[int] = mapped_column(BigInteger, server_default="0")


class StateChunk(Base):
    """One stored frame of a large session state: (session, version, idx).

    Written in the transaction of the state row's compare-and-set, which also deletes
    the chunks of every other version: only the latest state per session is kept.
    """

    __tablename__ = "state_chunks"
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class VectorBank(Base):
    """One FAISS-indexed bank: slots of (tenant, namespace, layer), or a tenant's passages.

    ``last_seq`` is the bank's change-log head; writers bump it under the row lock, so a
    bank's sequence numbers are gapless and commit in order.
    """

    __tablename__ = "vector_banks"
    __table_args__ = (
        UniqueConstraint("tenant_id", "kind", "namespace", "layer"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # slot | passage
    namespace: Mapped[str] = mapped_column(String(200))  # "user:<id>" | "session:<id>" | ...
    layer: Mapped[int] = mapped_column(Integer, default=0)
    dim: Mapped[int] = mapped_column(Integer)
    d_value: Mapped[int] = mapped_column(Integer, default=0)
    capacity: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    clock: Mapped[int] = mapped_column(BigInteger, default=0)
    # the model (fingerprint) whose Retention Layer wrote the bank's slots; None: not
    # recorded (created before migration 0005, or by a caller that named no model)
    fingerprint: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class ChangeLog(Base):
    """The slot change log: one row per add / update / remove, per bank, in order."""

    __tablename__ = "change_log"
    bank_id: Mapped[int] = mapped_column(
        ForeignKey("vector_banks.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    item_id: Mapped[int] = mapped_column(BigInteger)
    op: Mapped[str] = mapped_column(String(8))  # add | update | remove
    at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class MemorySlot(Base):
    """One memory slot with its provenance and read bookkeeping (logical clock ticks)."""

    __tablename__ = "memory_slots"
    __table_args__ = (
        Index("ix_memory_slots_bank", "bank_id", "id"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    bank_id: Mapped[int] = mapped_column(ForeignKey("vector_banks.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    key: Mapped[bytes] = mapped_column(LargeBinary)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    gate: Mapped[float] = mapped_column(Float, default=1.0)
    reads: Mapped[int] = mapped_column(BigInteger, default=0)
    last_read: Mapped[int] = mapped_column(BigInteger, default=-1)
    created_tick: Mapped[int] = mapped_column(BigInteger, default=0)
    session_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # the slot's own span: character offsets into its memory's source text (the
    # message's content, or the memory's own text); never a copy of the text
    span_start: Mapped[int | None] = mapped_column(Integer, nullable=True)
    span_end: Mapped[int | None] = mapped_column(Integer, nullable=True)
    memory_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    last_read_at: Mapped[datetime | None] = mapped_column(Stamp, nullable=True)


class Memory(Base):
    """One written span (what the user said, or text written explicitly) with its slots.

    Text that came from a message is referenced (message id + character span), never
    copied; ``text`` holds only text without a message, once. ``collection`` is a JSON
    list of names (canonical ``json.dumps``), ``key`` unique within user + collection.
    A deleted memory keeps its row (``deleted_at``, text erased) for the change log.
    """

    __tablename__ = "memories"
    __table_args__ = (
        UniqueConstraint("tenant_id", "user_id", "collection", "key"),
        Index("ix_memories_owner", "tenant_id", "user_id", "created_at"),
        Index("ix_memories_namespace", "tenant_id", "namespace", "created_at"),
    )
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(tenant_fk())
    user_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    namespace: Mapped[str] = mapped_column(String(200))
    session_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    message_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    span_start: Mapped[int] = mapped_column(Integer, default=0)
    span_end: Mapped[int] = mapped_column(Integer, default=0)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    collection: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    key: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # a keyed memory's JSON document (canonical JSON; see storage.memory_items)
    value: Mapped[str | None] = mapped_column(Text, nullable=True)
    gate: Mapped[float] = mapped_column(Float, default=0.0)
    slots: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(Stamp, nullable=True)


class MemoryEvent(Base):
    """The memory change log: written, merged, read, evicted, deleted (time and cause)."""

    __tablename__ = "memory_events"
    __table_args__ = (Index("ix_memory_events_owner", "tenant_id", "user_id", "id"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(tenant_fk())
    user_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    memory_id: Mapped[str] = mapped_column(String(64), index=True)
    op: Mapped[str] = mapped_column(String(16))
    cause: Mapped[str] = mapped_column(String(200), default="")
    at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class Document(Base):
    __tablename__ = "documents"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    name: Mapped[str] = mapped_column(String(500), default="")
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)


class Passage(Base):
    """A chunk of a document: text, character offsets and its embedding."""

    __tablename__ = "passages"
    __table_args__ = (
        UniqueConstraint("document_id", "ordinal"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    bank_id: Mapped[int] = mapped_column(ForeignKey("vector_banks.id", ondelete="CASCADE"))
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    start: Mapped[int] = mapped_column(Integer)
    end: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)


class StateSnapshot(Base):
    """The recurrent state after feeding a chain of passages from a start state."""

    __tablename__ = "state_snapshots"
    __table_args__ = (
        UniqueConstraint("tenant_id", "fingerprint", "start_hash", "chain_hash"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    fingerprint: Mapped[str] = mapped_column(String(200))
    start_hash: Mapped[str] = mapped_column(String(64))
    chain_hash: Mapped[str] = mapped_column(String(64))
    passage_ids: Mapped[list] = mapped_column(JSON)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    checksum: Mapped[str] = mapped_column(String(64))
    position: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    used_at: Mapped[datetime] = mapped_column(Stamp, default=utcnow)
    codec: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    n_chunks: Mapped[int] = mapped_column(Integer, server_default="0")
    size: Mapped[int] = mapped_column(BigInteger, server_default="0")
    stored_size: Mapped[int] = mapped_column(BigInteger, server_default="0")


class SnapshotChunk(Base):
    """One stored frame of a large snapshot (the frames of ``state_snapshots`` rows)."""

    __tablename__ = "snapshot_chunks"
    snapshot_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("state_snapshots.id", ondelete="CASCADE"), primary_key=True
    )
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(tenant_fk(), index=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Lease(Base):
    """A lock lease: the row-lock fallback when no Redis is configured (or reachable)."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    token: Mapped[str] = mapped_column(String(64))
    expires_at: Mapped[float] = mapped_column(Float)  # unix seconds
