"""Chat sessions and their messages: ordered by ``seq``, idempotent by client key."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from storage.db import Database
from storage.errors import IdempotencyMismatch, NotFound
from storage.models import ChatSession, Message, User, new_id, utcnow


@dataclass(frozen=True)
class SessionInfo:
    id: str
    tenant_id: str
    user_id: str | None
    title: str
    meta: dict
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class MessageInfo:
    id: int
    session_id: str
    seq: int
    role: str
    content: str
    client_key: str | None
    meta: dict
    created_at: datetime
    created: bool = True  # False when an idempotent append returned the existing message


def _session_info(r: ChatSession) -> SessionInfo:
    return SessionInfo(
        r.id,
        r.tenant_id,
        r.user_id,
        r.title,
        dict(r.meta or {}),
        r.version,
        r.created_at,
        r.updated_at,
    )


def _message_info(r: Message, created: bool = True) -> MessageInfo:
    return MessageInfo(
        r.id,
        r.session_id,
        r.seq,
        r.role,
        r.content,
        r.client_key,
        dict(r.meta or {}),
        r.created_at,
        created,
    )


@dataclass(frozen=True)
class MessageIn:
    """A message to append: role, content, optional idempotency key and metadata.

    ``key_binds_content``: the key names this exact content, so the key seen again with
    other content is a mismatch. False for a message the server generates (a reply,
    whose retry may legitimately word it differently; the stored one is kept).
    """

    role: str
    content: str
    client_key: str | None = None
    meta: dict | None = None
    key_binds_content: bool = True
    created_at: datetime | None = None  # None: now; an imported past message keeps its time


def append_locked(s: Session, tenant_id: str, session_id: str, msg: MessageIn) -> MessageInfo:
    """Append ``msg`` inside ``s``, whose caller already holds the session row's lock.

    (``SELECT ... FOR UPDATE`` or the ``UPDATE`` of a compare-and-set on Postgres;
    SQLite's write lock.) With a ``client_key`` seen before in the session, the existing
    message is returned (``created=False``) and nothing is written; if that message's
    role or content differs (and ``msg.key_binds_content``), :class:`IdempotencyMismatch`
    is raised instead: a reused key must never silently answer another request.
    """
    if msg.client_key is not None:
        old = s.scalar(
            select(Message).where(
                Message.session_id == session_id,
                Message.tenant_id == tenant_id,
                Message.client_key == msg.client_key,
            )
        )
        if old is not None:
            differs = old.role != msg.role or old.content != msg.content
            if differs and msg.key_binds_content:
                raise IdempotencyMismatch(
                    f"idempotency key {msg.client_key!r} was already used in session "
                    f"{session_id} for a different message"
                )
            return _message_info(old, created=False)
    last = s.scalar(select(func.max(Message.seq)).where(Message.session_id == session_id))
    row = Message(
        tenant_id=tenant_id,
        session_id=session_id,
        seq=(last or 0) + 1,
        role=msg.role,
        content=msg.content,
        client_key=msg.client_key,
        meta=msg.meta or {},
        created_at=msg.created_at or utcnow(),
    )
    s.add(row)
    s.flush()
    return _message_info(row)


class SessionManager:
    """Sessions of a tenant."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        tenant_id: str,
        *,
        user_id: str | None = None,
        title: str = "",
        meta: dict | None = None,
        session_id: str | None = None,
    ) -> SessionInfo:
        """A new session at version 0."""
        now = utcnow()
        row = ChatSession(
            id=session_id or new_id(),
            tenant_id=tenant_id,
            user_id=user_id,
            title=title,
            meta=meta or {},
            version=0,
            created_at=now,
            updated_at=now,
        )
        with self.db.write() as s:
            s.add(row)
        return _session_info(row)

    def get(self, tenant_id: str, session_id: str) -> SessionInfo:
        """The session, or :class:`NotFound` (also for another tenant's session)."""
        with self.db.read() as s:
            r = s.scalar(
                select(ChatSession).where(
                    ChatSession.id == session_id, ChatSession.tenant_id == tenant_id
                )
            )
            if r is None:
                raise NotFound(f"session {session_id} not found")
            return _session_info(r)

    def list(
        self, tenant_id: str, *, user_id: str | None = None, limit: int = 100, offset: int = 0
    ) -> list[SessionInfo]:
        """The tenant's sessions, newest first."""
        q = select(ChatSession).where(ChatSession.tenant_id == tenant_id)
        if user_id is not None:
            q = q.where(ChatSession.user_id == user_id)
        q = q.order_by(ChatSession.created_at.desc(), ChatSession.id).limit(limit).offset(offset)
        with self.db.read() as s:
            return [_session_info(r) for r in s.scalars(q).all()]

    def owner(self, session_id: str) -> str | None:
        """The tenant of a session, or None (operator lookups by a bare session id)."""
        with self.db.read() as s:
            return s.scalar(select(ChatSession.tenant_id).where(ChatSession.id == session_id))

    def admin_list(
        self,
        *,
        tenant_id: str | None = None,
        external_user_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[SessionInfo]:
        """Sessions of one tenant, or of every tenant for None, newest first.

        ``external_user_id`` keeps the sessions of users with that external id (in every
        tenant, unless ``tenant_id`` is given); all filters apply before ``limit``.
        """
        q = select(ChatSession)
        if tenant_id is not None:
            q = q.where(ChatSession.tenant_id == tenant_id)
        if external_user_id is not None:
            q = q.join(User, User.id == ChatSession.user_id).where(
                User.external_id == external_user_id
            )
        q = q.order_by(ChatSession.created_at.desc(), ChatSession.id).limit(limit).offset(offset)
        with self.db.read() as s:
            return [_session_info(r) for r in s.scalars(q).all()]

    def delete(self, tenant_id: str, session_id: str) -> bool:
        """Delete the session, its messages and state; False if not the tenant's."""
        with self.db.write() as s:
            res = s.execute(
                delete(ChatSession).where(
                    ChatSession.id == session_id, ChatSession.tenant_id == tenant_id
                )
            )
            return res.rowcount == 1


class MessageManager:
    """Messages of a session, in ``seq`` order."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def append(
        self,
        tenant_id: str,
        session_id: str,
        role: str,
        content: str,
        *,
        client_key: str | None = None,
        meta: dict | None = None,
    ) -> MessageInfo:
        """Append a message; with a ``client_key`` seen before, return that message instead.

        The session row is locked for the append, so ``seq`` is gapless per session.
        """
        with self.db.write() as s:
            sess = s.scalar(
                select(ChatSession.id)
                .where(ChatSession.id == session_id, ChatSession.tenant_id == tenant_id)
                .with_for_update()
            )
            if sess is None:
                raise NotFound(f"session {session_id} not found")
            msg = MessageIn(role, content, client_key=client_key, meta=meta)
            return append_locked(s, tenant_id, session_id, msg)

    def list(
        self, tenant_id: str, session_id: str, *, after_seq: int = 0, limit: int = 1000
    ) -> list[MessageInfo]:
        """Messages with seq > ``after_seq`` in order; [] for another tenant's session."""
        q = (
            select(Message)
            .where(Message.session_id == session_id, Message.tenant_id == tenant_id)
            .where(Message.seq > after_seq)
            .order_by(Message.seq)
            .limit(limit)
        )
        with self.db.read() as s:
            return [_message_info(r) for r in s.scalars(q).all()]

    def by_client_key(self, tenant_id: str, session_id: str, client_key: str) -> MessageInfo | None:
        """The session's message with ``client_key``, or None (also for another tenant's).

        One probe of the unique ``(session_id, client_key)`` index.
        """
        q = select(Message).where(
            Message.session_id == session_id,
            Message.client_key == client_key,
            Message.tenant_id == tenant_id,
        )
        with self.db.read() as s:
            r = s.scalar(q)
            return None if r is None else _message_info(r, created=False)

    def get(self, tenant_id: str, message_id: int) -> MessageInfo:
        """One message by id, or :class:`NotFound`."""
        with self.db.read() as s:
            r = s.scalar(
                select(Message).where(Message.id == message_id, Message.tenant_id == tenant_id)
            )
            if r is None:
                raise NotFound(f"message {message_id} not found")
            return _message_info(r)
