"""Resume benchmark: time to first token after a long history, resumed vs replayed.

`memsvc bench resume --out DIR` needs PostgreSQL and Redis (``--pg-admin-url`` creates
and drops a scratch database; ``--redis-url`` gets a unique key prefix, deleted after).
It starts **two** live servers (``python -m memsvc.server`` subprocesses on free
loopback ports, same database and Redis, a checkpoint of the default model's size with
random weights unless ``--model-dir``) and, for each history length L (1k, 8k, 32k
tokens):

- **replay**: a new session whose first message holds L tokens of chitchat text
  (tokenised here to hit L exactly), streamed with ``max_tokens`` 4. Its TTFT is the
  real server's chunkwise prefill of the whole history from an empty state, plus the
  request path: what a stateless server pays on every turn. That turn also *builds*
  the history of the sessions resumed below (their ``cached_tokens`` is reported).
- **resume from Redis**: a short streaming turn on that session, alternating between
  the two servers, so the other server's in-process copy is stale and the state comes
  from Redis (``usage.state_source == "redis"``, checked).
- **resume from Postgres**: the same after deleting the session's Redis keys before
  each turn (``state_source == "sql"``, checked).

Component view (in the bench process): a Redis GET of the state + checksum + decode
(``RecurrentState.from_bytes``) against the model's chunkwise prefill of L tokens
(``RetNetLM.prefill(last_only=True)``), same checkpoint, same thread count.

Writes ``resume.json``, ``resume.md`` and ``resume.png`` to DIR. Bounded: fixed reps,
fixed tokens, per-request timeouts; servers and scratch data are removed on exit.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from memsvc.bench._live import (
    LiveServer,
    chitchat_text,
    create_session,
    default_size_checkpoint,
    exit_on_sigterm,
    machine_info,
    new_tenant_key,
    server_env,
    stream_turn,
    work_root,
)
from retnet_core.checkpoint import load_pretrained

DEFAULT_LENGTHS = (1024, 8192, 32768)
TARGET_L = 32768
TARGET_RATIO = 1000.0
PG_ADMIN = os.environ.get(
    "MEMSVC_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MEMSVC_TEST_REDIS", "redis://127.0.0.1:6379/0")
QUESTION = "And what do you think about that?"


def history_text(tokenizer: Any, n_tokens: int) -> str:
    """Chitchat text whose user turn (template included) is about ``n_tokens`` tokens."""
    text = chitchat_text(n_tokens * 6)
    ids = tokenizer.encode(text)
    body = max(1, n_tokens - 4)  # <|user|> ... <|end|> <|assistant|>
    return tokenizer.decode(ids[:body])


def _scratch_database(admin_url: str) -> tuple[str, Any]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
    name = f"memsvc_bench_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return make_url(admin_url).set(database=name).render_as_string(hide_password=False), drop


def _redis_keys(client: Any, prefix: str, session_id: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}*{session_id}*", count=1000))


async def _measure_length(
    urls: list[str],
    key: str,
    redis_client: Any,
    prefix: str,
    text: str,
    reps: int,
    replays: int,
    timeout_s: float,
) -> dict[str, Any]:
    """Replay TTFT (new sessions fed ``text``), then resume TTFT from Redis and from SQL."""
    async with ExitStackAsync(urls, timeout_s) as clients:
        replay, sid = [], None
        for _ in range(replays):
            s = await create_session(clients[0], key, memory_scope="none")
            t = await stream_turn(clients[0], key, s, text, 4, use_documents=False)
            if t.usage.get("state_source") != "new":
                raise RuntimeError(f"replay turn did not start empty: {t.usage}")
            replay.append({"ttft_ms": t.ttft_s * 1e3, "prompt_tokens": t.usage["prompt_tokens"]})
            sid = sid or s
        assert sid is not None
        out: dict[str, Any] = {"replay": replay}
        turn = 0
        for tier in ("redis", "sql"):
            rows = []
            for _ in range(reps):
                turn += 1
                if tier == "sql":
                    keys = _redis_keys(redis_client, prefix, sid)
                    if keys:
                        redis_client.delete(*keys)
                client = clients[turn % 2]  # the other server: its local copy is stale
                t = await stream_turn(
                    client, key, sid, f"{QUESTION} ({turn})", 4, use_documents=False
                )
                src = t.usage.get("state_source")
                if src != tier:
                    raise RuntimeError(f"expected a {tier} resume, got {src}: {t.usage}")
                rows.append(
                    {"ttft_ms": t.ttft_s * 1e3, "cached_tokens": t.usage.get("cached_tokens")}
                )
            out[tier] = rows
        out["session_id"] = sid
        return out


async def _baseline(urls: list[str], key: str, reps: int, timeout_s: float) -> list[float]:
    """TTFT (ms) of the same short question on brand-new sessions: the request-path floor."""
    async with ExitStackAsync(urls, timeout_s) as clients:
        out = []
        for i in range(reps):
            client = clients[i % 2]
            sid = await create_session(client, key, memory_scope="none")
            t = await stream_turn(client, key, sid, f"{QUESTION} ({i})", 4, use_documents=False)
            out.append(t.ttft_s * 1e3)
        return out


class ExitStackAsync:
    """One httpx.AsyncClient per server URL, closed on exit."""

    def __init__(self, urls: list[str], timeout_s: float) -> None:
        self.clients = [httpx.AsyncClient(base_url=u, timeout=timeout_s) for u in urls]

    async def __aenter__(self) -> list[httpx.AsyncClient]:
        return self.clients

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(*(c.aclose() for c in self.clients))


def _component(
    ckpt: Path, lengths: tuple[int, ...], redis_client: Any, prefix: str, sids: dict[int, str]
) -> dict[int, dict[str, float]]:
    """In-process: Redis GET + checksum + decode of the state vs prefill of L tokens."""
    import torch

    from retnet_core.state import RecurrentState
    from storage.states import checksum, decode_hot

    model = load_pretrained(ckpt).eval()
    fingerprint = str(model.fingerprint())  # before inference mode, as the server does
    out: dict[int, dict[str, float]] = {}
    with torch.inference_mode():
        model.prefill(torch.randint(8, model.config.vocab_size, (1, 256)), last_only=True)
        for n in lengths:
            keys = [  # the blob, not its ":v" version key
                k
                for k in _redis_keys(redis_client, prefix, sids[n])
                if bytes(k).startswith(f"{prefix}state:".encode())
                and bytes(k).endswith(sids[n].encode())
            ]
            loads = []
            for _ in range(20 if keys else 0):
                t0 = time.perf_counter()
                data = redis_client.get(keys[0])
                st = decode_hot(data)
                assert checksum(st.blob) == st.checksum
                RecurrentState.from_bytes(st.blob, fingerprint=fingerprint)
                loads.append(time.perf_counter() - t0)
            tokens = torch.randint(8, model.config.vocab_size, (1, n))
            t0 = time.perf_counter()
            model.prefill(tokens, last_only=True)
            prefill_s = time.perf_counter() - t0
            out[n] = {
                "state_load_ms": statistics.median(loads) * 1e3 if loads else float("nan"),
                "state_bytes": len(data) if keys else 0,
                "prefill_ms": prefill_s * 1e3,
            }
    return out


def run(
    out_dir: Path,
    lengths: tuple[int, ...] = DEFAULT_LENGTHS,
    reps: int = 5,
    replays: int = 1,
    model_dir: Path | None = None,
    pg_admin_url: str = PG_ADMIN,
    redis_url: str = REDIS_URL,
    threads: int | None = None,
    timeout_s: float = 600.0,
    command: str = "",
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Measure every length; write resume.json/.md/.png to ``out_dir``."""
    import redis

    from retnet_core.tokenizer import ChatTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = model_dir or default_size_checkpoint()
    tok = ChatTokenizer.load(ckpt)
    texts = {n: history_text(tok, n) for n in lengths}
    max_chars = max(len(t) for t in texts.values()) + 1000
    prefix = f"memsvc-bench:{uuid.uuid4().hex[:8]}:"
    data_dir = work_root() / f"resume-{uuid.uuid4().hex[:8]}"
    extra = {
        "MEMSVC_REDIS_PREFIX": prefix,
        "MEMSVC_MAX_MESSAGE_CHARS": str(max_chars),
        "MEMSVC_MAX_BODY_BYTES": str(max(2_000_000, 8 * max_chars)),
        "MEMSVC_TURN_TIMEOUT_S": str(timeout_s),
    }
    if threads:
        extra.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        import torch

        torch.set_num_threads(threads)
    before = machine_info()
    # the server's read size (storage.cache): the 64 KiB default makes big GETs slower
    rclient = redis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_read_size=2**20)
    rclient.ping()
    db_url, drop_db = _scratch_database(pg_admin_url)
    results: dict[int, dict[str, Any]] = {}
    try:
        # no documents here: RAG off, so the embedder's background warm-up does not compete
        extra["MEMSVC_RAG_ENABLED"] = "false"
        extra.update(extra_env or {})
        env = server_env(ckpt, data_dir, db_url, redis_url, **extra)
        key = new_tenant_key(env)  # also applies the migrations, before both servers start
        with ExitStack() as stack:
            a = LiveServer(env, data_dir / "a")
            b = LiveServer(env, data_dir / "b")
            for srv in (a, b):  # start both at once, stop both on exit
                stack.callback(srv.stop)
                srv.launch()
            a.wait_ready()
            b.wait_ready()
            urls = [a.url, b.url]
            warm = history_text(tok, 64)
            asyncio.run(_measure_length(urls, key, rclient, prefix, warm, 1, 1, timeout_s))
            baseline = asyncio.run(_baseline(urls, key, reps, timeout_s))
            for n in lengths:
                results[n] = asyncio.run(
                    _measure_length(urls, key, rclient, prefix, texts[n], reps, replays, timeout_s)
                )
        component = _component(
            ckpt, lengths, rclient, prefix, {n: r["session_id"] for n, r in results.items()}
        )
    finally:
        keys = list(rclient.scan_iter(match=prefix + "*", count=1000))
        if keys:
            rclient.delete(*keys)
        rclient.close()
        drop_db()
        shutil.rmtree(data_dir, ignore_errors=True)
    rows = []
    for n in lengths:
        r = results[n]
        med = {t: statistics.median(x["ttft_ms"] for x in r[t]) for t in ("replay", "redis", "sql")}
        rows.append(
            {
                "history_tokens": n,
                "cached_tokens": r["redis"][0]["cached_tokens"],
                "replay_prompt_tokens": r["replay"][0]["prompt_tokens"],
                "ttft_replay_ms": med["replay"],
                "ttft_redis_ms": med["redis"],
                "ttft_postgres_ms": med["sql"],
                "speedup_redis": med["replay"] / med["redis"],
                "speedup_postgres": med["replay"] / med["sql"],
                **{f"component_{k}": v for k, v in component[n].items()},
                "component_speedup": component[n]["prefill_ms"] / component[n]["state_load_ms"],
                "samples": {t: [x["ttft_ms"] for x in r[t]] for t in ("replay", "redis", "sql")},
            }
        )
    report = {
        "benchmark": "resume",
        "command": command,
        "model": "random weights, default size" if model_dir is None else str(model_dir),
        "model_dir": str(ckpt),
        "threads": threads,
        "reps": reps,
        "replays": replays,
        "machine_before": before,
        "machine_after": machine_info(),
        "baseline_new_session_ttft_ms": statistics.median(baseline),
        "baseline_samples_ms": baseline,
        "rows": rows,
        "target": _target(rows),
    }
    (out_dir / "resume.json").write_text(json.dumps(report, indent=2))
    (out_dir / "resume.md").write_text(markdown(report))
    plot(report, out_dir / "resume.png")
    return report


