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

`memsvc bench state --large --out DIR` measures instead the state of a 1.3B RetNet
(24 layers x 8 heads x 256 x 512: 96 MiB in fp32) on Postgres + Redis, stored in fp32 or
bf16 (both zstd), for a random state and a low-rank + noise one; and the compression of
a real state (the shipped model's S after a prefill of this repository's README). It
writes ``state-large.json`` and ``state-large.md``.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def timed(
    fn: Callable[[], object],
    n: int,
    warmup: int = 5,
    setup: Callable[[], object] | None = None,
) -> np.ndarray:
    """Wall time of n calls in ms, after ``warmup`` untimed calls; ``setup`` runs untimed."""
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    out = np.empty(n)
    for i in range(n):
        if setup is not None:
            setup()
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


@contextmanager
def scratch_postgres(pg_admin_url: str) -> Iterator[tuple[str, str]]:
    """(database URL, Redis key prefix) of a fresh database, dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    name = f"memsvc_bench_{uuid.uuid4().hex[:10]}"
    prefix = f"memsvc-bench:{uuid.uuid4().hex[:8]}:"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            make_url(pg_admin_url).set(database=name).render_as_string(hide_password=False),
            prefix,
        )
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def close_storage(st, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Delete the bench's Redis keys and close ``st``."""
    if st.redis is not None:
        keys = list(st.redis.client.scan_iter(match=prefix + "*"))
        if keys:
            st.redis.client.delete(*keys)
    st.close()


def machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "loadavg_at_end": list(os.getloadavg()),
    }


def run(
    out_dir: Path, *, n: int = 200, pg_admin_url: str = PG_ADMIN, redis_url: str = REDIS
) -> dict:
    """Benchmark both backends at both sizes; write state.json / .md / .png."""
    from storage import Storage

    results: list[dict] = []
    with scratch_postgres(pg_admin_url) as (pg_url, prefix), tempfile.TemporaryDirectory() as tmp:
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
                close_storage(st, prefix)
    report = {"benchmark": "state", "repetitions": n, "machine": machine(), "results": results}
    write_outputs(out_dir, report)
    return report


# ---- the 1.3B shape ---------------------------------------------------------------------
SHAPE_1_3B = (24, 8, 256, 512)  # layers, heads, d_k, d_v of fla-hub/retnet-1.3B
TARGET_SAVE_MS, TARGET_LOAD_MS = 400.0, 150.0


def timed_stats(
    fn: Callable[[], object], n: int, warmup: int = 1, setup: Callable[[], object] | None = None
) -> dict[str, float]:
    """p50 / p99 wall ms of ``fn``, and p50 of this process's CPU ms (all its threads):
    on a shared machine the CPU time is what the code costs, the wall time what it waited.
    """
    cpu: list[float] = []

    def run() -> None:
        t0 = time.process_time()
        fn()
        cpu.append((time.process_time() - t0) * 1e3)

    out = stats(timed(run, n, warmup, setup))
    out["cpu_p50_ms"] = float(np.percentile(cpu[warmup:], 50))
    return out


def random_state(shape: tuple[int, ...], seed: int = 0):  # type: ignore[no-untyped-def]
    """S ~ N(0, 1): the worst case for compression."""
    import torch

    from retnet_core.state import RecurrentState

    g = torch.Generator().manual_seed(seed)
    layers, heads, dk, dv = shape
    S = [torch.randn(1, heads, dk, dv, generator=g) for _ in range(layers)]
    return RecurrentState(S, None, torch.tensor([8192]), "bench-1.3b")


def low_rank_state(shape: tuple[int, ...], seed: int = 0, rank: int = 32):  # type: ignore[no-untyped-def]
    """Per head S = U diag(σ) Vᵀ + noise: rank 32 with σ_i = 2^(-i/4), noise 1e-3 of the
    scale, head scales log-uniform in [0.01, 10] (decays differ per head, so do norms)."""
    import torch

    from retnet_core.state import RecurrentState

    g = torch.Generator().manual_seed(seed)
    layers, heads, dk, dv = shape
    sigma = 2.0 ** (-torch.arange(rank) / 4)
    S = []
    for _ in range(layers):
        u = torch.randn(heads, dk, rank, generator=g) / dk**0.5
        v = torch.randn(heads, rank, dv, generator=g) / rank**0.5
        scale = 10 ** (torch.rand(heads, 1, 1, generator=g) * 3 - 2)
        s = (u * sigma) @ v + 1e-3 * torch.randn(heads, dk, dv, generator=g)
        S.append((s * scale)[None])
    return RecurrentState(S, None, torch.tensor([8192]), "bench-1.3b")


