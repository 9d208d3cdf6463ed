"""Shared pieces of the end-to-end service tests: backends, clients, limits.

A module of its own, not conftest.py: several test folders have a conftest, and
`from conftest import ...` would get whichever was imported last.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

from memsvc.cli.tenants import tenant_create
from memsvc.config import Settings

PG_ADMIN = os.environ.get(
    "MEMSVC_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MEMSVC_TEST_REDIS", "redis://127.0.0.1:6379/0")

# limits small enough to test 413 cheaply
LIMITS = {
    "MEMSVC_MAX_MESSAGE_CHARS": "2000",
    "MEMSVC_MAX_NEW_TOKENS": "32",
    "MEMSVC_MAX_BODY_BYTES": "65536",
    "MEMSVC_MAX_DOCUMENT_CHARS": "20000",
    "MEMSVC_DEFAULT_MAX_TOKENS": "8",
    "MEMSVC_RAG_THRESHOLD": "0.3",
    "MEMSVC_PASSAGE_TOKENS": "48",
}


@dataclass
class Backend:
    """Where a test server keeps its data (shared by every server of the backend)."""

    name: str
    env: dict[str, str]
    database_url: str
    redis_prefix: str | None

    def settings(self) -> Settings:
        return Settings(
            database_url=self.database_url,
            redis_url=self.env.get("MEMSVC_REDIS_URL"),
            redis_prefix=self.redis_prefix or "memsvc:",
            data_dir=Path(self.env["MEMSVC_DATA_DIR"]),
            model_dir=Path(self.env["MEMSVC_MODEL_DIR"]),
        )

    def new_tenant(self, name: str = "tenant") -> str:
        """A new tenant's API key."""
        return tenant_create(f"{name}-{uuid.uuid4().hex[:6]}", self.settings())[1]


@dataclass
class Client:
    """An httpx client bound to one server and one tenant key."""

    http: httpx.Client
    key: str

    def __call__(self, method: str, path: str, **kw) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.key}", **kw.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kw)
