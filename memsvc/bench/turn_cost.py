"""SQL transactions per chat turn, counted from arrival to acknowledgment.

`memsvc bench turn-cost --out docs/bench` builds the service in process (the real app,
its store, scheduler and model), on a scratch Postgres database and a Redis key prefix,
and counts every transaction its SQLAlchemy engine begins (``begin`` events: reads,
writes and rollbacks alike) while one HTTP turn runs, auth included. The session's user
already has ``slots`` memories (memory on, scope ``user``); the turn posts
``max_tokens`` 1 and then 8, so the difference is the cost of each extra token.

:func:`measure` is what the test ``tests/memsvc/test_turn_cost.py`` asserts on.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class TurnCost:
    """Transactions one turn caused; ``tokens`` the reply's generated tokens."""

    max_tokens: int
    tokens: int
    transactions: int
    writes: int  # transactions that wrote (commit after an INSERT/UPDATE/DELETE)


class TxCounter:
    """Counts ``begin`` events (and writing commits) on an engine, between marks."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.begins = 0
        self.writes = 0
        self._dirty: set[int] = set()
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", self._commit)
        event.listen(engine, "before_cursor_execute", self._execute)

    def _begin(self, conn: Any) -> None:
        self.begins += 1

    def _execute(self, conn, cursor, statement, parameters, context, executemany) -> None:
        head = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
        if head in ("INSERT", "UPDATE", "DELETE"):
            self._dirty.add(id(conn))

    def _commit(self, conn: Any) -> None:
        if id(conn) in self._dirty:
            self.writes += 1
            self._dirty.discard(id(conn))


@contextmanager
def scratch_postgres(admin_url: str = PG_ADMIN):
    """A fresh database URL, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
    name = f"memsvc_cost_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def seed_slots(services: Any, tenant_id: str, user_id: str, n: int, seed: int = 0) -> None:
    """``n`` random unit-key slots in every memory layer's bank of ``user:<user_id>``."""
    import torch

    mem = services.memory
    d_key, d_value, capacity = mem.dims
    gen = torch.Generator().manual_seed(seed)
    for layer in mem.layers:
        bank = services.store.slot_bank(
            tenant_id, ("user", user_id), layer, d_key, d_value, capacity
        )
        keys = torch.nn.functional.normalize(torch.randn(n, d_key, generator=gen), dim=-1)
        bank.add(keys, torch.randn(n, d_value, generator=gen), torch.full((n,), 0.9))


async def _turns(app: Any, key: str, session_id: str, max_tokens: list[int], counter) -> list:
    import httpx

    out = []
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for i, n in enumerate([1, *max_tokens]):  # the first one warms banks and caches
            body = {"content": f"hello there, turn {i}", "max_tokens": n}
            before = (counter.begins, counter.writes)
            r = await client.post(f"/v1/sessions/{session_id}/messages", json=body, headers=headers)
            r.raise_for_status()
            tokens = int(r.json()["usage"]["completion_tokens"])
            cost = TurnCost(n, tokens, counter.begins - before[0], counter.writes - before[1])
            if i:
                out.append(cost)
    return out


def measure(
    database_url: str,
    redis_url: str | None,
    model_dir: Path | None,
    *,
    slots: int = 20,
    max_tokens: tuple[int, ...] = (1, 8),
    data_dir: Path | None = None,
) -> list[TurnCost]:
    """Transactions per turn of one user with ``slots`` memories, for each ``max_tokens``."""
    from memsvc.app import create_app
    from memsvc.config import Settings
    from memsvc.services.container import Services

    data_dir = data_dir or Path(tempfile.mkdtemp(prefix="memsvc-cost-"))
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        redis_prefix=f"memsvc-cost:{uuid.uuid4().hex[:8]}:",
        data_dir=data_dir,
        model_dir=model_dir,
        device="cpu",
        rag_enabled=False,
    )
    services = Services.build(settings)
    services.start()
    try:
        tenant_id, key = services.store.create_tenant(f"cost-{uuid.uuid4().hex[:6]}")
        user = f"user-{uuid.uuid4().hex[:6]}"
        session = services.store.create_session(tenant_id, user, None, "user", None)
        if services.memory is not None and slots:
            seed_slots(services, tenant_id, user, slots)
        counter = TxCounter(services.store.storage.db.engine)
        app = create_app(settings, services)
        return asyncio.run(_turns(app, key, session.id, list(max_tokens), counter))
    finally:
        services.stop()
        if settings.redis_url:
            _drop_redis_prefix(settings.redis_url, settings.redis_prefix)


def _drop_redis_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=prefix + "*", count=500))
    if keys:
        client.delete(*keys)
    client.close()


def table(costs: list[TurnCost], slots: int, command: str) -> str:
    """The markdown report."""
    rows = [f"| {c.max_tokens} | {c.tokens} | {c.transactions} | {c.writes} |" for c in costs]
    per_token = ""
    if len(costs) >= 2 and costs[-1].tokens != costs[0].tokens:
        extra = (costs[-1].transactions - costs[0].transactions) / (
            costs[-1].tokens - costs[0].tokens
        )
        per_token = f"\nTransactions per extra generated token: **{extra:g}**.\n"
    return "\n".join(
        [
            "# SQL transactions per turn",
            "",
            f"Postgres + Redis, memory on (scope user, {slots} slots per bank), RAG off;",
            "every transaction the engine begins from the request's arrival to its",
            "acknowledgment, auth included (the turn before the measured ones warms caches).",
            "",
            f"Command: `{command}`",
            "",
            "| max_tokens | generated | transactions | writing transactions |",
            "|---:|---:|---:|---:|",
            *rows,
            per_token,
        ]
    )


def cli(
    out: Annotated[Path, typer.Option(help="folder for turn-cost.md and turn-cost.json")],
    model_dir: Annotated[
        Path | None, typer.Option(help="checkpoint [default: the shipped model]")
    ] = None,
    slots: Annotated[int, typer.Option(help="memories of the user before the turn")] = 20,
    pg_admin_url: Annotated[str, typer.Option(help="PostgreSQL URL allowed to CREATE DATABASE")] = (
        PG_ADMIN
    ),
    redis_url: Annotated[str, typer.Option(help="Redis URL")] = REDIS_URL,
) -> None:
    """SQL transactions per chat turn (one-token reply and eight-token reply), auth included."""
    command = f"memsvc bench turn-cost --out {out} --slots {slots}" + (
        f" --model-dir {model_dir}" if model_dir else ""
    )
    with scratch_postgres(pg_admin_url) as url:
        costs = measure(url, redis_url, model_dir, slots=slots)
    out.mkdir(parents=True, exist_ok=True)
    (out / "turn-cost.json").write_text(json.dumps([asdict(c) for c in costs], indent=2))
    report = table(costs, slots, command)
    (out / "turn-cost.md").write_text(report)
    typer.echo(report)