def real_state_ratios() -> dict:
    """Stored/raw size of the shipped model's state after a prefill of the README."""
    import torch

    from retnet_core.checkpoint import load_pretrained
    from retnet_core.tokenizer import ChatTokenizer
    from storage.state_codec import CodecConfig, encode

    root = Path(__file__).resolve().parents[2]
    model_dir = root / "memsvc" / "models" / "default"  # the shipped model
    model = load_pretrained(model_dir).eval()
    tok = ChatTokenizer.load(model_dir)
    text = (root / "README.md").read_text()
    ids = torch.tensor([tok.encode(text)[:2048]])
    with torch.inference_mode():
        _, state = model.prefill(ids, last_only=True)
    blob = state.to_bytes()
    out = {"tokens": int(ids.shape[1]), "bytes": len(blob), "shape": list(state.S[0].shape)}
    for p in ("fp32", "bf16"):
        enc = encode(blob, CodecConfig(min_bytes=0, frame_bytes=2**16, precision=p))
        out[f"ratio_{p}"] = enc.stored_size / len(blob)
    return out


def model_serialization(state, blob: bytes, n: int) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """p50 ms of ``RecurrentState.to_bytes`` / ``from_bytes`` (retnet_core, not storage)."""
    from retnet_core.state import RecurrentState

    to, back = (
        timed_stats(state.to_bytes, n),
        timed_stats(lambda: RecurrentState.from_bytes(blob), n),
    )
    return {
        "to_bytes_ms": to["p50_ms"],
        "to_bytes_cpu_ms": to["cpu_p50_ms"],
        "from_bytes_ms": back["p50_ms"],
        "from_bytes_cpu_ms": back["cpu_p50_ms"],
    }


