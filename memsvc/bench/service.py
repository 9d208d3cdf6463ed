"""Service benchmark: N concurrent streaming sessions against a live server on loopback.

`memsvc bench service --out DIR` starts ``python -m memsvc.server`` as a subprocess on a
free port of 127.0.0.1 (SQLite default in a temp folder, or ``--database-url`` /
``--redis-url`` for PostgreSQL + Redis) with a checkpoint of the **default model's
size** (``configs/default.yaml``'s ``model:`` section, random weights, a BPE of vocab
4096 trained on chitchat lines; or ``--model-dir``). For each N it opens N httpx async
clients (one connection each), creates N sessions (``memory_scope: none``: no slot
reads/writes, so every session can share one batched decode step; no documents, so no
retrieval), then sends N streaming turns **at the same instant** with a fixed
``max_tokens`` and measures, client-side:

- TTFT: from sending the POST to the first SSE ``delta`` event (p50, p99 over all turns);
- aggregate tokens/s: completion tokens of the round / (last ``done`` − first send);
- per-token latency: (last delta − first delta) / (tokens − 1), per turn (p50, p99).

Small N run several rounds (same sessions, next turn) so that percentiles have samples.
One unmeasured warm-up turn runs first. Writes ``service.json``, ``service.md`` and
``service.png`` to DIR. Everything is bounded (rounds, tokens, timeouts) and stops by
itself; the server is stopped on exit.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import time
import uuid
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from memsvc.bench._live import (
    ADMIN_KEY,
    LiveServer,
    create_session,
    default_size_checkpoint,
    exit_on_sigterm,
    machine_info,
    new_tenant_key,
    percentile,
    server_env,
    stream_turn,
    work_root,
)

DEFAULT_LEVELS = (1, 8, 32, 50, 64)
TARGET_N = 50
TARGET_TTFT_MS = 500.0
MESSAGE = "Hello there! How has your week been so far? Anything fun planned?"


async def _server_counters(client: httpx.AsyncClient) -> dict[str, float]:
    """Sums and counts of the server's TTFT and decode-batch histograms (/metrics)."""
    r = await client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    want = (
        "memsvc_time_to_first_token_seconds_sum",
        "memsvc_time_to_first_token_seconds_count",
        "memsvc_decode_batch_size_sum",
        "memsvc_decode_batch_size_count",
    )
    out = dict.fromkeys(want, 0.0)
    if r.status_code != 200:
        return out
    for line in r.text.splitlines():
        name, _, value = line.partition(" ")
        if name in out:
            out[name] += float(value)
    return out


def rounds_for(n: int, min_samples: int, max_rounds: int) -> int:
    """Rounds at level ``n`` so that about ``min_samples`` turns are timed."""
    return max(1, min(max_rounds, math.ceil(min_samples / n)))


async def _remember(client: httpx.AsyncClient, key: str, sid: str, memories: int) -> None:
    """``memories`` remembered facts for the session's user (feedback ``remember``)."""
    headers = {"Authorization": f"Bearer {key}"}
    for i in range(memories):
        body = {"kind": "remember", "text": f"Fact {i}: my favourite number {i} is {7 * i + 3}."}
        r = await client.post(f"/v1/sessions/{sid}/feedback", json=body, headers=headers)
        if r.status_code != 200 or not r.json().get("applied"):
            raise RuntimeError(f"remember failed: {r.status_code} {r.text[:300]}")


async def _sessions(clients, key: str, memories: int) -> list[str]:
    """One session per client; with ``memories``, each of its own user with that many."""
    if not memories:
        return await asyncio.gather(*(create_session(c, key, memory_scope="none") for c in clients))
    sids = await asyncio.gather(
        *(
            create_session(c, key, memory_scope="user", user_id=f"bench-{uuid.uuid4().hex[:8]}")
            for c in clients
        )
    )
    await asyncio.gather(
        *(_remember(c, key, s, memories) for c, s in zip(clients, sids, strict=True))
    )
    return sids


