"""Liveness, readiness and Prometheus metrics (no auth)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from memsvc.api.deps import Svc
from memsvc.api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and answering."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(services: Svc) -> JSONResponse:
    """Database, Redis (when configured) and the model are all usable: 200, else 503."""
    checks = services.readiness()
    ok = all(c.get("ok") for c in checks.values())
    body = Health(status="ready" if ok else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", response_class=Response)
def metrics(services: Svc) -> Response:
    """Prometheus text exposition of this process's metrics."""
    return Response(services.metrics.render(), media_type=services.metrics.content_type)
