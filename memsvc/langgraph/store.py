"""``MemsvcStore``: a LangGraph ``BaseStore`` over memsvc's keyed-memory API (HTTP).

A namespace is ``(user_id, *collection)``: its first label is the memsvc user, the rest
the collection path; a store key is the memory's key. Values are JSON documents.

- ``put``: ``PUT /v1/users/{user}/items`` (insert or replace). The item's *text*, what
  semantic search reads, is taken from the value: the ``index`` fields of the call, else
  the store's ``index_fields``, else the whole document as JSON; ``index=False`` stores
  no text. With ``remember=True`` that text is also written as memory slots of the user,
  so memsvc's model recalls it in chat.
- ``get``: ``GET`` of the same route (a missing key is ``None``); ``delete``: ``DELETE``
  (a missing key is no error, as in LangGraph).
- ``search``: ``POST .../items/search``: everything at or below the namespace prefix,
  ``filter`` on value fields, ``query`` ranked by memsvc's embedder, ``limit``/``offset``.
  The prefix must name the user: a store never searches across users.
- ``list_namespaces``: ``POST /v1/items/namespaces`` (prefix / suffix with ``*``,
  ``max_depth``, paging), over the tenant's users.

Ops of one ``batch``/``abatch`` run in order (a later get sees an earlier put).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
)

from memsvc.client import AsyncMemsvcClient, MemsvcClient, MemsvcError

USER_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


@dataclass(frozen=True)
class Call:
    """One HTTP request of an op and how to read its answer."""

    method: str
    path: str
    kwargs: dict[str, Any]
    parse: Callable[[Any], Result]
    missing: Result = None  # the op's result on 404
    missing_ok: bool = False


def _user(namespace: tuple[str, ...]) -> tuple[str, list[str]]:
    if not namespace:
        raise InvalidNamespaceError(
            "MemsvcStore namespaces start with a user id: (user_id, *collection)"
        )
    user = namespace[0]
    if not USER_ID.match(user):
        raise InvalidNamespaceError(
            f"the namespace's first label is a memsvc user id (letters, digits, _ . : @ -): "
            f"{user!r}"
        )
    return user, list(namespace[1:])


def _item(d: dict[str, Any], cls: type[Item] = Item) -> Item:
    fields = {
        "namespace": (d["user_id"], *d["collection"]),
        "key": d["key"],
        "value": d["value"],
        "created_at": datetime.fromisoformat(d["created_at"]),
        "updated_at": datetime.fromisoformat(d["updated_at"]),
    }
    if cls is SearchItem:
        return SearchItem(**fields, score=d.get("score"))
    return Item(**fields)


def _field(value: Any, path: str) -> Any:
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def item_text(value: dict[str, Any], fields: list[str] | None) -> str | None:
    """The text search reads: the named fields' values (strings as they are, anything
    else as JSON), one per line; the whole document without fields."""
    if not fields or fields == ["$"]:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    parts = []
    for path in fields:
        got = _field(value, path)
        if got is not None:
            parts.append(got if isinstance(got, str) else json.dumps(got, ensure_ascii=False))
    return "\n".join(p for p in parts if p) or None


class MemsvcStore(BaseStore):
    """See the module docstring.

    ``base_url``/``api_key`` default to ``MEMSVC_BASE_URL``/``MEMSVC_API_KEY``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        index_fields: list[str] | None = None,
        remember: bool = False,
        timeout: float = 120.0,
    ) -> None:
        self.base_url, self.api_key, self.timeout = base_url, api_key, timeout
        self.index_fields = index_fields
        self.remember = remember
        self._client: MemsvcClient | None = None

    # ------------------------------------------------------------------ op → request
    def _call(self, op: Op) -> Call:
        if isinstance(op, GetOp):
            user, collection = _user(op.namespace)
            params = {"collection": collection, "key": op.key}
            return Call("GET", f"/v1/users/{user}/items", {"params": params}, _item, None, True)
        if isinstance(op, PutOp):
            user, collection = _user(op.namespace)
            path = f"/v1/users/{user}/items"
            if op.value is None:
                params = {"collection": collection, "key": op.key}
                return Call("DELETE", path, {"params": params}, lambda _: None, None, True)
            text = (
                None
                if op.index is False
                else item_text(dict(op.value), op.index or self.index_fields)
            )
            body = {"collection": collection, "key": op.key, "value": dict(op.value)}
            if text:
                body |= {"text": text[:16_000], "remember": self.remember}
            return Call("PUT", path, {"json": body}, lambda _: None)
        if isinstance(op, SearchOp):
            user, collection = _user(op.namespace_prefix)
            body = {
                "collection_prefix": collection,
                "query": op.query or None,
                "filter": op.filter or None,
                "limit": op.limit,
                "offset": op.offset,
            }
            path = f"/v1/users/{user}/items/search"
            return Call(
                "POST", path, {"json": body}, lambda d: [_item(x, SearchItem) for x in d["items"]]
            )
        if isinstance(op, ListNamespacesOp):
            conds = op.match_conditions or ()
            prefix = next((list(c.path) for c in conds if c.match_type == "prefix"), None)
            suffix = next((list(c.path) for c in conds if c.match_type == "suffix"), None)
            body = {
                "prefix": prefix or None,
                "suffix": suffix or None,
                "max_depth": op.max_depth,
                "limit": op.limit,
                "offset": op.offset,
            }
            return Call(
                "POST",
                "/v1/items/namespaces",
                {"json": body},
                lambda d: [tuple(ns) for ns in d["namespaces"]],
            )
        raise ValueError(f"unknown store operation: {type(op).__name__}")

    @staticmethod
    def _missing(call: Call, exc: MemsvcError) -> Result:
        if call.missing_ok and exc.status == 404:
            return call.missing
        raise exc

    # ------------------------------------------------------------------ BaseStore
    def batch(self, ops: Iterable[Op]) -> list[Result]:
        if self._client is None:
            self._client = MemsvcClient(self.base_url, self.api_key, timeout=self.timeout)
        results: list[Result] = []
        for call in [self._call(op) for op in ops]:
            try:
                r = self._client.request(call.method, call.path, **call.kwargs)
                results.append(call.parse(r.json()))
            except MemsvcError as exc:
                results.append(self._missing(call, exc))
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        calls = [self._call(op) for op in ops]
        results: list[Result] = []
        # one client per call of abatch: an httpx async client belongs to one event loop
        async with AsyncMemsvcClient(self.base_url, self.api_key, timeout=self.timeout) as c:
            for call in calls:
                try:
                    r = await c.request(call.method, call.path, **call.kwargs)
                    results.append(call.parse(r.json()))
                except MemsvcError as exc:
                    results.append(self._missing(call, exc))
        return results

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> MemsvcStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
