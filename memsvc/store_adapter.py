"""The one adapter from memsvc's :class:`~memsvc.store.Store` to the ``storage`` package.

It builds storage's managers on one database (and Redis when configured), converts
their records to memsvc's, and maps their errors to API errors. Nothing else in memsvc
imports ``storage``.

One file on purpose: it is the whole seam (about 460 lines). Slot admin is a mixin of the
adapter: slot ids are global integers, so an admin addresses a slot without naming its
tenant, and every filter is storage's (:class:`storage.slot_manager.SlotQuery`, in SQL
across tenants).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from memsvc.errors import Conflict, IdempotencyMismatch, NotFound
from memsvc.store import (
    Busy,
    DocumentRec,
    LoadedState,
    MessageRec,
    PassageHit,
    SessionRec,
    SlotFilter,
    SlotRec,
    Store,
    TextMemories,
    TurnCommit,
)
from memsvc.store_adapter_items import ItemStoreMixin
from memsvc.store_adapter_memories import MemoryStoreMixin
from memsvc.store_adapter_reindex import ReindexStoreMixin
from memsvc.store_adapter_usage import UsageStoreMixin
from storage import Storage, namespace
from storage import errors as serr
from storage.config import StateConfig
from storage.memory_commit import MemoryChanges
from storage.passages import PassageIn
from storage.sessions import MessageIn
from storage.slot_manager import SlotQuery

log = logging.getLogger("memsvc.store")
REPLY_SUFFIX = ":reply"


@contextlib.contextmanager
def storage_errors():
    """storage's errors → API errors (404 / 409)."""
    try:
        yield
    except serr.NotFound as exc:
        raise NotFound(str(exc)) from exc
    except serr.LockHeld as exc:
        raise Busy(str(exc)) from exc
    except serr.IdempotencyMismatch as exc:
        raise IdempotencyMismatch(str(exc)) from exc
    except serr.Conflict as exc:
        raise Conflict(str(exc)) from exc


# ---- admin over memory slots, across tenants ---------------------------------------------


def split_namespace(ns: str) -> tuple[str, str | None]:
    """``"user:u1"`` → ("user", "u1"); ``"session:s"`` → ("session", "s")."""
    scope, _, ident = ns.partition(":")
    return scope, ident or None


def slot_rec(tenant_id: str, r: Any) -> SlotRec:
    scope, ident = split_namespace(r.namespace)
    return SlotRec(
        id=str(r.id),
        tenant_id=tenant_id,
        user_id=ident if scope == "user" else None,
        session_id=r.session_id or (ident if scope == "session" else None),
        message_id=None if r.message_id is None else str(r.message_id),
        scope=scope,
        layer=r.layer,
        gate=float(r.gate),
        reads=int(r.reads),
        created_at=r.created_at,
        last_read_at=r.last_read_at,
        text=r.text,
        span=tuple(r.span) if r.span else None,
    )


def slot_query(f: SlotFilter, now: datetime | None = None) -> SlotQuery:
    """memsvc's admin filter as storage's (every condition is applied in SQL)."""
    created_before = None
    if f.older_than_s is not None:
        created_before = (now or datetime.now(UTC)) - timedelta(seconds=f.older_than_s)
    return SlotQuery(
        tenant_id=f.tenant_id,
        namespace=None if f.user_id is None else namespace("user", f.user_id),
        session_id=f.session_id,
        layer=f.layer,
        min_gate=f.min_gate,
        max_gate=f.max_gate,
        min_reads=f.min_reads,
        max_reads=f.max_reads,
        created_before=created_before,
    )