def floors(st, frames: list[bytes], n: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """The same stored bytes without storage's logic: one Postgres transaction inserting
    them as rows (durable commit), and one Redis MGET of them: what save and load cannot
    beat on this machine."""
    raw = st.db.engine.raw_connection()
    conn = raw.driver_connection
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS bench_floor (idx int PRIMARY KEY, data bytea)")
        cur.execute("ALTER TABLE bench_floor ALTER COLUMN data SET STORAGE EXTERNAL")
    conn.commit()

    def pg_write() -> None:
        with conn.cursor() as cur:
            cur.execute("DELETE FROM bench_floor")
            cur.executemany("INSERT INTO bench_floor VALUES (%s, %b)", list(enumerate(frames)))
        conn.commit()

    client, keys = st.redis.bulk, [f"{st.redis.prefix}floor:{i}" for i in range(len(frames))]
    client.mset(dict(zip(keys, frames, strict=True)))
    batches = range(0, len(keys), 16)  # as RedisCache reads a split record
    rows = [
        {"op": "floor: Postgres write of the stored bytes", **timed_stats(pg_write, n, 1)},
        {
            "op": "floor: Redis MGETs of the stored bytes",
            **timed_stats(lambda: [client.mget(keys[b : b + 16]) for b in batches], n, 1),
        },
    ]
    client.delete(*keys)
    raw.close()
    return rows


def measure_large(st, label: str, blob: bytes, n: int) -> list[dict]:  # type: ignore[no-untyped-def]
    """Save and load one large state ``n`` times each through ``st`` (Postgres + Redis)."""
    from storage.state_codec import encode

    tenant = st.tenants.create(f"bench-large-{label}-{time.monotonic_ns()}").id  # names are unique
    sid = st.sessions.create(tenant).id
    version, saved = [0], [None]

    def save(data: bytes) -> Callable[[], None]:
        def go() -> None:
            saved[0] = st.states.save(
                tenant, sid, data, fingerprint="bench-1.3b", position=1, expected_version=version[0]
            )
            version[0] = saved[0].version

        return go

    key = st.states._key(tenant, sid)

    def load(tier: str) -> Callable[[], None]:
        def go() -> None:
            got = st.states.load(tenant, sid)
            assert got is not None and got.tier == tier and len(got.blob) == len(saved[0].blob)

        return go

    def drop_local() -> None:
        st.states.local.drop(key)

    def drop_hot() -> None:  # also waits for the previous load's refill of Redis
        st.states.evict_hot(tenant, sid)

    rows = [
        {"op": "encode (codec only)", **timed_stats(lambda: encode(blob, st.states.codec), n, 1)},
        {"op": "save (durable)", **timed_stats(save(blob), n, 1)},
    ]
    if st.states.codec.precision == "bf16":  # a state the model already rounded to bf16
        rows.append(
            {"op": "save (durable), already bf16", **timed_stats(save(saved[0].blob), n, 1)}
        )
    rows += floors(st, saved[0].encoded.frames, n)
    rows += [
        {"op": "load redis", **timed_stats(load("redis"), n, 1, drop_local)},
        {"op": "load local+version", **timed_stats(load("local"), n, 1)},
        {
            "op": "load sql (Redis refilled in the background)",
            **timed_stats(load("sql"), n, 1, drop_hot),
        },
        {"op": "sql read + decode", **timed_stats(lambda: st.states._get_sql(tenant, sid), n, 1)},
    ]
    for r in rows:
        r.update(
            state=label,
            precision=st.states.codec.precision,
            bytes=len(blob),
            stored_bytes=saved[0].stored_size,
            codec=saved[0].codec,
        )
    return rows


def run_large(
    out_dir: Path, *, n: int = 7, pg_admin_url: str = PG_ADMIN, redis_url: str = REDIS
) -> dict:
    """The 1.3B-shape benchmark; writes state-large.json / .md."""
    from storage import Storage
    from storage.config import StateConfig
    from storage.state_codec import CodecConfig

    states = {"random N(0,1)": random_state, "low-rank + noise": low_rank_state}
    results: list[dict] = []
    serialization: dict[str, float] = {}
    with scratch_postgres(pg_admin_url) as (pg_url, prefix):
        for label, make in states.items():
            state = make(SHAPE_1_3B)
            blob = state.to_bytes()
            if not serialization:  # the model's own (de)serialization, for scale
                serialization = model_serialization(state, blob, n)
            for precision in ("fp32", "bf16"):
                cfg = StateConfig(codec=CodecConfig(precision=precision), local_bytes=2**30)
                st = Storage.from_urls(
                    pg_url, redis_url, redis_prefix=prefix, migrate=True, state_config=cfg
                )
                try:
                    rows = measure_large(st, label, blob, n)
                finally:
                    close_storage(st, prefix)
                for r in rows:
                    typer.echo(
                        f"{label:>16} {precision} {r['op']:>30}: p50 {r['p50_ms']:8.1f} ms"
                        f"  stored {r['stored_bytes'] / 2**20:.1f} MiB"
                    )
                results.extend(rows)
            del state, blob
    report = {
        "benchmark": "state-large",
        "shape": list(SHAPE_1_3B),
        "repetitions": n,
        "machine": machine(),
        "model_serialization_fp32": serialization,
        "real_state": real_state_ratios(),
        "targets_ms": {"save": TARGET_SAVE_MS, "load": TARGET_LOAD_MS},
        "results": results,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "state-large.json").write_text(json.dumps(report, indent=2))
    (out_dir / "state-large.md").write_text(markdown_large(report))
    return report


def markdown_large(report: dict) -> str:
    mib = 2**20
    lines = [
        "# A 1.3B RetNet's state through Postgres + Redis",
        "",
        f"Shape {' x '.join(map(str, report['shape']))} (layers x heads x d_k x d_v): "
        f"{report['results'][0]['bytes'] / mib:.1f} MiB as the model's fp32 blob. "
        f"{report['repetitions']} repetitions each (p50, p99 in ms), loopback Postgres 15 / "
        f"Redis 7, {report['machine']['cpus']} CPUs, load average at the end "
        f"{' / '.join(f'{x:.1f}' for x in report['machine']['loadavg_at_end'])}.",
        "",
        "| state | stored as | stored MiB | ratio | op | p50 ms | p99 ms | client CPU p50 ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['state']} | {r['codec']} | {r['stored_bytes'] / mib:.1f} | "
            f"{r['stored_bytes'] / r['bytes']:.3f} | {r['op']} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['cpu_p50_ms']:.1f} |"
        )
    ser, real = report["model_serialization_fp32"], report["real_state"]
    lines += [
        "",
        f"The model's own serialization of the fp32 state (retnet_core, not storage): "
        f"`to_bytes` {ser['to_bytes_ms']:.0f} ms (CPU {ser['to_bytes_cpu_ms']:.0f} ms), "
        f"`from_bytes` {ser['from_bytes_ms']:.0f} ms (CPU {ser['from_bytes_cpu_ms']:.0f} ms).",
        "",
        f"A real state (the shipped model's, {real['shape']} per layer, after a prefill of "
        f"{real['tokens']} README tokens, {real['bytes'] / 1024:.0f} KiB) compresses to "
        f"{real['ratio_fp32']:.3f} (fp32) and {real['ratio_bf16']:.3f} (bf16) of its size.",
        "",
        "## Targets (the bf16-stored state)",
        "",
    ]
    for state in dict.fromkeys(r["state"] for r in report["results"]):
        got = {
            r["op"]: r
            for r in report["results"]
            if r["state"] == state and r["precision"] == "bf16"
        }
        for op, target in (
            ("save (durable)", TARGET_SAVE_MS),
            ("save (durable), already bf16", TARGET_SAVE_MS),
            ("load redis", TARGET_LOAD_MS),
            ("load sql (Redis refilled in the background)", TARGET_LOAD_MS),
        ):
            ms = got[op]["p50_ms"]
            verdict = "meets it" if ms <= target else f"misses it by {ms - target:.0f} ms"
            lines.append(f"- {state}, {op}: p50 {ms:.0f} ms, target ≤ {target:.0f} ms: {verdict}.")
    return "\n".join(lines) + "\n"


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
    large: Annotated[
        bool, typer.Option(help="the 1.3B shape (96 MiB) instead: state-large.json / .md")
    ] = False,
) -> None:
    """Save / load latency of a session state through Redis, Postgres and SQLite."""
    if large:
        run_large(out, n=repetitions, pg_admin_url=pg_admin_url, redis_url=redis_url)
    else:
        run(out, n=repetitions, pg_admin_url=pg_admin_url, redis_url=redis_url)


if __name__ == "__main__":
    typer.run(cli)