async def _level(
    url: str, key: str, n: int, rounds: int, max_tokens: int, timeout_s: float, memories: int = 0
) -> dict[str, Any]:
    """N clients, N sessions, ``rounds`` simultaneous streaming turns each."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits) for _ in range(n)]
    try:
        sids = await _sessions(clients, key, memories)
        before = await _server_counters(clients[0])
        turns: list[dict[str, Any]] = []
        round_rates: list[float] = []
        for r in range(rounds):
            res = await asyncio.gather(
                *(
                    stream_turn(c, key, sid, f"{MESSAGE} ({r})", max_tokens, use_documents=False)
                    for c, sid in zip(clients, sids, strict=True)
                )
            )
            start = min(t.sent_at for t in res)
            end = max(t.done_at for t in res)
            tokens = sum(t.completion_tokens for t in res)
            round_rates.append(tokens / (end - start))
            for t in res:
                per_tok = (
                    (t.last_delta_at - t.first_at) / (t.completion_tokens - 1)
                    if t.completion_tokens > 1
                    else float("nan")
                )
                turns.append(
                    {
                        "round": r,
                        "ttft_ms": t.ttft_s * 1e3,
                        "total_ms": t.total_s * 1e3,
                        "per_token_ms": per_tok * 1e3,
                        "completion_tokens": t.completion_tokens,
                        "state_source": t.usage.get("state_source"),
                    }
                )
        after = await _server_counters(clients[0])
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    d = {k: after[k] - before[k] for k in after}
    n_ttft = d["memsvc_time_to_first_token_seconds_count"]
    n_steps = d["memsvc_decode_batch_size_count"]
    ttft = [t["ttft_ms"] for t in turns]
    per_tok = [t["per_token_ms"] for t in turns if not math.isnan(t["per_token_ms"])]
    return {
        "n": n,
        "rounds": rounds,
        "turns": len(turns),
        "ttft_p50_ms": percentile(ttft, 50),
        "ttft_p99_ms": percentile(ttft, 99),
        "ttft_max_ms": max(ttft),
        "tokens_per_s": sum(round_rates) / len(round_rates),
        "per_token_p50_ms": percentile(per_tok, 50),
        "per_token_p99_ms": percentile(per_tok, 99),
        "server_ttft_mean_ms": (
            d["memsvc_time_to_first_token_seconds_sum"] / n_ttft * 1e3 if n_ttft else float("nan")
        ),
        "server_batch_mean": d["memsvc_decode_batch_size_sum"] / n_steps if n_steps else 0.0,
        "completion_tokens_mean": sum(t["completion_tokens"] for t in turns) / len(turns),
        "samples": turns,
    }


def run(
    out_dir: Path,
    levels: tuple[int, ...] = DEFAULT_LEVELS,
    max_tokens: int = 16,
    min_samples: int = 16,
    max_rounds: int = 4,
    model_dir: Path | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    timeout_s: float = 300.0,
    threads: int | None = None,
    command: str = "",
    extra_env: dict[str, str] | None = None,
    memories: int = 0,
) -> dict[str, Any]:
    """Run every level against one live server; write service.json/.md/.png to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = model_dir or default_size_checkpoint()
    data_dir = work_root() / f"service-{uuid.uuid4().hex[:8]}"
    extra = {"MEMSVC_MAX_BATCH": str(max(64, max(levels)))}
    if threads:
        extra.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if redis_url:
        extra["MEMSVC_REDIS_PREFIX"] = f"memsvc-bench:{uuid.uuid4().hex[:8]}:"
    # no documents here: RAG off, so the embedder's background warm-up does not compete
    extra["MEMSVC_RAG_ENABLED"] = "false"
    extra.update(extra_env or {})
    env = server_env(ckpt, data_dir, database_url, redis_url, **extra)
    before = machine_info()
    results = []
    try:
        key = new_tenant_key(env)  # also applies the migrations
        with LiveServer(env, data_dir) as server:
            asyncio.run(_level(server.url, key, 1, 1, max_tokens, timeout_s))  # warm-up
            for n in levels:
                rounds = rounds_for(n, min_samples, max_rounds)
                results.append(
                    asyncio.run(_level(server.url, key, n, rounds, max_tokens, timeout_s, memories))
                )
    finally:
        _cleanup_redis(redis_url, extra.get("MEMSVC_REDIS_PREFIX"))
        shutil.rmtree(data_dir, ignore_errors=True)
    report = {
        "benchmark": "service",
        "command": command,
        "model_dir": str(ckpt),
        "model": "random weights, default size" if model_dir is None else str(model_dir),
        "backend": "postgres+redis"
        if database_url and redis_url
        else ("postgres" if database_url else "sqlite (embedded default)"),
        "max_tokens": max_tokens,
        "memories": memories,
        "threads": threads,
        "message": MESSAGE,
        "machine_before": before,
        "machine_after": machine_info(),
        "levels": results,
        "target": _target(results),
    }
    (out_dir / "service.json").write_text(json.dumps(report, indent=2))
    (out_dir / "service.md").write_text(markdown(report))
    plot(report, out_dir / "service.png")
    return report


