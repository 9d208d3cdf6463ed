"""Per-tenant limits from settings: requests per minute, concurrent turns, memories per user.

Each limit is off when its setting is 0 or unset (the default). Over a limit a call
raises :class:`~memsvc.errors.RateLimited` (429 with ``Retry-After``) *before* anything
is written, so a refused request leaves no trace but the refusal's metric.

- **Requests per minute** count every authenticated tenant request (REST, OpenAI,
  MCP's in-process REST calls) in fixed one-minute windows of wall-clock time, shared
  by all replicas through Redis when configured (see :mod:`storage.counters`). A client
  refused in window ``w`` may retry when it ends: ``Retry-After = 60·(w+1) − t``.
- **Concurrent turns** are places of a per-tenant semaphore, held from the turn's
  acceptance to its commit (or failure); a turn that finds none free is refused with
  ``Retry-After: 1``. Leases expire after ``turn_timeout_s + 30`` s, so a replica that
  dies mid-turn cannot hold a place for ever.
- **Memories per user** count the user's live memories (explicit writes, keyed items
  and chat-written memories alike). An explicit write that would add one more is
  refused; one that only merges into an identical memory, or replaces a keyed item,
  still passes. A chat turn of a user at the limit still answers and commits, but
  writes no memory (``usage.memory_limited`` says so): the conversation matters more
  than one more memory, and the user can free room by deleting memories. Two writes of
  one user racing at the last free place may both pass (the count is read before the
  write, not inside its transaction).
"""

from __future__ import annotations

import logging
import math

from memsvc.config import Settings
from memsvc.errors import NotFound, RateLimited
from memsvc.metrics import Metrics
from memsvc.store import SessionRec, Store
from memsvc.threads import run_in_threadpool

log = logging.getLogger("memsvc.services.limits")

WINDOW_S = 60
TURN_LEASE_MARGIN_S = 30.0
MEMORY_RETRY_AFTER_S = 60.0  # waiting frees nothing; deleting a memory does


def _on(limit: int | None) -> bool:
    return bool(limit and limit > 0)


class TenantLimits:
    """The three limits over the store's shared counters (see the module docstring)."""

    def __init__(self, settings: Settings, store: Store, metrics: Metrics) -> None:
        self.settings, self.store, self.metrics = settings, store, metrics

    def _refuse(self, tenant_id: str, limit: str, message: str, retry_after: float) -> None:
        self.metrics.tenant_limited.labels(tenant_id, limit).inc()
        raise RateLimited(message, retry_after=retry_after)

    # ------------------------------------------------------------------ requests
    def check_request(self, tenant_id: str) -> None:
        """Thread pool: count one request of the tenant; 429 past the per-minute limit."""
        limit = self.settings.limit_requests_per_minute
        if not _on(limit):
            return
        hits, left = self.store.count_hit(f"rpm:{tenant_id}", WINDOW_S)
        if hits > limit:
            wait = max(1, math.ceil(left))
            msg = f"over the limit of {limit} requests per minute; retry in {wait} s"
            self._refuse(tenant_id, "requests_per_minute", msg, wait)

    async def request(self, tenant_id: str) -> None:
        """:meth:`check_request` off the event loop (free when the limit is off)."""
        if _on(self.settings.limit_requests_per_minute):
            await run_in_threadpool(self.check_request, tenant_id)

    # ------------------------------------------------------------------ turns
    def take_turn(self, tenant_id: str) -> str | None:
        """Thread pool: a place among the tenant's running turns (None: no limit)."""
        limit = self.settings.limit_concurrent_turns
        if not _on(limit):
            return None
        ttl = self.settings.turn_timeout_s + TURN_LEASE_MARGIN_S
        token = self.store.acquire_slot(f"turns:{tenant_id}", limit, ttl)
        if token is None:
            msg = f"over the limit of {limit} concurrent turns; retry when one ends"
            self._refuse(tenant_id, "concurrent_turns", msg, 1.0)
        return token

    def give_back_turn(self, tenant_id: str, token: str | None) -> None:
        """Thread pool: free the place :meth:`take_turn` gave (no-op for None). A failure
        only logs: the place's lease expires on its own."""
        if token is None:
            return
        try:
            self.store.release_slot(f"turns:{tenant_id}", token)
        except Exception:
            log.exception("freeing a turn place of tenant %s failed; its lease expires", tenant_id)

    # ------------------------------------------------------------------ memories
    def memory_full(self, tenant_id: str, user_id: str | None) -> bool:
        """Thread pool: whether ``user_id`` holds its limit of live memories already."""
        limit = self.settings.limit_memories_per_user
        if not _on(limit) or not user_id:
            return False
        return self.store.user_memory_count(tenant_id, user_id) >= limit

    def turn_may_write(self, session: SessionRec) -> bool:
        """Thread pool: a turn of ``session`` may write a memory (user-scoped ones count)."""
        if session.memory_scope != "user":
            return True
        return not self.memory_full(session.tenant_id, session.user_id)

    def _refuse_memory(self, tenant_id: str) -> None:
        limit = self.settings.limit_memories_per_user
        msg = f"the user holds the limit of {limit} memories; delete some to write more"
        self._refuse(tenant_id, "memories_per_user", msg, MEMORY_RETRY_AFTER_S)

    def check_memory_write(self, tenant_id: str, user_id: str, text: str) -> None:
        """Thread pool: 429 when an explicit write would add a memory past the limit
        (a write of a live memory's exact text only merges, and passes)."""
        if not self.memory_full(tenant_id, user_id):
            return
        if self.store.find_memory_text(tenant_id, f"user:{user_id}", text) is None:
            self._refuse_memory(tenant_id)

    def check_item_write(self, tenant_id: str, user_id: str, collection, key: str) -> None:
        """Thread pool: 429 when putting a *new* keyed item past the limit (a replace
        of an existing key adds no memory, and passes)."""
        if not self.memory_full(tenant_id, user_id):
            return
        try:
            self.store.get_item(tenant_id, user_id, collection, key)  # type: ignore[attr-defined]
        except NotFound:
            self._refuse_memory(tenant_id)
