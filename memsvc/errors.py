"""Domain errors: what services raise when a request cannot be carried out.

They say *what* went wrong (a stable machine-readable ``code`` and a message); mapping
them to HTTP statuses is ``memsvc.api.errors``' job, in one table. Services never
import HTTP types.
"""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    """A failure a client can act on: ``code`` is stable, ``message`` is for people."""

    code = "bad_request"

    def __init__(self, message: str, *, details: list[Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(DomainError):
    """The request contradicts itself or the session (e.g. a role the turn cannot take)."""

    code = "bad_request"


class Unauthorized(DomainError):
    """No valid credentials."""

    code = "unauthorized"


class NotFound(DomainError):
    """Unknown id, or one of another tenant: the two are never told apart."""

    code = "not_found"


class Conflict(DomainError):
    """The request conflicts with the current state (a version, a key, an idempotency key)."""

    code = "conflict"


class IdempotencyMismatch(Conflict):
    """An idempotency key already committed in the session, sent with other content."""

    code = "idempotency_mismatch"


class SessionBusy(Conflict):
    """Another turn holds the session."""

    code = "session_busy"


class MemoryOff(Conflict):
    """A memory operation on a service whose memory is off: the model has no Retention
    Layer (e.g. a converted base model), or memory is disabled by setting."""

    code = "memory_off"


class TooLarge(DomainError):
    """A body, message or history beyond the configured limits."""

    code = "too_large"


class Unprocessable(DomainError):
    """Well-formed but invalid values."""

    code = "invalid_request"


class RateLimited(DomainError):
    """A per-tenant limit was reached; ``retry_after`` seconds until it may pass."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(DomainError):
    """The service cannot take the request now (shutting down, model not loaded)."""

    code = "unavailable"
