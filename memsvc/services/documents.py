"""Document manager (add / list / delete / search) and the per-turn retriever.

Adding a document splits it into passages under the token budget (character offsets
kept), embeds them with the bundled MiniLM and hands text, offsets and vectors to the
store, which indexes them in the tenant's passage index.
"""

from __future__ import annotations

from memsvc.config import Settings
from memsvc.errors import TooLarge, Unprocessable
from memsvc.rag.feed import Embedder, RetrievedPassage, split_passages
from memsvc.records import (
    DocumentCreate,
    DocumentList,
    DocumentOut,
    SearchHit,
    SearchIn,
    SearchOut,
)
from memsvc.store import DocumentRec, Store
from memsvc.threads import run_in_threadpool


def document_out(d: DocumentRec) -> DocumentOut:
    return DocumentOut(
        id=d.id,
        title=d.title,
        scope=d.scope,
        user_id=d.user_id,
        passages=d.passages,
        tokens=d.tokens,
        created_at=d.created_at,
    )


def locate(text: str, passages: list[str]) -> list[tuple[str, int, int]]:
    """(passage, start, end) character offsets in ``text``; whitespace may differ inside."""
    out: list[tuple[str, int, int]] = []
    cursor = 0
    for p in passages:
        first = p.split(maxsplit=1)[0] if p.split() else p
        start = text.find(first, cursor)
        start = cursor if start < 0 else start
        last = p.split()[-1] if p.split() else p
        end = text.find(last, start)
        end = start + len(p) if end < 0 else end + len(last)
        out.append((p, start, end))
        cursor = end
    return out


class DocumentManager:
    """Access-checked document operations; ``count`` is the model tokenizer's length."""

    def __init__(self, settings: Settings, store: Store, embedder: Embedder, tokenizer) -> None:
        self.settings = settings
        self.store = store
        self.embedder = embedder
        self.tokenizer = tokenizer

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def _prepare(self, body: DocumentCreate):
        """Split and embed (CPU work, run in a worker thread)."""
        passages = split_passages(
            body.text, self.settings.passage_tokens, self.count, markdown=body.format == "markdown"
        )
        if not passages:
            raise Unprocessable("document has no text to index")
        located = locate(body.text, passages)
        vectors = self.embedder.embed(passages)
        tokens = sum(self.count(p) for p in passages)
        return located, vectors, tokens

    async def add(self, tenant_id: str, body: DocumentCreate) -> DocumentOut:
        if len(body.text) > self.settings.max_document_chars:
            raise TooLarge(f"document is longer than {self.settings.max_document_chars} characters")
        if body.scope == "user" and not body.user_id:
            raise Unprocessable("scope 'user' needs a user_id")
        located, vectors, tokens = await run_in_threadpool(self._prepare, body)
        rec = await run_in_threadpool(
            self.store.add_document,
            tenant_id,
            body.user_id,
            body.scope,
            body.title,
            located,
            vectors,
            tokens,
        )
        return document_out(rec)

    async def list(self, tenant_id: str, limit: int) -> DocumentList:
        recs = await run_in_threadpool(self.store.list_documents, tenant_id, limit)
        return DocumentList(data=[document_out(d) for d in recs])

    async def delete(self, tenant_id: str, document_id: str) -> None:
        await run_in_threadpool(self.store.delete_document, tenant_id, document_id)

    async def search(self, tenant_id: str, body: SearchIn) -> SearchOut:
        if len(body.query) > self.settings.max_message_chars:
            raise TooLarge(f"query is longer than {self.settings.max_message_chars} characters")
        threshold = self.settings.rag_threshold if body.threshold is None else body.threshold
        hits = await run_in_threadpool(
            self.retrieve, tenant_id, body.user_id, body.query, body.top_k, threshold
        )
        return SearchOut(
            data=[
                SearchHit(
                    passage_id=h.passage_id, document_id=h.document_id, score=h.score, text=h.text
                )
                for h in hits
            ]
        )

    def retrieve(
        self, tenant_id: str, user_id: str | None, query: str, k: int, threshold: float
    ) -> list[RetrievedPassage]:
        """Top-k passages visible to (tenant, user) with cosine ≥ threshold, best first."""
        if not self.store.has_passages(tenant_id):
            return []
        vector = self.embedder.embed([query])[0]
        hits = self.store.search_passages(tenant_id, user_id, vector, k)
        return [
            RetrievedPassage(h.passage_id, h.document_id, h.text, h.score)
            for h in hits
            if h.score >= threshold
        ]
