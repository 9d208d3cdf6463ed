"""Shapes that exist only on the wire.

Request and response bodies of the domain live in :mod:`memsvc.records` (pydantic
models with their limits: one representation per entity, shared by the services and
the routers); this module holds what only HTTP needs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class Health(BaseModel):
    """Body of /healthz and /readyz."""

    status: str
    checks: dict[str, Any] = {}
