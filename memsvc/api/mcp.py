"""``/mcp``: memsvc's MCP tools over Streamable HTTP, authenticated by the tenant's key.

The SDK's session manager runs **stateless** (a fresh transport per request, JSON
answers): API replicas keep no per-client state, so any replica answers any MCP call,
as with REST. The tools call the REST API in process (an ASGI transport into this app,
see :mod:`memsvc.mcp.tools`) with the request's own bearer key.

DNS-rebinding protection (a Host/Origin allow-list) is off: it guards servers that trust
whoever can reach them, while every call here needs a bearer key a browser never sends
on its own.
"""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from memsvc.api.errors import error_response
from memsvc.client import AsyncMemsvcClient
from memsvc.mcp.server import build_server
from memsvc.services.container import Services

PATH = "/mcp"
KEY_SCOPE = "memsvc.api_key"  # where the authenticated key rides to the tools
INTERNAL_URL = "http://memsvc.internal"


def _bearer(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() or None if scheme.lower() == "bearer" else None
    return None


class McpEndpoint:
    """ASGI: check the tenant key (401 otherwise), then hand over to the SDK."""

    def __init__(self, services: Services, manager: StreamableHTTPSessionManager) -> None:
        self.services, self.manager = services, manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _bearer(scope)
        tenant = None
        if key is not None:
            tenant = await run_in_threadpool(self.services.tenants.authenticate, key)
        if tenant is None:
            message = "missing bearer token" if key is None else "invalid or revoked API key"
            await error_response(401, "unauthorized", message)(scope, receive, send)
            return
        scope[KEY_SCOPE] = key
        await self.manager.handle_request(scope, receive, send)


def install(app: FastAPI, services: Services) -> StreamableHTTPSessionManager:
    """Add ``/mcp`` to ``app``; the caller's lifespan must enter ``manager.run()``."""

    async def clients(ctx: Any) -> AsyncMemsvcClient:
        key = ctx.request_context.request.scope[KEY_SCOPE]
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        return AsyncMemsvcClient(INTERNAL_URL, key, transport=transport)

    server = build_server(clients)
    server.streamable_http_app(
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    manager = server.session_manager
    endpoint = McpEndpoint(services, manager)
    app.router.routes.append(Route(PATH, endpoint, methods=["GET", "POST", "DELETE"]))
    return manager
