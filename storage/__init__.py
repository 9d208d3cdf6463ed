"""storage: persistence for memsvc (SQL source of truth, Redis hot tier, FAISS indexes).

Start with :class:`storage.Storage` (``Storage.from_urls(database_url, redis_url)``).
Never imports memsvc. Names are imported lazily, so ``import storage.vector_index``
(benchmarks) does not pull in SQLAlchemy, Redis or torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Conflict": "storage.errors",
    "CorruptStateError": "storage.errors",
    "FingerprintMismatch": "storage.errors",
    "LockHeld": "storage.errors",
    "NotFound": "storage.errors",
    "StaleVersion": "storage.errors",
    "StorageError": "storage.errors",
    "Storage": "storage.facade",
    "Provenance": "storage.slots",
    "SlotBank": "storage.slots",
    "namespace": "storage.slots",
}

__all__ = [
    "Conflict",
    "CorruptStateError",
    "FingerprintMismatch",
    "LockHeld",
    "NotFound",
    "Provenance",
    "SlotBank",
    "StaleVersion",
    "Storage",
    "StorageError",
    "namespace",
]

if TYPE_CHECKING:  # pragma: no cover
    from storage.errors import (
        Conflict,
        CorruptStateError,
        FingerprintMismatch,
        LockHeld,
        NotFound,
        StaleVersion,
        StorageError,
    )
    from storage.facade import Storage
    from storage.slots import Provenance, SlotBank, namespace


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'storage' has no attribute {name!r}")
