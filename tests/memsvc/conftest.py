"""Fixtures for end-to-end service tests: a tiny checkpoint, real databases, live servers.

Backends: ``postgres`` (a fresh PostgreSQL database + Redis under a unique key prefix)
and ``sqlite`` (the embedded default: a SQLite file, no Redis). Servers are module
scoped (one process per backend) to keep the suite fast; every test isolates itself by
working as a brand-new tenant. Tests that restart a server start their own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from server_util import ADMIN_KEY, Server
from service_testkit import LIMITS, PG_ADMIN, REDIS_URL, Backend, Client
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from talkative_model import talkative_server
from tiny_model import make_tiny_checkpoint

# Bind the real package now, before pytest puts tests/ on sys.path (for tests/test_*.py),
# where the tests/storage/ folder would shadow it as a namespace package.
import storage  # noqa: F401


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight checkpoint (2 layers, memory at layer 1)."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _pg_database() -> Iterator[str]:
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", pool_size=1)
    name = f"memsvc_svc_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # never skip: the real server is required
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is not usable ({exc}); see SERVICES.md")
    try:
        yield make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        pytest.fail(f"Redis at {REDIS_URL} is not reachable ({exc}); see SERVICES.md")
    prefix = f"memsvc-svc-test:{uuid.uuid4().hex[:12]}:"
    try:
        yield prefix
    finally:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
        client.close()


def make_backend(name: str, tmp: Path, checkpoint: Path) -> Iterator[Backend]:
    env = {
        **LIMITS,
        "MEMSVC_MODEL_DIR": str(checkpoint),
        "MEMSVC_DATA_DIR": str(tmp / "data"),
        "MEMSVC_ADMIN_KEY": ADMIN_KEY,
        "MEMSVC_DEVICE": "cpu",
    }
    if name == "sqlite":  # the embedded default: no database URL, no Redis, only a data dir
        url = f"sqlite:///{tmp / 'data' / 'memsvc.db'}"
        yield Backend(name, env, url, None)
        return
    for url in _pg_database():
        for prefix in _redis_prefix():
            env.update(
                MEMSVC_DATABASE_URL=url, MEMSVC_REDIS_URL=REDIS_URL, MEMSVC_REDIS_PREFIX=prefix
            )
            yield Backend(name, env, url, prefix)


@pytest.fixture(scope="session", params=["postgres", "sqlite"])
def backend(request, tmp_path_factory, checkpoint) -> Iterator[Backend]:
    """Both backends, each with one fresh data set (tests isolate by using new tenants)."""
    yield from make_backend(request.param, tmp_path_factory.mktemp(request.param), checkpoint)


@pytest.fixture(scope="session")
def server(backend: Backend, tmp_path_factory) -> Iterator[Server]:
    """One live server per backend, shared by the tests that do not restart it."""
    with Server(backend.env, tmp_path_factory.mktemp("srv")) as srv:
        yield srv


@pytest.fixture(scope="session")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture
def api(http: httpx.Client, backend: Backend) -> Client:
    """A client of a brand-new tenant."""
    return Client(http, backend.new_tenant())


@pytest.fixture
def admin(http: httpx.Client) -> Client:
    return Client(http, ADMIN_KEY)


@pytest.fixture(scope="module")
def talkative_http(backend: Backend, tmp_path_factory, pytestconfig) -> Iterator[httpx.Client]:
    """A client of the talkative server (replies of REPLY_TOKENS tokens, then <|end|>)."""
    srv = talkative_server(backend, tmp_path_factory, pytestconfig)
    with httpx.Client(base_url=srv.url, timeout=120) as client:
        yield client


@pytest.fixture
def talkative_api(talkative_http: httpx.Client, backend: Backend) -> Client:
    """A brand-new tenant on the talkative server."""
    return Client(talkative_http, backend.new_tenant("talk"))
