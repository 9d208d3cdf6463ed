"""Admin operations on memory slots across tenants, over storage's :class:`SlotManager`.

A mixin of :class:`memsvc.storage_adapter.StorageStore` (it uses ``self.slots``,
``self.tenants``, ``self.passages``, ``self.metrics``). Slot ids are global integers, so
an admin can address a slot without naming its tenant. Every filter is storage's
(:class:`storage.slot_manager.SlotQuery`, applied in SQL across tenants): nothing here
loops over tenants.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from memsvc.api.errors import NotFound
from memsvc.store import SlotFilter, SlotRec
from storage import errors as serr
from storage import namespace
from storage.slot_manager import SlotQuery


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
