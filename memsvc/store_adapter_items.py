"""Part of the store adapter: its keyed-memory half (a mixin of
:class:`memsvc.store_adapter.StorageStore`): storage's :mod:`storage.memory_items` with
domain errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memsvc.errors import NotFound
from storage import errors as serr


class ItemStoreMixin:
    """Keyed memories over ``self.storage`` (see :mod:`storage.memory_items`)."""

    storage: Any

    def put_item(self, tenant_id, user_id, collection, key, value, text) -> tuple[Any, bool]:
        """Insert or replace; (item, replaced). A replaced item's old slots are evicted."""
        st = self.storage
        item, replaced, stale = st.items.put(tenant_id, user_id, collection, key, value, text)
        for memory_id in stale:
            st.slots.evict(tenant_id, st.memories.slot_ids(tenant_id, memory_id), "item replaced")
        return item, replaced

    def get_item(self, tenant_id: str, user_id: str, collection: Sequence[str], key: str) -> Any:
        try:
            return self.storage.items.get(tenant_id, user_id, collection, key)
        except serr.NotFound as exc:
            raise NotFound(str(exc)) from exc

    def delete_item(self, tenant_id, user_id, collection, key) -> tuple[str, int]:
        """Delete like any memory: slots, index, tombstone (which drops the document)."""
        memory_id = self.get_item(tenant_id, user_id, collection, key).id
        gone = self.delete_memory(tenant_id, memory_id, "item delete")  # MemoryStoreMixin
        return memory_id, gone

    def item_slots_written(self, tenant_id: str, memory_id: str, n: int, gate: float) -> None:
        self.storage.items.set_slots(tenant_id, memory_id, n, gate)

    def scan_items(self, tenant_id, user_id, prefix, limit) -> list[Any]:
        return self.storage.items.scan(tenant_id, user_id, prefix, limit)

    def item_namespaces(self, tenant_id, user_id, prefix, limit) -> list[tuple[str, list[str]]]:
        return self.storage.items.namespaces(tenant_id, user_id, prefix, limit)
