"""System prompt states, computed once and shared by every session that starts with them.

A new session with a system prompt starts from the state after
``<|system|> prompt <|end|>``. That state depends only on the model (its fingerprint)
and the prompt's tokens, so it is prefilled once per (tenant, model fingerprint,
prompt) and kept in a bounded in-process LRU. Tenants never share an entry (one
tenant cannot learn from timing what another's prompts are). The system prompt reads
no memory, so the state is the same for every user of the tenant.

Entries hold the serialised state (bytes: nothing can mutate a shared tensor) and its
hash (the start of the passage-snapshot chain). Concurrent first uses of one prompt
wait for one prefill.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from dataclasses import dataclass

from memsvc.engine.requests import PrefillRequest, Segment
from memsvc.threads import run_in_threadpool


@dataclass(frozen=True)
class SystemState:
    """The state after a system prompt: its tokens, serialised state and that state's hash."""

    tokens: int
    data: bytes
    digest: str


class SystemPromptCache:
    """(tenant, fingerprint, prompt) → :class:`SystemState`, LRU of ``capacity`` entries."""

    def __init__(self, runtime, scheduler, capacity: int = 256) -> None:
        self.runtime = runtime
        self.scheduler = scheduler
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str, str], SystemState] = OrderedDict()
        self._pending: dict[tuple[str, str, str], asyncio.Future] = {}
        self._lock = threading.Lock()
        self.prefills = 0  # system prompts fed through the model (misses)

    def _key(self, tenant_id: str, prompt: str) -> tuple[str, str, str]:
        return (tenant_id, self.runtime.fingerprint, prompt)

    def peek(self, tenant_id: str, prompt: str) -> SystemState | None:
        """The cached entry, or None (no prefill)."""
        key = self._key(tenant_id, prompt)
        with self._lock:
            got = self._items.get(key)
            if got is not None:
                self._items.move_to_end(key)
            return got

    async def get(self, tenant_id: str, prompt: str) -> SystemState:
        """The cached entry; on a miss one prefill, shared by concurrent callers."""
        got = self.peek(tenant_id, prompt)
        if got is not None:
            return got
        key = self._key(tenant_id, prompt)
        pending = self._pending.get(key)  # event-loop thread only: no lock needed
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            entry = await self._compute(prompt)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        finally:
            self._pending.pop(key, None)
        fut.set_result(entry)
        self._remember(key, entry)
        return entry

    async def _compute(self, prompt: str) -> SystemState:
        rt = self.runtime
        ids = rt.tokenizer.render_turn({"role": "system", "content": prompt})
        self.prefills += 1
        result = await self.scheduler.run(PrefillRequest([Segment(ids)]))
        data = await run_in_threadpool(rt.state_to_bytes, result.state)
        return SystemState(tokens=len(ids), data=data, digest=rt.state_hash(data))

    def _remember(self, key: tuple[str, str, str], entry: SystemState) -> None:
        if self.capacity <= 0:
            return
        with self._lock:
            self._items[key] = entry
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
