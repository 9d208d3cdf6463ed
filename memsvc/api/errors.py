"""One JSON error body for every failure, and the handlers that produce it.

Every error the API returns looks like::

    {"error": {"code": "not_found", "message": "session 42 not found", "status": 404,
               "details": [...]}}

Client mistakes map to 4xx: malformed JSON 400, validation (unknown fields, bad
generation parameters) 422, unknown or foreign ids 404 (never 403, so existence does
not leak across tenants), too large 413, busy session 409. Anything unexpected is
logged and answered with a generic 500 that reveals nothing of the input.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from memsvc.errors import (
    BadRequest,
    Conflict,
    DomainError,
    MemoryOff,
    NotFound,
    RateLimited,
    SessionBusy,
    TooLarge,
    Unauthorized,
    Unavailable,
    Unprocessable,
)

log = logging.getLogger("memsvc.api.errors")

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "NotFound",
    "SessionBusy",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "error_body",
    "error_response",
    "install_error_handlers",
    "status_of",
]


ApiError = DomainError  # what routers catch: every domain error

# The one table from domain errors to HTTP statuses (most specific class first).
STATUS_OF: list[tuple[type[DomainError], int]] = [
    (SessionBusy, 409),
    (MemoryOff, 409),
    (Conflict, 409),
    (BadRequest, 400),
    (Unauthorized, 401),
    (NotFound, 404),
    (TooLarge, 413),
    (Unprocessable, 422),
    (RateLimited, 429),
    (Unavailable, 503),
]


def status_of(exc: DomainError) -> int:
    """The HTTP status of a domain error (400 for one this table does not name)."""
    return next((status for cls, status in STATUS_OF if isinstance(exc, cls)), 400)


def error_body(status: int, code: str, message: str, details: list[Any] | None = None) -> dict:
    """The uniform error payload."""
    body: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        body["details"] = details
    return {"error": body}


def error_response(
    status: int,
    code: str,
    message: str,
    details: list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A JSONResponse carrying :func:`error_body` (plus WWW-Authenticate on 401)."""
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": "Bearer"}
    return JSONResponse(error_body(status, code, message, details), status, headers=headers)


def _clean_validation_errors(errors: list[dict]) -> list[dict]:
    """Validation errors without the echoed input (which may be huge or sensitive)."""
    return [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in errors
    ]


async def _api_error(_: Request, exc: DomainError) -> JSONResponse:
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, round(exc.retry_after)))}
    return error_response(status_of(exc), exc.code, exc.message, exc.details, headers)


async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = _clean_validation_errors(list(exc.errors()))
    if any(e["type"] == "json_invalid" for e in errors):
        return error_response(400, "malformed_json", "request body is not valid JSON", errors)
    return error_response(422, "invalid_request", "request failed validation", errors)


async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "too_large"}
    code = codes.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _data_error(_: Request, exc: DataError) -> JSONResponse:
    """The database refused a value (a safety net behind validation): the client's input."""
    log.warning("database refused a value: %s", exc.orig)
    return error_response(400, "bad_request", "a value in the request cannot be stored")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error; the request was not applied")


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler above on ``app``."""
    app.add_exception_handler(DomainError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DataError, _data_error)
    app.add_exception_handler(Exception, _unexpected)