def _target(rows: list[dict[str, Any]]) -> dict[str, Any]:
    at = next((r for r in rows if r["history_tokens"] == TARGET_L), None)
    if at is None:
        return {"history_tokens": TARGET_L, "measured": False}
    worst = min(at["speedup_redis"], at["speedup_postgres"])
    return {
        "history_tokens": TARGET_L,
        "measured": True,
        "ratio_limit": TARGET_RATIO,
        "speedup_redis": at["speedup_redis"],
        "speedup_postgres": at["speedup_postgres"],
        "component_speedup": at["component_speedup"],
        "met": worst >= TARGET_RATIO,
    }


def markdown(report: dict[str, Any]) -> str:
    """Tables (end to end over HTTP, and the component view), target and method."""
    b, a = report["machine_before"], report["machine_after"]
    lines = [
        "# Resume benchmark: time to first token after a long history",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Model: {report['model']} (`configs/default.yaml` model section); PostgreSQL + "
        f"Redis; server torch threads: {report['threads'] or 'default'}; "
        f"{report['reps']} resume turns per tier, {report['replays']} replay turn(s) per "
        f"length (medians shown); {b['cpus']} CPUs; load average (1/5/15 min) before "
        f"{b['loadavg_1_5_15']}, after {a['loadavg_1_5_15']}; {b['time_utc']}.",
        "",
        "End to end (client-side TTFT over HTTP, streaming):",
        "",
        "| history tokens | replay TTFT ms | resume Redis ms | resume Postgres ms "
        "| replay / Redis | replay / Postgres |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['cached_tokens']} | {r['ttft_replay_ms']:.0f} | {r['ttft_redis_ms']:.1f} "
            f"| {r['ttft_postgres_ms']:.1f} | {r['speedup_redis']:.0f}× "
            f"| {r['speedup_postgres']:.0f}× |"
        )
    lines += [
        "",
        "Component view (bench process, no HTTP): state load = Redis GET + SHA-256 check + "
        "`RecurrentState.from_bytes`; prefill = `RetNetLM.prefill(L tokens, last_only=True)`.",
        "",
        "| history tokens | state bytes | state load ms | prefill ms | prefill / load |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['history_tokens']} | {r['component_state_bytes']} "
            f"| {r['component_state_load_ms']:.2f} | {r['component_prefill_ms']:.0f} "
            f"| {r['component_speedup']:.0f}× |"
        )
    lines += [
        "",
        f"Floor: the same short question on a brand-new session (no history, no state to "
        f"load) has a median TTFT of {report['baseline_new_session_ttft_ms']:.1f} ms: the "
        f"request path (HTTP, session check, lock, prefill of the question, first decode "
        f"step, SSE) without any state to load.",
    ]
    t = report["target"]
    lines.append("")
    if t.get("measured"):
        verdict = "met" if t["met"] else "missed"
        lines.append(
            f"Target: resume ≥ {t['ratio_limit']:.0f}× faster than replay at "
            f"{t['history_tokens']} tokens (end to end): **{verdict}** (Redis "
            f"{t['speedup_redis']:.0f}×, Postgres {t['speedup_postgres']:.0f}×; the state "
            f"load alone is {t['component_speedup']:.0f}× faster than the prefill)."
        )
    else:
        lines.append(f"Target length {t['history_tokens']} was not run.")
    lines += [
        "",
        "How: two live servers (`python -m memsvc.server` subprocesses on loopback, one "
        "scratch PostgreSQL database, one Redis key prefix; "
        "`MEMSVC_RAG_ENABLED=false`, sessions with "
        "`memory_scope: none`). *Replay*: a new session whose "
        "first message holds the whole history (L tokens incl. template), streamed with "
        "`max_tokens` 4: TTFT = HTTP + tokenising + the server's chunkwise prefill of L "
        "tokens from an empty state + the first decode step, which is what a stateless "
        "server pays per turn. *Resume*: a short question on that session; turns alternate "
        "between the two servers so the state comes from Redis (`state_source: redis`, "
        "checked), or, with the session's Redis keys deleted before each turn, from "
        "PostgreSQL (`state_source: sql`, checked). The resumed state is a fixed size, so "
        "resume TTFT does not grow with history. The machine was shared (see load average): "
        "quote ratios, not absolute times.",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """TTFT against history length (log-log): replay, Redis, Postgres."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    xs = [r["history_tokens"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(xs, [r["ttft_replay_ms"] for r in rows], "o-", label="replay (prefill history)")
    ax.plot(xs, [r["ttft_redis_ms"] for r in rows], "s-", label="resume from Redis")
    ax.plot(xs, [r["ttft_postgres_ms"] for r in rows], "^-", label="resume from Postgres")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="history tokens",
        ylabel="time to first token (ms)",
        title=f"memsvc resume vs replay (load {report['machine_before']['loadavg_1_5_15']})",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cli(
    out: Annotated[Path, typer.Option(help="folder for resume.json, resume.md, resume.png")],
    lengths: Annotated[
        str, typer.Option(help="comma-separated history tokens")
    ] = "1024,8192,32768",
    reps: Annotated[int, typer.Option(help="resume turns per tier and length")] = 5,
    replays: Annotated[int, typer.Option(help="replay turns per length")] = 1,
    model_dir: Annotated[
        Path | None, typer.Option(help="checkpoint [default: random, default size]")
    ] = None,
    pg_admin_url: Annotated[
        str, typer.Option(help="PostgreSQL URL allowed to CREATE DATABASE (scratch db)")
    ] = PG_ADMIN,
    redis_url: Annotated[str, typer.Option(help="Redis URL")] = REDIS_URL,
    threads: Annotated[
        int | None, typer.Option(help="torch threads of the servers (OMP_NUM_THREADS)")
    ] = None,
) -> None:
    """Time to first token after 1k/8k/32k tokens of history: resumed from Redis, from
    Postgres, and replayed (prefill of the whole history)."""
    ns = tuple(int(x) for x in lengths.split(",") if x.strip())
    if not ns or min(ns) < 16 or max(ns) > 131072 or reps < 1 or replays < 1:
        raise typer.BadParameter("lengths in 16..131072, reps and replays ≥ 1")
    command = " ".join(
        ["memsvc bench resume", f"--out {out}", f"--lengths {lengths}", f"--reps {reps}"]
        + [f"--replays {replays}"]
        + ([f"--model-dir {model_dir}"] if model_dir else [])
        + ([f"--threads {threads}"] if threads else [])
    )
    exit_on_sigterm()
    t0 = time.perf_counter()
    report = run(
        out, ns, reps, replays, model_dir, pg_admin_url, redis_url, threads, command=command
    )
    typer.echo(markdown(report))
    took = time.perf_counter() - t0
    typer.echo(f"wrote {out}/resume.json, resume.md, resume.png in {took:.0f}s")
