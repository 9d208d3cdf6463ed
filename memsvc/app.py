"""The FastAPI application factory: ``create_app(settings)``.

Building the app builds the services (migrations, storage, model); the lifespan starts
and stops the scheduler thread. Routers are thin: each route is one manager call.
"""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request

from memsvc.api import admin, documents, health, items, memories, openai, sessions
from memsvc.api import mcp as mcp_api
from memsvc.api.errors import install_error_handlers
from memsvc.api.limits import BodyLimitMiddleware
from memsvc.config import Settings
from memsvc.services.container import Services


def create_app(settings: Settings | None = None, services: Services | None = None) -> FastAPI:
    """The memsvc API for ``settings`` (default: from the environment / ``.env``)."""
    settings = settings or Settings()
    services = services or Services.build(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        services.start()
        try:
            await services.reindex_if_needed()  # another model's memory slots re-encoded
            async with app.state.mcp_sessions.run():  # the /mcp transport's task group
                yield
        finally:
            services.stop()

    app = FastAPI(
        title="memsvc",
        version="0.1.0",
        description="Persistent-memory chat and RAG on a RetNet with a Retention Layer.",
        lifespan=lifespan,
    )
    app.state.services = services
    install_error_handlers(app)
    for module in (health, sessions, documents, admin, openai, memories):  # openai: H7 (issue 6)
        app.include_router(module.router)
    app.include_router(items.router)
    app.state.mcp_sessions = mcp_api.install(app, services)
    _install_latency(app, services)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    return app


def _install_latency(app: FastAPI, services: Services) -> None:
    """Record every request's latency by route template (not raw path: bounded labels)."""

    @app.middleware("http")
    async def latency(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        services.metrics.request_latency.labels(
            request.method, path, str(response.status_code)
        ).observe(time.perf_counter() - start)
        return response
