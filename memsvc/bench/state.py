"""State-store benchmark: save and load latency of a session's recurrent state.

`memsvc bench state --out DIR` measures, through :class:`storage.Storage` itself,

- ``save``: one acknowledged write (compare-and-set + blob in SQL, then the hot tier);
- ``load hot``: a read answered by the hot tier (Redis, or the in-process LRU), blob
  transfer and checksum included;
- ``load local+version``: (Redis only) a state this replica read or wrote recently:
  the in-process copy, returned after one GET of its version key in Redis;
- ``load sql``: a read that misses the hot tier and goes to SQL (Postgres or SQLite);
- ``redis GET``: the raw Redis round trip of the same bytes (the floor for ``load hot``),

for two blob sizes: the default model's state (6 layers x 8 heads x 64 x 64 float32 =
786,432 bytes, d=512) and a small model's (3 layers x 4 heads x 32 x 32 float32 =
49,152 bytes). Backends: Postgres + Redis (the server setting) and SQLite + LRU (the
embedded default). It creates its own Postgres database and Redis key prefix and removes
them afterwards. Writes ``state.json``, ``state.md`` and ``state.png`` to DIR.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

SIZES = {
    "default (d=512, 6L x 8H x 64 x 64)": 6 * 8 * 64 * 64 * 4,
    "small (3L x 4H x 32 x 32)": 3 * 4 * 32 * 32 * 4,
}
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REDIS = "redis://127.0.0.1:6379/0"


def timed(fn: Callable[[], object], n: int, warmup: int = 5) -> np.ndarray:
    """Wall time of n calls in ms (after ``warmup`` untimed calls)."""
    for _ in range(warmup):
        fn()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def stats(ms: np.ndarray) -> dict[str, float]:
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def measure(st, backend: str, size: int, n: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """Time save / load hot / load sql of a ``size``-byte state on one Storage."""
    tenant = st.tenants.create(f"bench-{size}-{time.monotonic_ns()}").id  # names are unique
    sid = st.sessions.create(tenant).id
    blob = os.urandom(size)
    version = [0]

    def save() -> None:
        version[0] = st.states.save(
            tenant, sid, blob, fingerprint="bench", position=1, expected_version=version[0]
        ).version

    key = st.states._key(tenant, sid)

    def load_hot() -> None:  # the hot tier itself: Redis (or the LRU), no local copy
        if st.states.local is not None:
            st.states.local.drop(key)
        assert st.states.load(tenant, sid).blob == blob

    def load_local() -> None:  # a recent state on this replica, checked against Redis
        assert st.states.load(tenant, sid).blob == blob

    def load_sql() -> None:
        st.states.evict_hot(tenant, sid)
        assert st.states.load(tenant, sid).blob == blob

    rows = [
        {"op": "save", **stats(timed(save, n))},
        {"op": "load hot", **stats(timed(load_hot, n))},
        {"op": "load sql", **stats(timed(load_sql, n))},
    ]
    if st.states.local is not None:
        rows.append({"op": "load local+version", **stats(timed(load_local, n))})
    if st.redis is not None:
        client, key = st.redis.client, st.redis.prefix + "bench-raw"
        client.set(key, blob)
        rows.append({"op": "redis GET", **stats(timed(lambda: client.get(key), n))})
    for r in rows:
        r.update(backend=backend, bytes=size)
    return rows


def run(
    out_dir: Path, *, n: int = 200, pg_admin_url: str = PG_ADMIN, redis_url: str = REDIS
) -> dict:
    """Benchmark both backends at both sizes; write state.json / .md / .png."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from storage import Storage

    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    name = f"memsvc_bench_{uuid.uuid4().hex[:10]}"
    prefix = f"memsvc-bench:{uuid.uuid4().hex[:8]}:"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    pg_url = make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False)
    results: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            backends = {
                "postgres + redis": (pg_url, redis_url),
                "sqlite + lru": (f"sqlite:///{tmp}/bench.db", None),
            }
            for backend, (db, rd) in backends.items():
                st = Storage.from_urls(db, rd, redis_prefix=prefix, migrate=True)
                try:
                    for label, size in SIZES.items():
                        rows = measure(st, backend, size, n)
                        for r in rows:
                            r["state"] = label
                            typer.echo(
                                f"{backend:>16} {size:>8} B {r['op']:>10}: "
                                f"p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
                            )
                        results.extend(rows)
                finally:
                    if st.redis is not None:
                        keys = list(st.redis.client.scan_iter(match=prefix + "*"))
                        if keys:
                            st.redis.client.delete(*keys)
                    st.close()
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    report = {
        "benchmark": "state",
        "repetitions": n,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_at_end": list(os.getloadavg()),
        },
        "results": results,
    }
    write_outputs(out_dir, report)
    return report


def markdown(report: dict) -> str:
    lines = [
        "# Session state: save and load latency",
        "",
        f"{report['repetitions']} repetitions each, loopback Postgres 15 / Redis 7, "
        f"{report['machine']['cpus']} CPUs.",
        "",
        "| backend | state | bytes | op | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['backend']} | {r['state']} | {r['bytes']:,} | {r['op']} | "
            f"{r['p50_ms']:.3f} | {r['p99_ms']:.3f} |"
        )
    lines.append("")
    big = max(SIZES.values())
    for op in ("load hot", "load local+version"):
        hit = [
            r
            for r in report["results"]
            if r["backend"].endswith("redis") and r["op"] == op and r["bytes"] == big
        ]
        if hit:
            ok = "meets" if hit[0]["p50_ms"] <= 2.0 else "misses"
            lines.append(
                f"- Target load ≤ 2 ms from Redis at the default size, {op}: "
                f"p50 {hit[0]['p50_ms']:.3f} ms ({ok} it)."
            )
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["results"] if r["bytes"] == max(SIZES.values())]
    labels = [f"{r['backend']}\n{r['op']}" for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(range(len(rows)), [r["p50_ms"] for r in rows], label="p50")
    ax.scatter(
        range(len(rows)), [r["p99_ms"] for r in rows], color="k", marker="_", s=200, label="p99"
    )
    ax.axhline(2.0, color="grey", ls="--", lw=0.8, label="2 ms target (Redis load)")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set(
        ylabel="ms (log scale)", yscale="log", title="786 KB session state (default model): latency"
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(out_dir: Path, report: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "state.json").write_text(json.dumps(report, indent=2))
    (out_dir / "state.md").write_text(markdown(report))
    plot(report, out_dir / "state.png")


def cli(
    out: Annotated[Path, typer.Option(help="folder for state.json, state.md, state.png")],
    repetitions: Annotated[int, typer.Option(help="timed calls per measurement")] = 200,
    pg_admin_url: Annotated[str, typer.Option(help="Postgres to create a scratch DB in")] = (
        PG_ADMIN
    ),
    redis_url: Annotated[str, typer.Option(help="Redis (a unique key prefix is used)")] = REDIS,
) -> None:
    """Save / load latency of a session state through Redis, Postgres and SQLite."""
    run(out, n=repetitions, pg_admin_url=pg_admin_url, redis_url=redis_url)


if __name__ == "__main__":
    typer.run(cli)