class SlotAdmin:
    """list / get / delete / evict / stats / reindex for the admin API."""

    slots: Any
    tenants: Any
    passages: Any
    metrics: Any

    def list_slots(self, f: SlotFilter) -> list[SlotRec]:
        return [
            slot_rec(r.tenant_id, r) for r in self.slots.admin_list(slot_query(f), limit=f.limit)
        ]

    def _find_slot(self, slot_id: str) -> Any:
        try:
            sid = int(slot_id)
        except ValueError:
            raise NotFound(f"slot {slot_id} not found") from None
        if not 0 < sid < 2**63:  # ids are positive BIGINTs: anything else is no slot
            raise NotFound(f"slot {slot_id} not found")
        try:
            return self.slots.admin_get(sid)
        except serr.NotFound:
            raise NotFound(f"slot {slot_id} not found") from None

    def get_slot(self, slot_id: str) -> SlotRec:
        r = self._find_slot(slot_id)
        return slot_rec(r.tenant_id, r)

    def delete_slot(self, slot_id: str) -> None:
        r = self._find_slot(slot_id)
        self.slots.evict(r.tenant_id, [r.id])

    def evict_slots(self, f: SlotFilter) -> list[str]:
        return [str(i) for i in self.slots.admin_evict(slot_query(f))]

    def stats(self) -> dict[str, Any]:
        banks = [
            {
                "tenant_id": b.tenant_id,
                "namespace": b.namespace,
                "layer": b.layer,
                "size": b.size,
                "capacity": b.capacity,
                "d_key": b.d_key,
                "d_value": b.d_value,
                "fingerprint": b.fingerprint,
            }
            for b in self.slots.admin_banks()
        ]
        passages = self.passages.count()
        names = ("local", "redis", "lru", "sql", "miss")
        tiers = {t: self.metrics.value("state_reads", tier=t) for t in names}
        loads = sum(tiers.values())
        hot = tiers["local"] + tiers["redis"] + tiers["lru"]
        return {
            "tenants": len(self.tenants.list()),
            "slots": sum(b["size"] for b in banks),
            "slot_banks": banks,
            "passages": passages,
            "state_loads": tiers,
            "state_hot_hit_rate": hot / loads if loads else None,
        }

    def reindex(self) -> dict[str, Any]:
        """Rebuild every slot bank's index from SQL."""
        banks = self.slots.admin_banks()
        for b in banks:
            self.slots.open_bank(b.tenant_id, b.namespace, b.layer).rebuild()
        return {"slot_banks_rebuilt": len(banks)}


# ---- the adapter -------------------------------------------------------------------------


def state_config(options: dict[str, Any]) -> StateConfig:
    """storage's :class:`StateConfig` from the service's state settings (see
    ``Settings.state_options``); absent names keep storage's defaults."""
    base = StateConfig()
    codec = replace(
        base.codec,
        **{k: options[k] for k in ("precision", "compression") if k in options},
    )
    rest = {k: options[k] for k in ("ttl_s", "hot_max_bytes", "snapshot_max_bytes") if k in options}
    return replace(base, codec=codec, **rest)


