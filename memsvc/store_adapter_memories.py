"""Part of the store adapter: its memory half, storage's memories as memsvc records (a
mixin of :class:`memsvc.store_adapter.StorageStore`, kept apart to keep each file readable)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import delete, func, select

from memsvc.errors import NotFound
from memsvc.store import MemoryEventRec, MemoryRec
from storage import errors as serr
from storage.memories import MemoryInfo
from storage.models import Memory, Message, User

MAX_ERASE_SESSIONS = 1_000_000


def memory_rec(info: MemoryInfo) -> MemoryRec:
    fields = asdict(info)
    fields["message_id"] = None if info.message_id is None else str(info.message_id)
    return MemoryRec(**fields)


class MemoryStoreMixin:
    """Memories over ``self.storage`` (see :class:`memsvc.store.Store`)."""

    storage: Any

    # a memory's row is inserted with its slots, by the commit of the write's bank views
    # (Storage.commit_turn / commit_slots, see storage.memory_commit)

    def memory_merged(self, tenant_id, memory_id, cause) -> MemoryRec:
        return memory_rec(self.storage.memories.merged(tenant_id, memory_id, cause))

    def find_memory_text(self, tenant_id, namespace, text) -> str | None:
        return self.storage.memories.find_text(tenant_id, namespace, text)

    def search_memory_text(self, tenant_id, namespace, needle) -> list[str]:
        return self.storage.memories.search_text(tenant_id, namespace, needle)

    def retire_memories(self, tenant_id, memory_ids, cause) -> int:
        return self.storage.memories.retire_empty(tenant_id, memory_ids, cause)

    def get_memory(self, tenant_id: str, memory_id: str) -> MemoryRec:
        try:
            return memory_rec(self.storage.memories.get(tenant_id, memory_id))
        except serr.NotFound as exc:
            raise NotFound(str(exc)) from exc

    def get_memories(self, tenant_id: str, memory_ids: list[str]) -> list[MemoryRec]:
        return [memory_rec(m) for m in self.storage.memories.get_many(tenant_id, memory_ids)]

    def list_memories(self, tenant_id: str, user_id: str, **filters: Any) -> list[MemoryRec]:
        return [memory_rec(m) for m in self.storage.memories.list(tenant_id, user_id, **filters)]

    def memory_events(self, tenant_id: str, memory_id: str) -> list[MemoryEventRec]:
        return [
            MemoryEventRec(**asdict(e))
            for e in self.storage.memories.memory_events(tenant_id, memory_id)
        ]

    def delete_memory(self, tenant_id: str, memory_id: str, cause: str) -> int:
        """Evict the memory's slots (index included), then tombstone it; returns slots."""
        self.get_memory(tenant_id, memory_id)  # 404 for unknown / foreign / deleted
        slot_ids = self.storage.memories.slot_ids(tenant_id, memory_id)
        gone = self.storage.slots.evict(tenant_id, slot_ids, cause=cause)
        try:
            self.storage.memories.mark_deleted(tenant_id, memory_id, cause)
        except serr.NotFound as exc:  # deleted concurrently
            raise NotFound(str(exc)) from exc
        return gone

    def memory_history(self, tenant_id, user_id, memory_id, limit, offset):
        events = self.storage.memories.history(
            tenant_id, user_id, memory_id=memory_id, limit=limit, offset=offset
        )
        return [MemoryEventRec(**asdict(e)) for e in events]

    def erase_user(self, tenant_id: str, user_id: str) -> dict[str, int]:
        """Erase everything held about a user; the counts of what went.

        Sessions (with their messages, states and session-scoped slots), the user's
        namespace slots, memories (also those of the user's sessions) and their change log,
        user-scoped documents, and the user row. 404 when the tenant has no such user.
        """
        st = self.storage
        with st.db.read() as s:
            internal = s.scalar(
                select(User.id).where(User.tenant_id == tenant_id, User.external_id == user_id)
            )
        has_memories = bool(st.memories.list(tenant_id, user_id, limit=1))
        if internal is None and not has_memories:
            raise NotFound(f"user {user_id} not found")
        sessions = st.sessions.admin_list(
            tenant_id=tenant_id, external_user_id=user_id, limit=MAX_ERASE_SESSIONS
        )
        ids = [x.id for x in sessions]
        counts = {"sessions": 0, "messages": 0, "memories": 0, "slots": 0, "documents": 0}
        with st.db.read() as s:
            if ids:
                counts["messages"] = int(
                    s.scalar(select(func.count(Message.id)).where(Message.session_id.in_(ids)))
                )
            counts["memories"] = int(
                s.scalar(
                    select(func.count(Memory.id)).where(
                        Memory.tenant_id == tenant_id,
                        Memory.deleted_at.is_(None),
                        (Memory.user_id == user_id) | Memory.session_id.in_(ids or [""]),
                    )
                )
            )
        counts["slots"] += st.slots.delete_namespace(tenant_id, f"user:{user_id}", "user erased")
        for session_id in ids:
            counts["slots"] += st.slots.delete_namespace(
                tenant_id, f"session:{session_id}", "user erased"
            )
            counts["sessions"] += int(st.delete_session(tenant_id, session_id))
        st.memories.erase_user(tenant_id, user_id)
        with st.db.write() as s:
            if ids:
                s.execute(
                    delete(Memory).where(Memory.tenant_id == tenant_id, Memory.session_id.in_(ids))
                )
            if internal is not None:
                s.execute(delete(User).where(User.id == internal))
        for doc in st.passages.list_documents(tenant_id):
            meta = doc.meta or {}
            if meta.get("scope") == "user" and meta.get("user") == user_id:
                counts["documents"] += int(st.passages.delete_document(tenant_id, doc.id))
        return counts
