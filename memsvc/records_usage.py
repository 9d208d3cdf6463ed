"""The response schema of ``GET /admin/tenants/{tenant_id}/usage``."""

from __future__ import annotations

from pydantic import BaseModel, Field


class StoredBytes(BaseModel):
    """Approximate bytes by kind of data (column lengths; no indexes or row overhead)."""

    states: int
    messages: int
    slots: int
    memories: int
    documents: int
    snapshots: int
    total: int


class LimitsOut(BaseModel):
    """The limits that apply to every tenant (None: unlimited)."""

    requests_per_minute: int | None
    concurrent_turns: int | None
    memories_per_user: int | None


class UsageOut(BaseModel):
    """A tenant's usage, computed from the database (the same on every replica)."""

    tenant_id: str
    sessions: int
    turns: int = Field(description="assistant messages stored (generated or imported)")
    messages: int
    tokens_in: int = Field(description="Σ prompt tokens of the stored turns")
    tokens_out: int = Field(description="Σ completion tokens of the stored turns")
    memories: int = Field(description="live memories (deleted ones excluded)")
    slots: int
    documents: int
    passages: int
    stored_bytes: StoredBytes
    limits: LimitsOut
