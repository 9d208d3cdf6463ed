"""Request dependencies: the service container and the two kinds of bearer auth.

- tenant routes: ``Authorization: Bearer <tenant API key>``; the key is hashed and
  looked up by storage, a revoked or unknown key is 401;
- admin routes: ``Authorization: Bearer <MEMSVC_ADMIN_KEY>``, compared in constant
  time; with no admin key configured the admin API answers 401 to everyone.

An authenticated tenant request also counts toward the tenant's requests per minute
(:mod:`memsvc.services.limits`; 429 past the limit), before the route runs.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from memsvc.api.errors import Unauthorized
from memsvc.services.container import Services

_bearer = HTTPBearer(auto_error=False, description="tenant API key or admin key")


def get_services(request: Request) -> Services:
    """The app's service container (built by :func:`memsvc.app.create_app`)."""
    return request.app.state.services


def _token(credentials: HTTPAuthorizationCredentials | None) -> str:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthorized("missing bearer token")
    return credentials.credentials


async def tenant_id(
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The id of the tenant whose API key authorised this request."""
    key = _token(credentials)
    tid = await run_in_threadpool(services.tenants.authenticate, key)
    if tid is None:
        raise Unauthorized("invalid or revoked API key")
    if services.limits is not None:  # the tenant's requests per minute (429 past it)
        await services.limits.request(tid)
    return tid


async def require_admin(
    services: Annotated[Services, Depends(get_services)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Pass only when the bearer token equals the configured admin key."""
    expected = services.settings.admin_key_value()
    given = _token(credentials)
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("admin key required")


Tenant = Annotated[str, Depends(tenant_id)]
Svc = Annotated[Services, Depends(get_services)]
Admin = Depends(require_admin)
