"""``memsvc serve``: run the API under uvicorn.

Typer-compatible: the CLI registers :func:`serve` as a command; ``python -m
memsvc.server --port 0`` runs it standalone (tests start servers this way).
"""

from __future__ import annotations

import argparse
import logging

from memsvc.config import Settings


def serve(
    host: str | None = None,
    port: int | None = None,
    model_dir: str | None = None,
    log_level: str = "info",
) -> None:
    """Serve the API (settings from MEMSVC_* / .env; arguments override host, port, model)."""
    import uvicorn

    from memsvc.app import create_app

    overrides = {k: v for k, v in {"host": host, "port": port, "model_dir": model_dir}.items() if v}
    settings = Settings(**overrides)
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level)


def main() -> None:
    parser = argparse.ArgumentParser(description=serve.__doc__)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model-dir")
    parser.add_argument("--log-level", default="info")
    a = parser.parse_args()
    serve(a.host, a.port, a.model_dir, a.log_level)


if __name__ == "__main__":
    main()
