"""Keyed memories ("items") of a user: ``/v1/users/{user_id}/items`` (tenant key).

An item is a memory at (collection, key) with a JSON document; the LangGraph store
(:mod:`memsvc.langgraph`) is a client of these routes. ``collection`` in a query string
is repeated once per name (none: the user's root collection).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from memsvc.api.deps import Svc, Tenant
from memsvc.api.memories import UserId
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
    check_collection,
)

router = APIRouter(tags=["items"])

Collection = Annotated[
    list[str] | None,
    Query(description="the collection path, one name per parameter", max_length=16),
]
Key = Annotated[str, Query(min_length=1, max_length=500)]


def _collection(names: list[str] | None) -> list[str]:
    try:
        return check_collection(names or [])
    except ValueError as exc:
        raise Unprocessable(str(exc)) from None


@router.put("/v1/users/{user_id}/items", response_model=ItemWriteOut)
async def put_item(user_id: UserId, body: ItemPut, tenant: Tenant, services: Svc) -> ItemWriteOut:
    """Insert or replace the document at (collection, key); optionally remember its text."""
    return await services.items.put(tenant, user_id, body)


@router.get("/v1/users/{user_id}/items", response_model=ItemOut)
async def get_item(
    user_id: UserId, key: Key, tenant: Tenant, services: Svc, collection: Collection = None
) -> ItemOut:
    """The item at (collection, key); 404 when there is none."""
    return await services.items.get(tenant, user_id, _collection(collection), key)


@router.delete("/v1/users/{user_id}/items", response_model=ItemDeleted)
async def delete_item(
    user_id: UserId, key: Key, tenant: Tenant, services: Svc, collection: Collection = None
) -> ItemDeleted:
    """Delete the item like any memory (its slots too); 404 when there is none."""
    return await services.items.delete(tenant, user_id, _collection(collection), key)


@router.post("/v1/users/{user_id}/items/search", response_model=ItemList)
async def search_items(
    user_id: UserId, body: ItemSearch, tenant: Tenant, services: Svc
) -> ItemList:
    """Items at or below a collection prefix: value filter, semantic query, paging."""
    return await services.items.search(tenant, user_id, body)


@router.post("/v1/items/namespaces", response_model=NamespaceList)
async def item_namespaces(body: NamespaceQuery, tenant: Tenant, services: Svc) -> NamespaceList:
    """The tenant's item namespaces ``[user_id, *collection]`` (prefix/suffix/max_depth)."""
    return await services.items.namespaces(tenant, body)
