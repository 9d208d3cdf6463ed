"""Keyed memories ("items"): put / get / delete / search / namespaces (the LangGraph
store's server side; see :mod:`storage.memory_items` for how they are stored).

Search reads at most ``MAX_SEARCH`` of the user's items under the collection prefix,
newest update first, applies the value ``filter``, then ranks by cosine similarity of
the item texts to ``query`` (MiniLM, the memory API's embedder; items without text come
last, with no score) and pages. Namespaces are ``[user_id, *collection]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from memsvc.errors import Unprocessable
from memsvc.records_items import (
    ItemDeleted,
    ItemList,
    ItemOut,
    ItemPut,
    ItemSearch,
    ItemWriteOut,
    NamespaceList,
    NamespaceQuery,
)
from memsvc.store import SessionRec
from memsvc.threads import run_in_threadpool

MAX_SEARCH = 5000
MAX_NAMESPACE_ROWS = 50_000
WILDCARD = "*"
_OPS = {
    "$eq": lambda a, b: a == b,
    "$ne": lambda a, b: a != b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}


def item_out(it: Any, score: float | None = None) -> ItemOut:
    return ItemOut(
        id=it.id,
        user_id=it.user_id,
        collection=it.collection,
        key=it.key,
        value=it.value or {},
        text=it.text,
        slots=it.slots,
        created_at=it.created_at,
        updated_at=it.updated_at,
        score=score,
    )


def _lookup(value: Any, path: str) -> Any:
    """``value["a"]["b"]`` for path ``a.b`` (None when absent)."""
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def matches(value: dict, flt: dict[str, Any]) -> bool:
    """Whether a document passes a filter: field → value (equality) or {$op: operand}."""
    for path, cond in flt.items():
        actual = _lookup(value, path)
        if isinstance(cond, dict) and cond and all(k.startswith("$") for k in cond):
            for op, operand in cond.items():
                if op not in _OPS:
                    raise Unprocessable(f"unknown filter operator {op}; use one of {sorted(_OPS)}")
                try:
                    if actual is None or not _OPS[op](actual, operand):
                        return False
                except TypeError:  # comparing a number with a string: no match
                    return False
        elif actual != cond:
            return False
    return True


def _fits(names: list[str], pattern: list[str]) -> bool:
    return len(names) >= len(pattern) and all(
        p in (WILDCARD, n) for p, n in zip(pattern, names, strict=False)
    )


def namespace_matches(ns: list[str], prefix: list[str] | None, suffix: list[str] | None) -> bool:
    """LangGraph's list_namespaces match: prefix / suffix with ``*`` for any one name."""
    if prefix and not _fits(ns, prefix):
        return False
    return not suffix or _fits(ns[::-1], suffix[::-1])


@dataclass(frozen=True)
class _Keyed:
    """What the embedding cache needs: an id that changes with the text."""

    id: str
    text: str


class ItemService:
    """See the module docstring."""

    def __init__(self, store: Any, memory: Any, embeddings: Any, limits: Any = None) -> None:
        self.store, self.memory, self.embeddings = store, memory, embeddings
        self.limits = limits

    async def put(self, tenant_id: str, user_id: str, body: ItemPut) -> ItemWriteOut:
        if self.limits is not None:  # a new key past the memories-per-user limit: 429
            await run_in_threadpool(
                self.limits.check_item_write, tenant_id, user_id, body.collection, body.key
            )
        item, replaced = await run_in_threadpool(
            self.store.put_item,
            tenant_id,
            user_id,
            body.collection,
            body.key,
            body.value,
            body.text,
        )
        written = 0
        if body.remember and body.text and self.memory is not None and self.memory.enabled:
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
            ids, gate = await self.memory.write_slots(owner, body.text, item.id)
            await run_in_threadpool(
                self.store.item_slots_written, tenant_id, item.id, len(ids), gate
            )
            written = len(ids)
        out = item_out(item).model_copy(update={"slots": written})
        return ItemWriteOut(item=out, replaced=replaced, slots_written=written)

    async def get(self, tenant_id: str, user_id: str, collection: list[str], key: str) -> ItemOut:
        item = await run_in_threadpool(self.store.get_item, tenant_id, user_id, collection, key)
        return item_out(item)

    async def delete(
        self, tenant_id: str, user_id: str, collection: list[str], key: str
    ) -> ItemDeleted:
        memory_id, gone = await run_in_threadpool(
            self.store.delete_item, tenant_id, user_id, collection, key
        )
        return ItemDeleted(id=memory_id, slots_removed=gone)

    async def search(self, tenant_id: str, user_id: str, body: ItemSearch) -> ItemList:
        pool = await run_in_threadpool(
            self.store.scan_items, tenant_id, user_id, body.collection_prefix, MAX_SEARCH
        )
        if body.filter:
            pool = [it for it in pool if matches(it.value or {}, body.filter)]
        window = slice(body.offset, body.offset + body.limit)
        if not body.query:
            out = [item_out(it) for it in pool[window]]
            return ItemList(items=out, limit=body.limit, offset=body.offset)
        with_text = [it for it in pool if it.text]
        scored: list[tuple[Any, float | None]] = []
        if with_text:
            q = await run_in_threadpool(self.embeddings.embedder.embed, [body.query])
            keyed = [_Keyed(f"{it.id}@{it.updated_at.isoformat()}", it.text) for it in with_text]
            mat = await run_in_threadpool(self.embeddings.matrix, keyed)
            scores = mat @ q[0]
            order = np.argsort(-scores, kind="stable").tolist()
            scored = [(with_text[i], float(scores[i])) for i in order]
        scored += [(it, None) for it in pool if not it.text]
        out = [item_out(it, score) for it, score in scored[window]]
        return ItemList(items=out, limit=body.limit, offset=body.offset)

    async def namespaces(self, tenant_id: str, body: NamespaceQuery) -> NamespaceList:
        prefix = body.prefix or []
        user = prefix[0] if prefix and prefix[0] != WILDCARD else None
        literal: list[str] = []
        for name in prefix[1:]:
            if name == WILDCARD:
                break
            literal.append(name)
        rows = await run_in_threadpool(
            self.store.item_namespaces, tenant_id, user, literal, MAX_NAMESPACE_ROWS
        )
        found: set[tuple[str, ...]] = set()
        for user_id, collection in rows:
            ns = [user_id, *collection]
            if namespace_matches(ns, body.prefix, body.suffix):
                found.add(tuple(ns[: body.max_depth] if body.max_depth else ns))
        ordered = sorted(found)[body.offset : body.offset + body.limit]
        return NamespaceList(namespaces=[list(ns) for ns in ordered])
