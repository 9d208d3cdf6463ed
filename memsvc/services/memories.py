"""The per-user memory API's service: list / search / write / read / delete / export /
history of a user's memories, and erasing a user (issue 12 §2).

Search is semantic over the memories' text with the MiniLM embedder used for RAG, a
memory scored by its sentence closest to the query
(:mod:`memsvc.services.memory_focus`). It is an exact search (cosine over every
candidate), with embeddings cached in-process by memory id: users hold few enough
memories (capped by ``MAX_SEARCH``) that a FAISS index per user would cost more than it
saves.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import numpy as np

from memsvc.errors import MemoryOff, NotFound, Unprocessable
from memsvc.records import (
    MemoryCreate,
    MemoryDeleted,
    MemoryEventOut,
    MemoryHistory,
    MemoryList,
    MemoryOut,
    MemoryWriteOut,
    UserErased,
)
from memsvc.services.memory_focus import focus, memory_sentences
from memsvc.services.memory_outcome import memory_off_reason
from memsvc.store import MemoryRec, SessionRec
from memsvc.threads import run_in_threadpool

MAX_SEARCH = 5000  # memories scanned by one semantic search


def memory_out(m: MemoryRec, score: float | None = None, history=None) -> MemoryOut:
    return MemoryOut(
        id=m.id,
        user_id=m.user_id,
        scope=m.namespace.partition(":")[0],
        session_id=m.session_id,
        message_id=m.message_id,
        span=m.span,
        text=m.text,
        collection=m.collection,
        key=m.key,
        gate=m.gate,
        slots=m.slots,
        reads=m.reads,
        last_read_at=m.last_read_at,
        created_at=m.created_at,
        updated_at=m.updated_at,
        score=score,
        history=history,
    )


def _aware(t: datetime | None) -> datetime | None:
    return None if t is None or t.tzinfo is not None else t.replace(tzinfo=UTC)


class EmbeddingCache:
    """memory id → unit embedding of its text (LRU, in-process)."""

    def __init__(self, embedder: Any, size: int = 50_000) -> None:
        self.embedder, self.size = embedder, size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._sentences: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def matrix(self, memories: list[MemoryRec]) -> np.ndarray:
        with self._lock:
            missing = [m for m in memories if m.id not in self._cache]
        if missing:
            vecs = self.embedder.embed([m.text for m in missing])
            with self._lock:
                for m, v in zip(missing, vecs, strict=True):
                    self._cache[m.id] = v
                while len(self._cache) > self.size:
                    self._cache.popitem(last=False)
        with self._lock:
            return np.stack([self._cache[m.id] for m in memories])

    def sentence_vectors(self, memories: list[MemoryRec]) -> list[np.ndarray]:
        """Each memory's (S_i, D) unit vectors of its sentences
        (:func:`memsvc.services.memory_focus.memory_sentences`); one sentence: its
        whole-text row of :meth:`matrix`. Both kinds are remembered by id, so a turn
        splits and embeds only memories it has not seen."""
        whole = self.matrix(memories)
        with self._lock:
            missing = [m for m in memories if m.id not in self._sentences]
        parts = [memory_sentences(m.text or "") for m in missing]
        texts = [s for p in parts if len(p) > 1 for s in p]
        vecs = self.embedder.embed(texts) if texts else None
        at = 0
        with self._lock:
            for m, p in zip(missing, parts, strict=True):
                if len(p) > 1:
                    self._sentences[m.id] = vecs[at : at + len(p)]
                    at += len(p)
                else:
                    self._sentences[m.id] = _WHOLE
            while len(self._sentences) > self.size:
                self._sentences.popitem(last=False)
            held = [self._sentences.get(m.id, _WHOLE) for m in memories]
        return [whole[i : i + 1] if h is _WHOLE else h for i, h in enumerate(held)]


_WHOLE = np.empty((0, 0), dtype=np.float32)  # a one-sentence memory: its whole-text row


class MemoryService:
    """See the module docstring."""

    def __init__(
        self,
        store: Any,
        memory: Any,
        embeddings: EmbeddingCache,
        limits: Any = None,
        notes: Any = None,
    ) -> None:
        self.store, self.memory, self.limits = store, memory, limits
        self.embeddings = embeddings
        self.notes = notes  # memsvc.services.memory_notes.NoteMemory, or None

    async def list(
        self,
        tenant_id: str,
        user_id: str,
        *,
        query: str | None,
        session_id: str | None,
        since: datetime | None,
        limit: int,
        offset: int,
    ) -> MemoryList:
        filters = {"session_id": session_id, "since": _aware(since)}
        if not query:
            got = await run_in_threadpool(
                self.store.list_memories, tenant_id, user_id, limit=limit, offset=offset, **filters
            )
            return MemoryList(memories=[memory_out(m) for m in got], limit=limit, offset=offset)
        pool = await run_in_threadpool(
            self.store.list_memories, tenant_id, user_id, limit=MAX_SEARCH, **filters
        )
        pool = [m for m in pool if m.text]
        if not pool:
            return MemoryList(memories=[], limit=limit, offset=offset)
        q = await run_in_threadpool(self.embeddings.embedder.embed, [query])
        # a memory scores by its sentence closest to the query (a fact told amid chatter)
        vecs = await run_in_threadpool(self.embeddings.sentence_vectors, pool)
        scores = focus(vecs, q[0])[0] @ q[0]
        order = np.argsort(-scores, kind="stable")[offset : offset + limit]
        out = [memory_out(pool[i], float(scores[i])) for i in order.tolist()]
        return MemoryList(memories=out, limit=limit, offset=offset)

    async def write(self, tenant_id: str, user_id: str, body: MemoryCreate) -> MemoryWriteOut:
        if self.notes is not None:  # a model without memory layers: kept as text
            return await self._write_note(tenant_id, user_id, body)
        if reason := memory_off_reason(self.memory):
            raise MemoryOff(f"{reason}; nothing can be written")
        if body.key is not None and body.collection is None:
            raise Unprocessable("a key needs a collection")
        if self.limits is not None:  # 429 before anything is written
            await run_in_threadpool(self.limits.check_memory_write, tenant_id, user_id, body.text)
        owner = SessionRec(
            id="",
            tenant_id=tenant_id,
            user_id=user_id,
            system_prompt=None,
            memory_scope="user",
            created_at=None,
            metadata=None,
            message_count=0,
            token_count=0,
            version=0,
        )
        fields = {"user_id": user_id, "collection": body.collection, "key": body.key}
        feedback = {"remember": True} if body.force else None
        out = await self.memory.write_text(owner, body.text, fields, "api write", feedback)
        return MemoryWriteOut(
            status=out.status,
            memory=None if out.memory is None else memory_out(out.memory),
            gate=out.gate,
            slots_written=len(out.slots_written),
            reason=out.reason,
        )

    async def _write_note(self, tenant_id: str, user_id: str, body: MemoryCreate):
        if body.key is not None and body.collection is None:
            raise Unprocessable("a key needs a collection")
        if self.limits is not None:  # 429 before anything is written
            await run_in_threadpool(self.limits.check_memory_write, tenant_id, user_id, body.text)
        fields = {"collection": body.collection, "key": body.key}
        status, memory = await run_in_threadpool(
            self.notes.write, tenant_id, user_id, body.text, fields
        )
        reason = "duplicate of an existing memory" if status == "merged" else None
        return MemoryWriteOut(
            status=status, memory=memory_out(memory), gate=1.0, slots_written=0, reason=reason
        )

    async def get(self, tenant_id: str, memory_id: str) -> MemoryOut:
        m = await run_in_threadpool(self.store.get_memory, tenant_id, memory_id)
        events = await run_in_threadpool(self.store.memory_events, tenant_id, memory_id)
        history = [MemoryEventOut(**_event_fields(e)) for e in events]
        return memory_out(m, history=history)

    async def delete(self, tenant_id: str, memory_id: str) -> MemoryDeleted:
        gone = await run_in_threadpool(self.store.delete_memory, tenant_id, memory_id, "api delete")
        return MemoryDeleted(id=memory_id, slots_removed=gone)

    async def history(self, tenant_id: str, user_id: str, limit: int, offset: int):
        events = await run_in_threadpool(
            self.store.memory_history, tenant_id, user_id, None, limit, offset
        )
        out = [MemoryEventOut(**_event_fields(e)) for e in events]
        return MemoryHistory(events=out, limit=limit, offset=offset)

    async def export(self, tenant_id: str, user_id: str) -> AsyncIterator[str]:
        """JSON Lines: every memory, then the change log, then the user's sessions' messages."""
        page = 500
        offset = 0
        while True:
            got = await run_in_threadpool(
                self.store.list_memories, tenant_id, user_id, limit=page, offset=offset
            )
            for m in got:
                yield _line("memory", memory_out(m).model_dump(mode="json"))
            if len(got) < page:
                break
            offset += page
        offset = 0
        while True:
            events = await run_in_threadpool(
                self.store.memory_history, tenant_id, user_id, None, page, offset
            )
            for e in events:
                yield _line("event", MemoryEventOut(**_event_fields(e)).model_dump(mode="json"))
            if len(events) < page:
                break
            offset += page
        sessions = await run_in_threadpool(self.store.list_sessions, tenant_id, user_id, 10_000)
        for s in sessions:
            messages = await run_in_threadpool(self.store.list_messages, tenant_id, s.id, 100_000)
            for msg in messages:
                row = {"id": msg.id, "session_id": s.id, "role": msg.role}
                row |= {"content": msg.content, "created_at": _iso(msg.created_at)}
                yield _line("message", row)

    async def erase_user(self, tenant_id: str, user_id: str) -> UserErased:
        counts = await run_in_threadpool(self.store.erase_user, tenant_id, user_id)
        return UserErased(user_id=user_id, **counts)


def _event_fields(e: Any) -> dict[str, Any]:
    return {"memory_id": e.memory_id, "op": e.op, "cause": e.cause, "at": e.at}


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _line(kind: str, row: dict[str, Any]) -> str:
    return json.dumps({"type": kind, **row}, ensure_ascii=False) + "\n"


__all__ = ["MemoryService", "NotFound"]
