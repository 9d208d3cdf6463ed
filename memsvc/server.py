"""``memsvc serve``: run the API under uvicorn.

Typer-compatible: the CLI registers :func:`serve` as a command; ``python -m
memsvc.server --port 0`` runs it standalone (tests start servers this way).
"""

from __future__ import annotations

import argparse
import logging

from memsvc.config import Settings

OWN_LOGGERS = ("memsvc", "storage", "retnet_core")


def configure_logging(level: str = "info", verbose: bool = False) -> None:
    """Our own loggers at ``level``; libraries' (Alembic, faiss's loader...) at WARNING.

    Libraries log their start-up at INFO (every migration plugin, each faiss build that
    could not be imported); that is noise to an operator. ``verbose`` lets everything
    through at ``level``.
    """
    fmt = "%(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper() if verbose else "WARNING", format=fmt, force=True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(level.upper())


def serve(
    host: str | None = None,
    port: int | None = None,
    model_dir: str | None = None,
    log_level: str = "info",
    verbose: bool = False,
) -> None:
    """Serve the API (settings from MEMSVC_* / .env; arguments override host, port, model)."""
    import uvicorn

    from memsvc.app import create_app

    overrides = {k: v for k, v in {"host": host, "port": port, "model_dir": model_dir}.items() if v}
    settings = Settings(**overrides)
    configure_logging(log_level, verbose)
    app = create_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level)


def main() -> None:
    parser = argparse.ArgumentParser(description=serve.__doc__)
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--model-dir")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--verbose", action="store_true", help="libraries' INFO logs too")
    a = parser.parse_args()
    serve(a.host, a.port, a.model_dir, a.log_level, a.verbose)


if __name__ == "__main__":
    main()
