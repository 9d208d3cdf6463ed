"""Request and response schemas of keyed memories ("items", the LangGraph store's unit).

An item lives at (user, collection, key): ``collection`` a path of names, ``key`` unique
within it; its ``value`` is a JSON document, its optional ``text`` is what semantic
search reads (and, with ``remember``, what is written as memory slots for chat).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from memsvc.records import Strict

MAX_DEPTH = 16  # names in a collection path
MAX_NAME = 200  # characters of one name
MAX_COLLECTION_JSON = 1000  # the stored column's width
MAX_VALUE_BYTES = 64 * 1024  # a document, as canonical JSON
FILTER_OPERATORS = {"$eq", "$ne", "$gt", "$gte", "$lt", "$lte"}


def check_collection(names: list[str]) -> list[str]:
    """A storable collection path (or ValueError saying why not)."""
    if len(names) > MAX_DEPTH:
        raise ValueError(f"a collection has at most {MAX_DEPTH} names")
    if any(not 1 <= len(n) <= MAX_NAME for n in names):
        raise ValueError(f"collection names have 1 to {MAX_NAME} characters")
    if any("\x00" in n for n in names):
        raise ValueError("names must not contain NUL")
    if len(json.dumps(names, ensure_ascii=False)) > MAX_COLLECTION_JSON:
        raise ValueError(f"the collection path is longer than {MAX_COLLECTION_JSON} characters")
    return names


class ItemPut(Strict):
    collection: list[str] = Field(default_factory=list, description="path of names")
    key: str = Field(min_length=1, max_length=500)
    value: dict[str, Any] = Field(description="the JSON document")
    text: str | None = Field(
        default=None, min_length=1, max_length=16_000, description="what search reads"
    )
    remember: bool = Field(default=False, description="also write the text as memory slots")

    _collection = field_validator("collection")(classmethod(lambda cls, v: check_collection(v)))

    @field_validator("value")
    @classmethod
    def _size(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(v, ensure_ascii=False).encode()) > MAX_VALUE_BYTES:
            raise ValueError(f"value is larger than {MAX_VALUE_BYTES} bytes of JSON")
        return v


class ItemSearch(Strict):
    collection_prefix: list[str] = Field(default_factory=list)
    query: str | None = Field(default=None, min_length=1, max_length=2000)
    filter: dict[str, Any] | None = Field(
        default=None, description="equality on value fields, or {$eq,$ne,$gt,$gte,$lt,$lte}"
    )
    limit: int = Field(default=10, ge=1, le=200)
    offset: int = Field(default=0, ge=0, le=100_000)

    _prefix = field_validator("collection_prefix")(classmethod(lambda cls, v: check_collection(v)))

    @field_validator("filter")
    @classmethod
    def _operators(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        for cond in (v or {}).values():
            if isinstance(cond, dict) and any(k.startswith("$") for k in cond):
                unknown = set(cond) - FILTER_OPERATORS
                if unknown:
                    raise ValueError(f"unknown filter operators {sorted(unknown)}")
        return v


class NamespaceQuery(Strict):
    """Namespaces are ``[user_id, *collection]``; ``"*"`` in prefix/suffix matches any name."""

    prefix: list[str] | None = Field(default=None, max_length=MAX_DEPTH + 1)
    suffix: list[str] | None = Field(default=None, max_length=MAX_DEPTH + 1)
    max_depth: int | None = Field(default=None, ge=1, le=MAX_DEPTH + 1)
    limit: int = Field(default=100, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=100_000)

    @field_validator("prefix", "suffix")
    @classmethod
    def _names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and any(not 1 <= len(n) <= MAX_NAME or "\x00" in n for n in v):
            raise ValueError(f"names have 1 to {MAX_NAME} characters")
        return v


class ItemOut(BaseModel):
    id: str = Field(description="the memory's id")
    user_id: str
    collection: list[str]
    key: str
    value: dict[str, Any]
    text: str | None = None
    slots: int = 0
    created_at: datetime
    updated_at: datetime
    score: float | None = None


class ItemWriteOut(BaseModel):
    item: ItemOut
    replaced: bool
    slots_written: int = 0


class ItemList(BaseModel):
    items: list[ItemOut]
    limit: int
    offset: int


class ItemDeleted(BaseModel):
    id: str
    slots_removed: int


class NamespaceList(BaseModel):
    namespaces: list[list[str]]
