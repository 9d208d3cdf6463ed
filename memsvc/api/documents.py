"""Documents and passage search: ``/v1/documents``, ``/v1/search``."""

from __future__ import annotations

from fastapi import APIRouter, Query

from memsvc.api.deps import Svc, Tenant
from memsvc.records import DocumentCreate, DocumentList, DocumentOut, SearchIn, SearchOut

router = APIRouter(tags=["documents"])


@router.post("/v1/documents", response_model=DocumentOut, status_code=201)
async def add_document(body: DocumentCreate, tenant: Tenant, services: Svc) -> DocumentOut:
    """Split a text or Markdown document into passages, embed and index them."""
    return await services.documents.add(tenant, body)


@router.get("/v1/documents", response_model=DocumentList)
async def list_documents(
    tenant: Tenant, services: Svc, limit: int = Query(default=100, ge=1, le=1000)
) -> DocumentList:
    """The tenant's documents, newest first."""
    return await services.documents.list(tenant, limit)


@router.delete("/v1/documents/{document_id}", status_code=204)
async def delete_document(document_id: str, tenant: Tenant, services: Svc) -> None:
    """Remove a document, its passages and their index entries."""
    await services.documents.delete(tenant, document_id)


@router.post("/v1/search", response_model=SearchOut)
async def search(body: SearchIn, tenant: Tenant, services: Svc) -> SearchOut:
    """Top-k passages by cosine similarity to the query (above the threshold)."""
    return await services.documents.search(tenant, body)
