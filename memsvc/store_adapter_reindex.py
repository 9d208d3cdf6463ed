"""Part of the store adapter: slot banks another model wrote and the storage steps of
re-encoding them (a mixin of :class:`memsvc.store_adapter.StorageStore`; see
:mod:`storage.reindex` and :mod:`memsvc.services.reindex`)."""

from __future__ import annotations

from typing import Any

from memsvc.store import MemoryRec
from memsvc.store_adapter_memories import memory_rec
from storage import reindex


class ReindexStoreMixin:
    """Slot-model bookkeeping over ``self.storage`` (see :class:`memsvc.store.Store`)."""

    storage: Any

    def set_slot_model(self, fingerprint: str) -> None:
        """Banks created from now on record ``fingerprint`` (the serving model)."""
        self.storage.slots.model_fingerprint = fingerprint

    def adopt_slot_banks(self, fingerprint: str, d_key: int, d_value: int) -> int:
        return reindex.adopt_unstamped(self.storage.db, fingerprint, d_key, d_value)

    def stale_slot_namespaces(
        self, fingerprint: str, d_key: int, d_value: int
    ) -> list[tuple[str, str]]:
        return reindex.stale_namespaces(self.storage.db, fingerprint, d_key, d_value)

    def namespace_memories(self, tenant_id: str, namespace: str) -> list[MemoryRec]:
        infos = reindex.live_memories(self.storage.db, tenant_id, namespace)
        return [memory_rec(i) for i in infos]

    def namespace_version(self, tenant_id: str, namespace: str) -> tuple:
        return reindex.namespace_version(self.storage.db, tenant_id, namespace)

    def reset_slot_namespace(self, tenant_id: str, namespace: str) -> int:
        return reindex.reset_namespace(self.storage.slots, self.storage.db, tenant_id, namespace)

    def finish_slot_namespace(self, tenant_id: str, namespace: str, fingerprint: str) -> None:
        reindex.finish_namespace(self.storage.db, tenant_id, namespace, fingerprint)
