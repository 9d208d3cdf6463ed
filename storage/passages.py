"""Documents and passages for RAG: text, offsets and embeddings, searchable per tenant.

Passage embeddings use the same mechanism as slots (:mod:`storage.banks`): one bank per
tenant (namespace ``"docs"``) whose change log a FAISS index replays; deleting a document
logs the removal of its passages, so they are never returned again.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.banks import BankIndex, log_changes
from storage.db import Database
from storage.errors import NotFound, StorageError
from storage.metrics import StorageMetrics
from storage.models import Document, Passage, VectorBank, new_id, utcnow
from storage.vector_index import IndexParams, as_matrix

_NS = "docs"


@dataclass(frozen=True)
class PassageIn:
    """A passage to store: text and its [start, end) character offsets in the document."""

    text: str
    start: int
    end: int


@dataclass(frozen=True)
class PassageInfo:
    id: int
    document_id: str
    ordinal: int
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class PassageHit:
    id: int
    document_id: str
    ordinal: int
    text: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class DocumentInfo:
    id: str
    name: str
    meta: dict
    created_at: datetime
    passage_ids: list[int]


def _load(s: Session, bank_id: int, ids: list[int] | None) -> tuple[np.ndarray, np.ndarray, dict]:
    q = select(Passage.id, Passage.embedding).where(Passage.bank_id == bank_id)
    if ids is not None:
        q = q.where(Passage.id.in_(ids))
    rows = s.execute(q.order_by(Passage.id)).all()
    vecs = [np.frombuffer(r[1], dtype="<f4") for r in rows]
    return (
        np.array([r[0] for r in rows], dtype=np.int64),
        np.stack(vecs) if vecs else np.empty((0, 0), np.float32),
        {},
    )


class PassageManager:
    """Documents, passages and passage search; every call takes the tenant."""

    def __init__(
        self,
        db: Database,
        metrics: StorageMetrics,
        *,
        index_dir: Path | None = None,
        params: IndexParams | None = None,
    ) -> None:
        self.db, self.metrics, self.index_dir, self.params = db, metrics, index_dir, params
        self._indexes: dict[str, BankIndex] = {}
        self._lock = threading.Lock()

    def _bank(self, tenant_id: str, dim: int | None) -> tuple[int, BankIndex] | None:
        """The tenant's passage bank (created when ``dim`` is given)."""
        with self._lock:
            if tenant_id in self._indexes:
                ix = self._indexes[tenant_id]
                return ix.bank_id, ix
            with self.db.read() as s:
                row = s.scalar(
                    select(VectorBank).where(
                        VectorBank.tenant_id == tenant_id, VectorBank.kind == "passage"
                    )
                )
            if row is None and dim is None:
                return None
            if row is None:
                try:
                    with self.db.write() as s:
                        row = VectorBank(
                            tenant_id=tenant_id,
                            kind="passage",
                            namespace=_NS,
                            layer=0,
                            dim=dim,
                            d_value=0,
                            last_seq=0,
                            clock=0,
                        )
                        s.add(row)
                except IntegrityError as exc:
                    raise NotFound(f"tenant {tenant_id} not found") from exc
            path = self.index_dir / f"passages-{row.id}.faiss" if self.index_dir else None
            ix = BankIndex(
                self.db,
                row.id,
                row.dim,
                _load,
                self.metrics,
                kind="passage",
                params=self.params,
                index_path=path,
            )
            ix.open()
            self._indexes[tenant_id] = ix
            return row.id, ix

    def add_document(
        self,
        tenant_id: str,
        name: str,
        passages: Sequence[PassageIn],
        embeddings: object,
        *,
        meta: dict | None = None,
    ) -> DocumentInfo:
        """Store a document with its passages and their embeddings (n, dim)."""
        emb = as_matrix(embeddings, np.asarray(embeddings).shape[-1]) if len(passages) else None
        if emb is not None and emb.shape[0] != len(passages):
            raise ValueError("one embedding per passage")
        doc = Document(
            id=new_id(), tenant_id=tenant_id, name=name, meta=meta or {}, created_at=utcnow()
        )
        if emb is None:  # no passages: no bank needed (and no dimension to give it)
            with self.db.write() as s:
                s.add(doc)
            return DocumentInfo(doc.id, doc.name, doc.meta, doc.created_at, [])
        got = self._bank(tenant_id, emb.shape[1])
        assert got is not None
        bank_id, ix = got
        if emb.shape[1] != ix.dim:
            raise StorageError(f"passage embeddings have dim {ix.dim}, not {emb.shape[1]}")
        with self.db.write() as s:
            s.add(doc)
            rows = [
                Passage(
                    tenant_id=tenant_id,
                    bank_id=bank_id,
                    document_id=doc.id,
                    ordinal=i,
                    text=p.text,
                    start=p.start,
                    end=p.end,
                    embedding=np.ascontiguousarray(emb[i], "<f4").tobytes(),
                )
                for i, p in enumerate(passages)
            ]
            s.add_all(rows)
            s.flush()
            log_changes(s, bank_id, [(r.id, "add") for r in rows])
        ix.sync()
        return DocumentInfo(doc.id, doc.name, doc.meta, doc.created_at, [r.id for r in rows])

    def search(self, tenant_id: str, query: object, k: int = 5) -> list[PassageHit]:
        """The tenant's k passages closest to ``query`` (dim,), best first."""
        got = self._bank(tenant_id, None)
        if got is None:
            return []
        _, ix = got
        scores, ids = ix.search(as_matrix(query, ix.dim)[:1], k)
        hits = [(int(i), float(sc)) for i, sc in zip(ids[0], scores[0], strict=True) if i >= 0]
        by_id = {p.id: p for p in self.get_passages(tenant_id, [i for i, _ in hits])}
        return [
            PassageHit(
                i,
                by_id[i].document_id,
                by_id[i].ordinal,
                by_id[i].text,
                by_id[i].start,
                by_id[i].end,
                sc,
            )
            for i, sc in hits
            if i in by_id
        ]

    def has_passages(self, tenant_id: str) -> bool:
        """Whether the tenant has at least one passage now (one indexed probe in SQL).

        Opens no index: a cheap guard before embedding a query. False again once every
        document is deleted (the passage bank itself stays).
        """
        with self.db.read() as s:
            hit = s.scalar(select(Passage.id).where(Passage.tenant_id == tenant_id).limit(1))
        return hit is not None

    def count(self, tenant_id: str | None = None) -> int:
        """How many passages the tenant has; every tenant's together for None (admin)."""
        q = select(func.count(Passage.id))
        if tenant_id is not None:
            q = q.where(Passage.tenant_id == tenant_id)
        with self.db.read() as s:
            return int(s.scalar(q) or 0)

    def get_passages(self, tenant_id: str, ids: Sequence[int]) -> list[PassageInfo]:
        """The tenant's passages by id, in id order (others' ids are left out)."""
        if not ids:
            return []
        with self.db.read() as s:
            rows = s.scalars(
                select(Passage)
                .where(Passage.tenant_id == tenant_id, Passage.id.in_([int(i) for i in ids]))
                .order_by(Passage.id)
            ).all()
            return [
                PassageInfo(r.id, r.document_id, r.ordinal, r.text, r.start, r.end) for r in rows
            ]

    def list_documents(self, tenant_id: str) -> list[DocumentInfo]:
        """The tenant's documents with their passage ids."""
        with self.db.read() as s:
            docs = s.scalars(
                select(Document)
                .where(Document.tenant_id == tenant_id)
                .order_by(Document.created_at, Document.id)
            ).all()
            out = []
            for d in docs:
                pids = s.scalars(
                    select(Passage.id).where(Passage.document_id == d.id).order_by(Passage.ordinal)
                ).all()
                out.append(DocumentInfo(d.id, d.name, dict(d.meta or {}), d.created_at, list(pids)))
            return out

    def delete_document(self, tenant_id: str, document_id: str) -> bool:
        """Delete a document and its passages; False if it is not the tenant's."""
        got = self._bank(tenant_id, None)
        with self.db.write() as s:
            pids = s.execute(
                delete(Passage)
                .where(Passage.document_id == document_id, Passage.tenant_id == tenant_id)
                .returning(Passage.id, Passage.bank_id)
            ).all()
            res = s.execute(
                delete(Document).where(Document.id == document_id, Document.tenant_id == tenant_id)
            )
            if pids:
                log_changes(s, pids[0][1], [(i, "remove") for i, _ in pids])
        if got is not None:
            got[1].sync()
        return res.rowcount == 1

    def forget_tenant(self, tenant_id: str) -> None:
        """Drop the open passage index of a (deleted) tenant after emptying it."""
        with self._lock:
            ix = self._indexes.pop(tenant_id, None)
        if ix is not None:
            ix.sync()

    def save_indexes(self) -> None:
        """Persist every open passage index (with an ``index_dir``)."""
        with self._lock:
            for ix in self._indexes.values():
                ix.save()