def _cleanup_redis(url: str | None, prefix: str | None) -> None:
    if not (url and prefix):
        return
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _target(results: list[dict[str, Any]]) -> dict[str, Any]:
    at = next((r for r in results if r["n"] == TARGET_N), None)
    if at is None:
        return {"n": TARGET_N, "measured": False}
    return {
        "n": TARGET_N,
        "measured": True,
        "p99_ttft_ms": at["ttft_p99_ms"],
        "limit_ms": TARGET_TTFT_MS,
        "met": at["ttft_p99_ms"] <= TARGET_TTFT_MS,
    }


def markdown(report: dict[str, Any]) -> str:
    """The results table, the target line and how it was measured."""
    b, a = report["machine_before"], report["machine_after"]
    lines = [
        "# Service benchmark: concurrent streaming sessions",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Model: {report['model']} (`configs/default.yaml` model section); backend: "
        f"{report['backend']}; `max_tokens` {report['max_tokens']}; server torch threads "
        f"{report['threads'] or 'default'}; memory: "
        + (
            f"on, each session a user with {report['memories']} memories; "
            if report.get("memories")
            else "off; "
        )
        + f"{b['cpus']} CPUs; load average (1/5/15 min) before {b['loadavg_1_5_15']}, "
        f"after {a['loadavg_1_5_15']}; {b['time_utc']}.",
        "",
        "| N | turns | TTFT p50 ms | TTFT p99 ms | tokens/s (all sessions) "
        "| ms/token p50 | ms/token p99 | tokens/turn | server TTFT mean ms | decode batch mean |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["levels"]:
        lines.append(
            f"| {r['n']} | {r['turns']} | {r['ttft_p50_ms']:.0f} | {r['ttft_p99_ms']:.0f} "
            f"| {r['tokens_per_s']:.1f} | {r['per_token_p50_ms']:.1f} "
            f"| {r['per_token_p99_ms']:.1f} | {r['completion_tokens_mean']:.1f} "
            f"| {r['server_ttft_mean_ms']:.0f} | {r['server_batch_mean']:.1f} |"
        )
    t = report["target"]
    lines.append("")
    if t.get("measured"):
        verdict = "met" if t["met"] else "missed"
        lines.append(
            f"Target: {t['n']} concurrent sessions with p99 TTFT ≤ {t['limit_ms']:.0f} ms: "
            f"**{verdict}** (p99 {t['p99_ttft_ms']:.0f} ms, "
            f"{t['p99_ttft_ms'] / t['limit_ms']:.2f}× the limit)."
        )
    else:
        lines.append(f"Target level N={t['n']} was not run.")
    lines += [
        "",
        "How: one live server (`python -m memsvc.server`, subprocess, 127.0.0.1, free port). "
        "Per level, N httpx async clients (one connection each) create N sessions "
        "(`memory_scope: none`, `use_documents: false`; server with "
        "`MEMSVC_RAG_ENABLED=false` so the embedder's background warm-up does not compete "
        "for the cores), then all send a streaming turn "
        "at once. TTFT = POST sent → first SSE `delta` event, client side. tokens/s = "
        "completion tokens of a round / (last `done` − first send), averaged over rounds. "
        "ms/token = (last delta − first delta) / (tokens − 1) per turn. Server TTFT = the "
        "server's own histogram (turn accepted → first token sampled; /metrics), mean over "
        "the level; decode batch = mean sessions per decode step. Small N repeat "
        "the round on the same sessions (state from the server's cache) to collect "
        "≥ 16 samples. Timing does not depend on the weights; the machine was shared "
        "(see load average), so compare ratios between rows rather than absolute values.",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """TTFT p50/p99, tokens/s and ms/token against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = report["levels"]
    ns = [r["n"] for r in levels]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    ax = axes[0]
    ax.plot(ns, [r["ttft_p50_ms"] for r in levels], "o-", label="p50")
    ax.plot(ns, [r["ttft_p99_ms"] for r in levels], "s-", label="p99")
    ax.axhline(TARGET_TTFT_MS, color="red", ls="--", lw=1, label="target p99 @ N=50")
    ax.set(xlabel="concurrent sessions N", ylabel="ms", title="time to first token")
    ax.legend()
    axes[1].plot(ns, [r["tokens_per_s"] for r in levels], "o-")
    axes[1].set(xlabel="concurrent sessions N", ylabel="tokens/s", title="aggregate tokens/s")
    axes[2].plot(ns, [r["per_token_p50_ms"] for r in levels], "o-", label="p50")
    axes[2].plot(ns, [r["per_token_p99_ms"] for r in levels], "s-", label="p99")
    axes[2].set(xlabel="concurrent sessions N", ylabel="ms", title="per-token latency")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    load = report["machine_before"]["loadavg_1_5_15"]
    fig.suptitle(f"memsvc service, {report['backend']}, load average {load}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def cli(
    out: Annotated[Path, typer.Option(help="folder for service.json, service.md, service.png")],
    levels: Annotated[str, typer.Option(help="comma-separated N")] = "1,8,32,50,64",
    max_tokens: Annotated[int, typer.Option(help="tokens per streamed turn")] = 16,
    min_samples: Annotated[int, typer.Option(help="timed turns per level (at least)")] = 16,
    max_rounds: Annotated[int, typer.Option(help="rounds per level (at most)")] = 4,
    model_dir: Annotated[
        Path | None, typer.Option(help="checkpoint [default: random, default size]")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL [default: SQLite temp]")
    ] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL [default: none]")] = None,
    threads: Annotated[
        int | None, typer.Option(help="torch threads of the server (OMP_NUM_THREADS)")
    ] = None,
    memories: Annotated[
        int, typer.Option(help="memory on: each session a user with this many memories")
    ] = 0,
) -> None:
    """N concurrent streaming sessions against a live server: TTFT p50/p99, tokens/s and
    per-token latency against N."""
    ns = tuple(int(x) for x in levels.split(",") if x.strip())
    if not ns or min(ns) < 1 or max(ns) > 256:
        raise typer.BadParameter("levels must be integers in 1..256")
    command = " ".join(
        ["memsvc bench service", f"--out {out}", f"--levels {levels}"]
        + [f"--max-tokens {max_tokens}", f"--min-samples {min_samples}"]
        + [f"--max-rounds {max_rounds}"]
        + ([f"--model-dir {model_dir}"] if model_dir else [])
        + (["--database-url …"] if database_url else [])
        + ([f"--redis-url {redis_url}"] if redis_url else [])
        + ([f"--threads {threads}"] if threads else [])
        + ([f"--memories {memories}"] if memories else [])
    )
    exit_on_sigterm()
    t0 = time.perf_counter()
    report = run(
        out,
        ns,
        max_tokens,
        min_samples,
        max_rounds,
        model_dir,
        database_url,
        redis_url,
        threads=threads,
        command=command,
        memories=memories,
    )
    typer.echo(markdown(report))
    took = time.perf_counter() - t0
    typer.echo(f"wrote {out}/service.json, service.md, service.png in {took:.0f}s")
