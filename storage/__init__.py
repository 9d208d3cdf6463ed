"""storage: persistence for memsvc (SQL source of truth, Redis hot tier, FAISS indexes).

Start with :class:`storage.Storage` (``Storage.from_urls(database_url, redis_url)``).
Never imports memsvc.
"""

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