class StorageStore(
    SlotAdmin, ItemStoreMixin, MemoryStoreMixin, ReindexStoreMixin, UsageStoreMixin, Store
):
    """Store over storage's managers (see the module docstring)."""

    def __init__(
        self,
        database_url: str,
        redis_url: str | None,
        registry: Any,
        redis_prefix: str,
        index_dir: Any = None,
        state_options: dict[str, Any] | None = None,
    ) -> None:
        self.storage = Storage.from_urls(
            database_url,
            redis_url,
            redis_prefix=redis_prefix,
            registry=registry,
            index_dir=index_dir,
            state_config=state_config(state_options or {}),
        )
        st = self.storage
        self.db, self.redis, self.metrics = st.db, st.redis, st.metrics
        self.tenants, self.sessions, self.messages = st.tenants, st.sessions, st.messages
        self.states, self.locks = st.states, st.locks
        self.slots, self.passages, self.snapshots = st.slots, st.passages, st.snapshots
        self.memories = st.memories

    # ------------------------------------------------------------------ tenants
    def authenticate(self, key: str) -> str | None:
        return self.tenants.resolve_api_key(key)

    def create_tenant(self, name: str) -> tuple[str, str]:
        """A new tenant and its first key; :class:`Conflict` when the name is taken."""
        with storage_errors():
            tenant = self.tenants.create(name)
        key, _ = self.tenants.create_api_key(tenant.id, name="default")
        return tenant.id, key

    def list_tenants(self) -> list[dict[str, Any]]:
        out = []
        for t in self.tenants.list():
            keys = self.tenants.list_api_keys(t.id)
            live = [k.prefix for k in keys if k.revoked_at is None]
            out.append({"id": t.id, "name": t.name, "created_at": t.created_at, "keys": live})
        return out

    def revoke_tenant(self, tenant_id: str) -> int:
        """Revoke every key of the tenant; returns how many were revoked."""
        with storage_errors():
            self.tenants.get(tenant_id)
            keys = self.tenants.list_api_keys(tenant_id)
        return sum(self.tenants.revoke_api_key(tenant_id, k.id) for k in keys)

    # ------------------------------------------------------------------ sessions
    def _rec(self, info: Any, position: int | None = None) -> SessionRec:
        meta = dict(info.meta or {})
        return SessionRec(
            id=info.id,
            tenant_id=info.tenant_id,
            user_id=meta.get("user"),
            system_prompt=meta.get("system_prompt"),
            memory_scope=meta.get("memory_scope", "user"),
            created_at=info.created_at,
            metadata=meta.get("metadata"),
            message_count=2 * info.version,
            token_count=position if position is not None else 0,
            version=info.version,
        )

    def _position(self, tenant_id: str, session_id: str) -> int:
        """The state's token position: metadata only, neither the blob nor a tier read."""
        meta = self.states.meta(tenant_id, session_id)
        return 0 if meta is None else meta.position

    def create_session(self, tenant_id, user_id, system_prompt, memory_scope, metadata):
        internal = self.tenants.ensure_user(tenant_id, user_id) if user_id else None
        meta = {
            "user": user_id,
            "system_prompt": system_prompt,
            "memory_scope": memory_scope,
            "metadata": metadata,
        }
        info = self.sessions.create(tenant_id, user_id=internal, meta=meta)
        return self._rec(info, 0)

    def get_session(
        self, tenant_id: str | None, session_id: str, with_position: bool = True
    ) -> SessionRec:
        """The session; ``with_position`` also reads its state's position for ``token_count``.

        Turns pass False: they load the state themselves and need no extra read.
        """
        with storage_errors():
            if tenant_id is None:
                tenant_id = self._owner(session_id)
            info = self.sessions.get(tenant_id, session_id)
            position = self._position(tenant_id, session_id) if with_position else None
            return self._rec(info, position)

    def _owner(self, session_id: str) -> str:
        """Tenant of a session (admin lookups across tenants): one indexed read."""
        tenant_id = self.sessions.owner(session_id)
        if tenant_id is None:
            raise serr.NotFound(f"session {session_id} not found")
        return tenant_id

    def list_sessions(self, tenant_id, user_id, limit):
        """Newest first; the user filter is applied in SQL, before the limit."""
        infos = self.sessions.admin_list(tenant_id=tenant_id, external_user_id=user_id, limit=limit)
        positions = self.states.positions([info.id for info in infos])
        return [self._rec(info, positions.get(info.id, 0)) for info in infos]

    def delete_session(self, tenant_id: str, session_id: str) -> None:
        """Messages, states (both tiers) and session-scoped slots go with the session."""
        with storage_errors():
            if not self.storage.delete_session(tenant_id, session_id):
                raise serr.NotFound(f"session {session_id} not found")

    def get_message(self, tenant_id: str, session_id: str, message_id: str) -> MessageRec:
        """One message of the session; 404 when unknown, foreign or of another session."""
        try:
            mid = int(message_id)
        except ValueError:
            raise NotFound(f"message {message_id} not found") from None
        with storage_errors():
            m = self.messages.get(tenant_id, mid)
        if m.session_id != session_id:
            raise NotFound(f"message {message_id} not found")
        return _msg(m)

    def slot_bank(self, tenant_id, ns, layer, d_key, d_value, capacity):
        """The (tenant, namespace, layer) bank: a SlotStore the memory layer reads."""
        from storage import namespace

        with storage_errors():
            return self.slots.bank(
                tenant_id, namespace(*ns), layer, d_key=d_key, d_value=d_value, capacity=capacity
            )

    def bank_views(self, tenant_id, ns, layers, dims):
        """layer → in-memory view of the namespace's bank, all loaded in one transaction."""
        d_key, d_value, capacity = dims
        banks = [self.slot_bank(tenant_id, ns, layer, d_key, d_value, capacity) for layer in layers]
        with storage_errors():
            views = self.storage.bank_views(banks)
        return dict(zip(layers, views, strict=True))

    def commit_slots(self, changes):
        """Write bank views' changes made outside a turn (feedback), in one transaction;
        per change set, the view's id → stored id of each new slot."""
        with storage_errors():
            return self.storage.commit_slots(changes)

    def list_messages(self, tenant_id, session_id, limit):
        with storage_errors():
            self.sessions.get(tenant_id, session_id)
        return [_msg(m) for m in self.messages.list(tenant_id, session_id, limit=limit)]

    def find_turn(self, tenant_id, session_id, key, content=None):
        """The committed turn of idempotency ``key``: two probes of the client-key index.

        With ``content``, a committed turn whose user message differs raises
        :class:`IdempotencyMismatch` (409), as the commit would.
        """
        user = self.messages.by_client_key(tenant_id, session_id, key)
        if user is None:
            return None
        if content is not None and user.content != content:
            raise IdempotencyMismatch(
                f"idempotency key {key!r} was already used in session {session_id} "
                "for a different message"
            )
        reply = self.messages.by_client_key(tenant_id, session_id, key + REPLY_SUFFIX)
        if reply is None:
            return None
        return _msg(user), _msg(reply)

    # ------------------------------------------------------------------ turns
    @contextlib.contextmanager
    def session_lock(self, tenant_id: str, session_id: str, wait_s: float, ttl_s: float = 330.0):
        """Hold the session's lock (Redis lease, or the SQL lease without Redis).

        The lease outlives the longest turn (``turn_timeout_s`` + margin) and expires on
        its own when a process dies holding it.
        """
        with storage_errors():
            lock = self.locks.acquire(tenant_id, session_id, ttl_s=ttl_s, wait_s=wait_s)
        with lock:
            yield lock

    def load_state(self, tenant_id: str, session_id: str) -> LoadedState:
        with storage_errors():
            state = self.states.load(tenant_id, session_id)
            if state is None:  # no state yet: the session's version is still the base
                return LoadedState(None, self.states.version(tenant_id, session_id), "miss")
        return LoadedState(
            state.blob, state.version, state.tier, int(state.position), state.fingerprint
        )

    def commit_text_memories(self, changes: TextMemories) -> None:
        """Text memories written or retired outside a turn (one transaction)."""
        with storage_errors():
            self.storage.commit_memories(_text_memory_changes(changes))

    def commit_turn(self, c: TurnCommit) -> tuple[MessageRec, MessageRec]:
        """Both messages and the state in one transaction (compare-and-set on the version).

        A lost compare-and-set (409) writes nothing: no message without its state.
        """
        key = c.idempotency_key
        messages = [
            MessageIn(
                "user",
                c.user_content,
                client_key=key,
                meta={"tokens": c.user_tokens},
                created_at=c.user_created_at,
            ),
            MessageIn(
                "assistant",
                c.assistant_content,
                client_key=(key + REPLY_SUFFIX) if key else None,
                meta={"tokens": c.assistant_tokens},
                key_binds_content=False,  # generated: a redo may word it differently
                created_at=c.assistant_created_at,
            ),
        ]
        with storage_errors():
            done = self.storage.commit_turn(
                c.tenant_id,
                c.session_id,
                messages,
                c.state,
                fingerprint=c.fingerprint,
                position=c.position,
                expected_version=c.expected_version,
                slot_changes=c.slot_changes,
                memory_changes=_text_memory_changes(c.text_memories),
            )
        user, reply = done.messages
        return _msg(user), _msg(reply)

    # ------------------------------------------------------------------ documents
    def add_document(self, tenant_id, user_id, scope, title, passages, embeddings, tokens):
        meta = {"scope": scope, "user": user_id, "title": title, "tokens": tokens}
        items = [PassageIn(text, start, end) for text, start, end in passages]
        with storage_errors():
            info = self.passages.add_document(tenant_id, title or "", items, embeddings, meta=meta)
        return _doc(info)

    def list_documents(self, tenant_id: str, limit: int) -> list[DocumentRec]:
        docs = [_doc(d) for d in self.passages.list_documents(tenant_id)]
        docs.sort(key=lambda d: d.created_at, reverse=True)
        return docs[:limit]

    def delete_document(self, tenant_id: str, document_id: str) -> None:
        if not self.passages.delete_document(tenant_id, document_id):
            raise NotFound(f"document {document_id} not found")

    def has_passages(self, tenant_id: str) -> bool:
        """Whether the tenant has a passage now (cheap: no embedding, no index opened)."""
        return self.passages.has_passages(tenant_id)

    def search_passages(self, tenant_id, user_id, query, k):
        """Top-k over the tenant's passages; user-scoped documents only for their user."""
        visible = {
            d.id
            for d in self.passages.list_documents(tenant_id)
            if (d.meta or {}).get("scope") != "user" or (d.meta or {}).get("user") == user_id
        }
        hits = self.passages.search(tenant_id, query, k * 4)
        out = [
            PassageHit(str(h.id), h.document_id, h.text, float(h.score))
            for h in hits
            if h.document_id in visible
        ]
        return out[:k]

    # ------------------------------------------------------------------ snapshots
    def get_snapshot(self, tenant_id, fingerprint, start_hash, chain) -> bytes | None:
        with storage_errors():
            snap = self.snapshots.get(tenant_id, fingerprint, start_hash, list(chain))
        return None if snap is None else snap.blob

    def put_snapshot(self, tenant_id, fingerprint, start_hash, chain, blob, position) -> None:
        self.snapshots.put(tenant_id, fingerprint, start_hash, list(chain), blob, position)

    # ------------------------------------------------------------------ health
    def ping(self) -> dict[str, Any]:
        checks: dict[str, Any] = {}
        try:
            with self.db.read() as s:
                s.execute(text("SELECT 1"))
            checks["database"] = {"ok": True, "backend": self.db.engine.dialect.name}
        except Exception as exc:  # readiness reports, never raises
            checks["database"] = {"ok": False, "error": type(exc).__name__}
        if self.redis is not None:
            checks["redis"] = {"ok": bool(self.redis.available())}
        return checks

    def close(self) -> None:
        self.storage.close()


def _doc(d: Any) -> DocumentRec:
    meta = dict(d.meta or {})
    return DocumentRec(
        id=d.id,
        title=meta.get("title"),
        scope=meta.get("scope", "tenant"),
        user_id=meta.get("user"),
        passages=len(d.passage_ids),
        tokens=int(meta.get("tokens", 0)),
        created_at=d.created_at,
    )


def _text_memory_changes(t: TextMemories | None) -> tuple[MemoryChanges, ...]:
    """The storage form of a turn's text memories (none: nothing to write)."""
    if t is None or not (t.new or t.retire):
        return ()
    return (MemoryChanges(t.tenant_id, texts=list(t.new), retire=dict(t.retire)),)


def _msg(m: Any) -> MessageRec:
    return MessageRec(
        id=str(m.id),
        session_id=m.session_id,
        role=m.role,
        content=m.content,
        created_at=m.created_at,
        token_count=(m.meta or {}).get("tokens"),
    )
