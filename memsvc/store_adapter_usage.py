"""Part of the store adapter: usage and limit counters (a mixin of
:class:`memsvc.store_adapter.StorageStore`) over :mod:`storage.usage` and
:mod:`storage.counters`, with domain errors."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from memsvc.errors import NotFound
from memsvc.store import UsageRec
from storage import errors as serr


class UsageStoreMixin:
    """Tenant usage from SQL aggregates; window counters and semaphores for limits."""

    storage: Any

    def tenant_usage(self, tenant_id: str) -> UsageRec:
        """The tenant's usage; :class:`NotFound` for an unknown tenant."""
        try:
            got = self.storage.usage.usage(tenant_id)
        except serr.NotFound as exc:
            raise NotFound(f"tenant {tenant_id} not found") from exc
        return UsageRec(**asdict(got))

    def user_memory_count(self, tenant_id: str, user_id: str) -> int:
        """Live memories of one user of the tenant."""
        return self.storage.usage.user_memories(tenant_id, user_id)

    def count_hit(self, name: str, window_s: int) -> tuple[int, float]:
        """One hit in ``name``'s current window: (hits in it so far, seconds to its end)."""
        return self.storage.counters.hit(name, window_s)

    def acquire_slot(self, name: str, limit: int, ttl_s: float) -> str | None:
        """A holder token of semaphore ``name`` (at most ``limit`` holders), or None."""
        return self.storage.counters.acquire(name, limit, ttl_s)

    def release_slot(self, name: str, token: str) -> None:
        self.storage.counters.release(name, token)
