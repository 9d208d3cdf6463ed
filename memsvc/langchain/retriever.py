"""``MemsvcRetriever``: documents (RAG passages) or memory slots' provenance, as LangChain docs.

Two sources:

- ``documents`` (default, tenant key): ``POST /v1/search``, the passages of the
  tenant's documents ranked by the server's embedder (cosine similarity).
- ``memory`` (admin key): ``GET /admin/memory/slots`` filtered by tenant / user /
  session, i.e. what the model wrote into its memory slots, with provenance (the
  message text span each slot was written from, gate score, reads). Slots are vectors
  in the model's own key space, not in a text-embedding space, so they are ranked by
  word overlap between the query and the provenance text, then by gate score.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.utils import from_env, secret_from_env
from pydantic import Field, SecretStr

from memsvc.client import DEFAULT_BASE_URL, AsyncMemsvcClient, MemsvcClient

_WORD = re.compile(r"\w+")


def overlap(query: str, text: str) -> float:
    """Share of the query's distinct words found in ``text`` (0..1)."""
    q = set(_WORD.findall(query.lower()))
    return len(q & set(_WORD.findall(text.lower()))) / len(q) if q else 0.0


def passage_document(hit: dict[str, Any]) -> Document:
    meta = {k: hit[k] for k in ("passage_id", "document_id", "score")}
    meta = {"source": "documents", **meta}
    return Document(page_content=hit["text"], metadata=meta, id=hit["passage_id"])


def slot_document(slot: dict[str, Any], score: float) -> Document:
    keys = ("id", "tenant_id", "user_id", "session_id", "message_id", "scope", "layer", "gate")
    meta = {k: slot.get(k) for k in (*keys, "reads", "span")}
    return Document(
        page_content=slot.get("text") or "",
        metadata={"source": "memory", "score": score, **meta},
        id=slot["id"],
    )


class MemsvcRetriever(BaseRetriever):
    """Retrieve memsvc document passages or memory-slot provenance (see module doc)."""

    base_url: str = Field(default_factory=from_env("MEMSVC_BASE_URL", default=DEFAULT_BASE_URL))
    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("MEMSVC_API_KEY", default=None)
    )
    """Tenant key (``documents``) or admin key (``memory``)."""
    source: Literal["documents", "memory"] = "documents"
    k: int = Field(default=4, ge=1, le=100)
    threshold: float | None = Field(default=None, ge=-1.0, le=1.0)
    """Minimum cosine score for passages (default: the server's RAG threshold)."""
    user_id: str | None = None
    tenant_id: str | None = None
    """``memory`` only: restrict to one tenant's slots (admin keys see every tenant)."""
    session_id: str | None = None
    """``memory`` only: restrict to one session's slots."""
    timeout: float = 60.0
    max_slots: int = Field(default=1000, ge=1, le=10_000)
    """``memory`` only: how many slots to rank per query."""

    def _client_args(self) -> dict[str, Any]:
        key = self.api_key.get_secret_value() if self.api_key else None
        return {"base_url": self.base_url, "api_key": key, "timeout": self.timeout}

    def _search_body(self, k: int) -> dict[str, Any]:
        body: dict[str, Any] = {"top_k": k}
        if self.threshold is not None:
            body["threshold"] = self.threshold
        if self.user_id:
            body["user_id"] = self.user_id
        return body

    def _slot_params(self) -> dict[str, Any]:
        params = {"tenant_id": self.tenant_id, "user_id": self.user_id, "limit": self.max_slots}
        params["session_id"] = self.session_id
        return {k: v for k, v in params.items() if v is not None}

    def _rank_slots(self, query: str, slots: list[dict], k: int) -> list[Document]:
        scored = [(overlap(query, s.get("text") or ""), s) for s in slots]
        scored.sort(key=lambda pair: (pair[0], pair[1].get("gate", 0.0)), reverse=True)
        return [slot_document(s, score) for score, s in scored[:k]]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[Document]:
        k = k or self.k
        with MemsvcClient(**self._client_args()) as client:
            if self.source == "documents":
                return [passage_document(h) for h in client.search(query, **self._search_body(k))]
            slots = client.request("GET", "/admin/memory/slots", params=self._slot_params())
        return self._rank_slots(query, slots.json()["data"], k)

    async def _aget_relevant_documents(
        self,
        query: str,
        *,
        run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[Document]:
        k = k or self.k
        async with AsyncMemsvcClient(**self._client_args()) as client:
            if self.source == "documents":
                hits = await client.search(query, **self._search_body(k))
                return [passage_document(h) for h in hits]
            r = await client.request("GET", "/admin/memory/slots", params=self._slot_params())
        return self._rank_slots(query, r.json()["data"], k)
