"""``memsvc tenant create|list|revoke`` and ``memsvc migrate``: typer-compatible functions.

Each works directly on the configured database (MEMSVC_DATABASE_URL or the embedded
SQLite file), so an operator can run them next to a live server.
"""

from __future__ import annotations

import json

from memsvc.config import Settings
from memsvc.services.container import migrate, open_store


def _store(settings: Settings | None):
    settings = settings or Settings()
    migrate(settings)
    return open_store(settings)


def tenant_create(name: str, settings: Settings | None = None) -> tuple[str, str]:
    """Create a tenant and its first API key; returns (tenant id, key). Print the key once."""
    store = _store(settings)
    try:
        return store.create_tenant(name)
    finally:
        store.close()


def tenant_list(settings: Settings | None = None) -> list[dict]:
    """Every tenant with the prefixes of its live keys (never the keys)."""
    store = _store(settings)
    try:
        return store.list_tenants()
    finally:
        store.close()


def tenant_revoke(tenant_id: str, settings: Settings | None = None) -> int:
    """Revoke every key of a tenant; returns how many keys were revoked."""
    store = _store(settings)
    try:
        return store.revoke_tenant(tenant_id)
    finally:
        store.close()


def run_migrations(settings: Settings | None = None) -> str:
    """Apply pending migrations; returns the database URL migrated (password hidden)."""
    from sqlalchemy.engine import make_url

    settings = settings or Settings()
    migrate(settings)
    return make_url(settings.resolved_database_url()).render_as_string(hide_password=True)


def main() -> None:
    """``python -m memsvc.cli.tenants create NAME | list | revoke ID`` (until the CLI wires it)."""
    import sys

    cmd, *args = sys.argv[1:] or ["list"]
    if cmd == "create":
        tid, key = tenant_create(args[0])
        print(json.dumps({"tenant_id": tid, "api_key": key}))
    elif cmd == "revoke":
        print(json.dumps({"revoked": tenant_revoke(args[0])}))
    else:
        print(json.dumps(tenant_list(), default=str))


if __name__ == "__main__":
    main()
