"""Errors raised by storage. Callers (the service) map them to HTTP statuses."""

from __future__ import annotations


class StorageError(Exception):
    """Base class of every error storage raises on purpose."""


class NotFound(StorageError, KeyError):
    """The row does not exist, or belongs to another tenant (the two are indistinguishable)."""

    def __str__(self) -> str:  # KeyError quotes its message; we do not want that
        return str(self.args[0]) if self.args else "not found"


class Conflict(StorageError):
    """A write lost: stale version (compare-and-set failed) or a lock is held by another."""


class IdempotencyMismatch(Conflict):
    """A client key seen before in the session, sent again with other content."""


class StaleVersion(Conflict):
    """Compare-and-set on a session's version failed: someone else wrote first."""

    def __init__(self, session_id: str, expected: int, actual: int | None) -> None:
        self.session_id, self.expected, self.actual = session_id, expected, actual
        super().__init__(
            f"session {session_id}: stale version {expected} (current version is {actual})"
        )


class LockHeld(Conflict):
    """The per-session lock is held by another writer."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"lock {name!r} is held by another writer")


class CorruptStateError(StorageError):
    """A stored blob does not match its checksum. Never returned as a state."""

    def __init__(self, session_id: str, where: str, detail: str = "") -> None:
        self.session_id, self.where = session_id, where
        msg = f"session {session_id}: stored state in {where} fails its checksum"
        super().__init__(msg + (f" ({detail})" if detail else ""))


class FingerprintMismatch(StorageError):
    """A stored state belongs to a different model fingerprint than the caller expects."""

    def __init__(self, session_id: str, stored: str, expected: str) -> None:
        self.session_id, self.stored, self.expected = session_id, stored, expected
        super().__init__(
            f"session {session_id}: state was made by model {stored!r}, not {expected!r}"
        )
