"""Admin operations on memory slots across tenants, over storage's :class:`SlotManager`.

A mixin of :class:`memsvc.storage_adapter.StorageStore` (it uses ``self.slots``,
``self.tenants``, ``self.passages``, ``self.metrics``). Slot ids are global integers, so
an admin can address a slot without naming its tenant; filters that storage does not
offer (gate, reads, age) are applied here on the listed records.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from memsvc.api.errors import NotFound
from memsvc.store import SlotFilter, SlotRec
from storage import errors as serr

SCAN_LIMIT = 1_000_000


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


def _matches(rec: SlotRec, f: SlotFilter, now: datetime) -> bool:
    checks = [
        f.user_id is None or rec.user_id == f.user_id,
        f.session_id is None or rec.session_id == f.session_id,
        f.min_gate is None or rec.gate >= f.min_gate,
        f.max_gate is None or rec.gate <= f.max_gate,
        f.min_reads is None or rec.reads >= f.min_reads,
        f.max_reads is None or rec.reads <= f.max_reads,
    ]
    if f.older_than_s is not None and rec.created_at is not None:
        created = rec.created_at if rec.created_at.tzinfo else rec.created_at.replace(tzinfo=UTC)
        checks.append(created <= now - timedelta(seconds=f.older_than_s))
    return all(checks)


class SlotAdmin:
    """list / get / delete / evict / stats / reindex for the admin API."""

    slots: Any
    tenants: Any
    passages: Any
    metrics: Any

    def _tenant_ids(self, tenant_id: str | None) -> list[str]:
        if tenant_id is not None:
            return [tenant_id]
        return [t.id for t in self.tenants.list()]

    def _matching(self, f: SlotFilter, limit: int) -> list[SlotRec]:
        now = datetime.now(UTC)
        out: list[SlotRec] = []
        for tid in self._tenant_ids(f.tenant_id):
            for r in self.slots.list(tid, layer=f.layer, limit=SCAN_LIMIT):
                rec = slot_rec(tid, r)
                if _matches(rec, f, now):
                    out.append(rec)
                    if len(out) >= limit:
                        return out
        return out

    def list_slots(self, f: SlotFilter) -> list[SlotRec]:
        return self._matching(f, f.limit)

    def _find_slot(self, slot_id: str) -> tuple[str, Any]:
        try:
            sid = int(slot_id)
        except ValueError:
            raise NotFound(f"slot {slot_id} not found") from None
        for tid in self._tenant_ids(None):
            try:
                return tid, self.slots.get(tid, sid)
            except serr.NotFound:
                continue
        raise NotFound(f"slot {slot_id} not found")

    def get_slot(self, slot_id: str) -> SlotRec:
        tid, r = self._find_slot(slot_id)
        return slot_rec(tid, r)

    def delete_slot(self, slot_id: str) -> None:
        tid, r = self._find_slot(slot_id)
        self.slots.evict(tid, [r.id])

    def evict_slots(self, f: SlotFilter) -> list[str]:
        recs = self._matching(f, SCAN_LIMIT)
        by_tenant: dict[str, list[int]] = {}
        for rec in recs:
            by_tenant.setdefault(rec.tenant_id, []).append(int(rec.id))
        for tid, ids in by_tenant.items():
            self.slots.evict(tid, ids)
        return [rec.id for rec in recs]

    def stats(self) -> dict[str, Any]:
        tenants = self._tenant_ids(None)
        banks = []
        for tid in tenants:
            for b in self.slots.banks(tid):
                banks.append(
                    {
                        "tenant_id": tid,
                        "namespace": b.namespace,
                        "layer": b.layer,
                        "size": b.size,
                        "capacity": b.capacity,
                    }
                )
        passages = sum(
            len(d.passage_ids) for tid in tenants for d in self.passages.list_documents(tid)
        )
        names = ("local", "redis", "lru", "sql", "miss")
        tiers = {t: self.metrics.value("state_reads", tier=t) for t in names}
        loads = sum(tiers.values())
        hot = tiers["local"] + tiers["redis"] + tiers["lru"]
        return {
            "tenants": len(tenants),
            "slots": sum(b["size"] for b in banks),
            "slot_banks": banks,
            "passages": passages,
            "state_loads": tiers,
            "state_hot_hit_rate": hot / loads if loads else None,
        }

    def reindex(self) -> dict[str, Any]:
        """Rebuild every slot bank's index from SQL."""
        rebuilt = 0
        for tid in self._tenant_ids(None):
            for b in self.slots.banks(tid):
                self.slots.open_bank(tid, b.namespace, b.layer).rebuild()
                rebuilt += 1
        return {"slot_banks_rebuilt": rebuilt}
