"""The SQL of session states: the version compare-and-set, the state row, its chunk rows.

A state is one ``session_states`` row (frames inline in ``blob`` when there is one) plus,
for a large state, one ``state_chunks`` row per frame of that version. Writing a version
deletes every other version's chunks in the same transaction, so only the latest state of
a session is kept.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from storage.blob_rows import delete_frames, fetch_frames, insert_frames
from storage.db import Database
from storage.errors import NotFound
from storage.models import ChatSession, SessionState, StateChunk, utcnow

CHUNKS = StateChunk.__table__
_BATCH = 8  # chunk rows per INSERT round trip


def bump_version(s: Session, tenant_id: str, session_id: str, expected: int) -> int | None:
    """``UPDATE sessions SET version = expected + 1 WHERE id, tenant AND version = expected``.

    Also takes the session row's lock until ``s`` commits. Returns None on success, else
    the session's current version; raises :class:`NotFound` for no such session.
    """
    res = s.execute(
        update(ChatSession)
        .where(ChatSession.id == session_id, ChatSession.tenant_id == tenant_id)
        .where(ChatSession.version == expected)
        .values(version=expected + 1, updated_at=utcnow())
    )
    if res.rowcount == 1:
        return None
    current = s.scalar(
        select(ChatSession.version).where(
            ChatSession.id == session_id, ChatSession.tenant_id == tenant_id
        )
    )
    if current is None:
        raise NotFound(f"session {session_id} not found")
    return int(current)


def write_chunks(
    s: Session, tenant_id: str, session_id: str, version: int, frames: Iterable[bytes]
) -> list[bytes]:
    """Insert the frames of ``version`` as chunk rows, a batch at a time, as they come."""
    out: list[bytes] = []
    key = {"session_id": session_id, "version": version}
    for f in frames:
        out.append(f)
        if len(out) % _BATCH == 0:
            insert_frames(s, CHUNKS, key, out[-_BATCH:], tenant_id, start=len(out) - _BATCH)
    rest = len(out) % _BATCH
    if rest:
        insert_frames(s, CHUNKS, key, out[-rest:], tenant_id, start=len(out) - rest)
    return out


@dataclass(frozen=True)
class RowHead:
    """A state row without its frames."""

    version: int
    checksum: str
    fingerprint: str
    position: int
    codec: dict[str, Any] | None


def write_row(
    s: Session,
    tenant_id: str,
    session_id: str,
    head: RowHead,
    *,
    inline: bytes | None,
    n_chunks: int,
    size: int,
    stored_size: int,
) -> None:
    """Upsert the state row and delete the chunks of every other version.

    Never reads the old blob back: UPDATE, or INSERT when there is none yet (the session
    row lock / SQLite's write lock keeps this race-free).
    """
    values = {
        "tenant_id": tenant_id,
        "version": head.version,
        "blob": inline if inline is not None else b"",
        "checksum": head.checksum,
        "fingerprint": head.fingerprint,
        "position": head.position,
        "size": size,
        "updated_at": utcnow(),
        "codec": head.codec,
        "n_chunks": n_chunks,
        "stored_size": stored_size,
    }
    res = s.execute(
        update(SessionState).where(SessionState.session_id == session_id).values(values)
    )
    if res.rowcount == 0:
        s.execute(insert(SessionState).values(session_id=session_id, **values))
    delete_frames(s, CHUNKS, CHUNKS.c.session_id == session_id, CHUNKS.c.version != head.version)


def read_rows(
    db: Database, tenant_id: str, session_id: str, attempts: int = 5
) -> Iterator[tuple[RowHead | None, list[bytes] | None]]:
    """The state row's head and frames (None: a chunk is missing), one try per item.

    A newer version committing between the row read and the chunk read deletes the chunks
    read for: the caller reads again (the next item). ``(None, None)`` when the session
    has no state; raises :class:`NotFound` for no such session.
    """
    for _ in range(attempts):
        with db.read() as s:
            row = s.scalar(
                select(SessionState).where(
                    SessionState.session_id == session_id, SessionState.tenant_id == tenant_id
                )
            )
            if row is None:
                exists = s.scalar(
                    select(ChatSession.id).where(
                        ChatSession.id == session_id, ChatSession.tenant_id == tenant_id
                    )
                )
                if exists is None:
                    raise NotFound(f"session {session_id} not found")
                yield None, None
                return
            head = RowHead(row.version, row.checksum, row.fingerprint, row.position, row.codec)
            frames: list[bytes] | None = [bytes(row.blob)]
            if row.n_chunks:
                key = {"session_id": session_id, "version": row.version}
                frames = fetch_frames(s, CHUNKS, key)
                if len(frames) != row.n_chunks:
                    frames = None
        yield head, frames
