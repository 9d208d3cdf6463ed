"""Cross-session recall and forgetting through the REST API, with the shipped model.

`memsvc bench recall --out DIR` starts a live server (``python -m memsvc.server`` on a
free loopback port; SQLite unless ``--database-url`` / ``--redis-url``) on the model in
``--model-dir`` (default: the shipped one) and plays held-out dialogues against it, the
way a client would. Each dialogue is a new user of one tenant:

- **recall, memory on**: session A tells 1–3 facts (one turn each; the model writes its
  own replies), session B — a new session of the same user, so a fresh recurrent
  state — asks for one of them. A hit is the exact value in B's greedy reply.
- **recall, memory off**: the same dialogues with ``memory_scope: "none"`` (nothing
  written, nothing read): what a model without persistent memory can do (chance).
- **forget**: session A tells the facts, session B says "Please forget my …", session
  C asks for it. Forgotten means the value is not in C's reply; the slot check asks
  the admin API whether a slot holding the value survived.

Facts come from :class:`retnet_core.training.dialogues.DialogueGenerator` with **held-out values**
(names, places and codes that never occur in training: the split is by a hash of the
value, and values whose words occur in the chit-chat training text are excluded).

Writes ``recall.json``, ``recall.md`` and ``recall.png`` to DIR. Deterministic (greedy
decoding, fixed seed); bounded by the number of facts and ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from memsvc.bench._live import (
    ADMIN_KEY,
    LiveServer,
    exit_on_sigterm,
    machine_info,
    new_tenant_key,
    server_env,
    work_root,
)

TARGET_ON, TARGET_OFF = 0.90, 0.10


def heldout_examples(kind: str, n: int, seed: int) -> list[Any]:
    """``n`` held-out dialogues of ``kind`` (values unseen in training)."""
    from retnet_core.training.data import load_chitchat, split_conversations, words_of
    from retnet_core.training.dialogues import DialogueGenerator, ValuePools

    splits = split_conversations(load_chitchat())
    train_words = words_of(m.content for c in splits["train"] for m in c.messages)
    gen = DialogueGenerator(ValuePools.build(exclude=train_words), "heldout", seed=seed)
    return [gen.example(kind) for _ in range(n)]


class Player:
    """Plays dialogues against a live server as one tenant (greedy, bounded tokens)."""

    def __init__(self, http: httpx.AsyncClient, key: str, max_tokens: int) -> None:
        self.http, self.max_tokens = http, max_tokens
        self.auth = {"Authorization": f"Bearer {key}"}

    async def session(self, user: str, scope: str) -> str:
        r = await self.http.post(
            "/v1/sessions", json={"user_id": user, "memory_scope": scope}, headers=self.auth
        )
        r.raise_for_status()
        return r.json()["id"]

    async def say(self, sid: str, text: str) -> dict:
        body = {"content": text, "max_tokens": self.max_tokens}
        r = await self.http.post(f"/v1/sessions/{sid}/messages", json=body, headers=self.auth)
        r.raise_for_status()
        return r.json()

    async def play(self, user: str, scope: str, sessions: list[list[str]]) -> list[list[dict]]:
        """Each inner list is one session's user turns, in order; returns the turn results."""
        out = []
        for turns in sessions:
            sid = await self.session(user, scope)
            out.append([await self.say(sid, t) for t in turns])
        return out


def _user_turns(session: Any) -> list[str]:
    return [m.content for m in session if m.role == "user"]


async def _recall_one(player: Player, ex: Any, user: str, scope: str) -> dict:
    told, asked = _user_turns(ex.sessions[0]), _user_turns(ex.sessions[-1])
    res = await player.play(user, scope, [told, asked])
    reply = res[-1][-1]["message"]["content"]
    return {
        "user": user,
        "told": told,
        "asked": asked[-1],
        "value": ex.answer,
        "reply": reply,
        "hit": ex.answer in reply,
        "slots_written": sum(t["usage"]["memory_writes"] for t in res[0]),
    }


async def _forget_one(player: Player, admin: httpx.AsyncClient, ex: Any, user: str) -> dict:
    told = _user_turns(ex.sessions[0])
    request, asked = _user_turns(ex.sessions[1]), _user_turns(ex.sessions[-1])
    res = await player.play(user, "user", [told, request, asked])
    reply = res[-1][-1]["message"]["content"]
    r = await admin.get("/admin/memory/slots", params={"user_id": user, "limit": 1000})
    r.raise_for_status()
    texts = [s["text"] or "" for s in r.json()["data"]]
    return {
        "user": user,
        "told": told,
        "request": request[-1],
        "asked": asked[-1],
        "value": ex.forgotten,
        "ack": res[1][-1]["message"]["content"],
        "reply": reply,
        "forgotten": ex.forgotten not in reply,
        "refused": "don't know" in reply.lower(),
        "slot_removed": not any(ex.forgotten in t for t in texts),
        "slots_removed": res[1][-1]["usage"]["memory_forgotten"],
    }


async def _gather(jobs: list, concurrency: int) -> list:
    gate = asyncio.Semaphore(concurrency)

    async def run(job):
        async with gate:
            return await job

    return list(await asyncio.gather(*(run(j) for j in jobs)))


async def play_all(
    url: str, key: str, facts: int, forgets: int, seed: int, max_tokens: int, concurrency: int
) -> dict[str, list[dict]]:
    """The three conditions over the same held-out dialogues; one user per dialogue."""
    recall = heldout_examples("recall", facts, seed)
    forget = heldout_examples("forget", forgets, seed + 1)
    stamp = time.monotonic_ns()
    timeout = httpx.Timeout(300.0)
    async with (
        httpx.AsyncClient(base_url=url, timeout=timeout) as http,
        httpx.AsyncClient(
            base_url=url, timeout=timeout, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as admin,
    ):
        player = Player(http, key, max_tokens)
        on = [_recall_one(player, ex, f"on-{stamp}-{i}", "user") for i, ex in enumerate(recall)]
        off = [_recall_one(player, ex, f"off-{stamp}-{i}", "none") for i, ex in enumerate(recall)]
        gone = [_forget_one(player, admin, ex, f"fg-{stamp}-{i}") for i, ex in enumerate(forget)]
        return {
            "memory_on": await _gather(on, concurrency),
            "memory_off": await _gather(off, concurrency),
            "forget": await _gather(gone, concurrency),
        }


def summarise(rows: dict[str, list[dict]]) -> dict[str, Any]:
    """Rates per condition, with counts."""

    def rate(items: list[dict], key: str) -> float:
        return sum(bool(r[key]) for r in items) / max(len(items), 1)

    on, off, fg = rows["memory_on"], rows["memory_off"], rows["forget"]
    return {
        "facts": len(on),
        "recall_memory_on": rate(on, "hit"),
        "recall_memory_off": rate(off, "hit"),
        "slot_written_on": sum(r["slots_written"] > 0 for r in on) / max(len(on), 1),
        "forgets": len(fg),
        "forgotten": rate(fg, "forgotten"),
        "forget_refused": rate(fg, "refused"),
        "forget_slot_removed": rate(fg, "slot_removed"),
    }


def _markdown(summary: dict, meta: dict, rows: dict[str, list[dict]]) -> str:
    s = summary
    on_ok = s["recall_memory_on"] >= TARGET_ON
    off_ok = s["recall_memory_off"] <= TARGET_OFF
    lines = [
        "# Cross-session recall and forgetting through the REST API",
        "",
        f"Command: `{meta['command']}`  ",
        f"Model: `{meta['model_dir']}`; backend: {meta['backend']}; "
        f"{meta['machine']['cpus']} CPUs, load {meta['machine']['loadavg_1_5_15']}; "
        f"{meta['wall_s']:.0f} s.",
        "",
        "| condition | dialogues | rate | target |",
        "|---|---|---|---|",
        f"| recall in a new session, memory on | {s['facts']} | {s['recall_memory_on']:.3f} "
        f"| ≥ {TARGET_ON:.2f}: {'met' if on_ok else '**missed**'} |",
        f"| recall in a new session, memory off | {s['facts']} | {s['recall_memory_off']:.3f} "
        f"| ≤ {TARGET_OFF:.2f}: {'met' if off_ok else '**missed**'} |",
        f"| fact stated and written to a slot (memory on) | {s['facts']} | "
        f"{s['slot_written_on']:.3f} | |",
        f"| forgotten: value absent from the reply after 'forget' | {s['forgets']} | "
        f"{s['forgotten']:.3f} | |",
        f"| ... reply is a refusal ('I don't know ...') | {s['forgets']} | "
        f"{s['forget_refused']:.3f} | |",
        f"| ... the value's slot was removed | {s['forgets']} | {s['forget_slot_removed']:.3f} | |",
        "",
        "Misses, memory on (first 10):",
        "",
    ]
    misses = [r for r in rows["memory_on"] if not r["hit"]][:10]
    lines += [f"- asked `{r['asked']}` (value `{r['value']}`): `{r['reply']}`" for r in misses]
    if not misses:
        lines.append("- none")
    return "\n".join(lines) + "\n"


def _plot(summary: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["recall\nmemory on", "recall\nmemory off", "forgotten", "slot removed"]
    keys = ["recall_memory_on", "recall_memory_off", "forgotten", "forget_slot_removed"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(names, [summary[k] for k in keys], color=["C2", "C7", "C0", "C0"])
    ax.axhline(TARGET_ON, color="C2", linestyle="--", linewidth=1)
    ax.axhline(TARGET_OFF, color="C7", linestyle="--", linewidth=1)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("rate over held-out dialogues")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def run(
    out: Path,
    model_dir: Path | None,
    facts: int,
    forgets: int,
    seed: int,
    max_tokens: int,
    concurrency: int,
    database_url: str | None,
    redis_url: str | None,
    redis_prefix: str | None = None,
) -> dict[str, Any]:
    """Start a server, play every dialogue, write recall.{json,md,png}; returns the summary."""
    from memsvc.config import DEFAULT_MODEL_DIR

    model = Path(model_dir or DEFAULT_MODEL_DIR).resolve()  # the server runs in its own cwd
    work = work_root() / f"recall-{time.monotonic_ns()}"
    extra = {"MEMSVC_REDIS_PREFIX": redis_prefix} if redis_prefix else {}
    env = server_env(model, work / "data", database_url, redis_url, **extra)
    t0 = time.perf_counter()
    try:
        with LiveServer(env, work) as server:
            key = new_tenant_key(env)
            rows = asyncio.run(
                play_all(server.url, key, facts, forgets, seed, max_tokens, concurrency)
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary = summarise(rows)
    meta = {
        "command": (
            f"memsvc bench recall --out {out} --facts {facts} --forgets {forgets} --seed {seed}"
        ),
        "model_dir": str(model),
        "backend": "Postgres" if database_url else "SQLite (embedded default)",
        "wall_s": time.perf_counter() - t0,
        "machine": machine_info(),
    }
    out.mkdir(parents=True, exist_ok=True)
    record = {"summary": summary, "meta": meta, "rows": rows}
    (out / "recall.json").write_text(json.dumps(record, indent=1))
    (out / "recall.md").write_text(_markdown(summary, meta, rows))
    _plot(summary, out / "recall.png")
    return summary


def cli(
    out: Annotated[Path, typer.Option(help="folder for recall.json / .md / .png")],
    model_dir: Annotated[Path | None, typer.Option(help="checkpoint [default: shipped]")] = None,
    facts: Annotated[int, typer.Option(min=1, help="held-out recall dialogues")] = 200,
    forgets: Annotated[int, typer.Option(min=0, help="held-out forget dialogues")] = 100,
    seed: Annotated[int, typer.Option(help="dialogue seed")] = 7,
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens per reply")] = 24,
    concurrency: Annotated[int, typer.Option(min=1, help="dialogues in flight")] = 8,
    database_url: Annotated[str | None, typer.Option(help="Postgres URL")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL")] = None,
) -> None:
    """Cross-session recall (memory on vs off) and forgetting through the REST API."""
    exit_on_sigterm()
    summary = run(
        out, model_dir, facts, forgets, seed, max_tokens, concurrency, database_url, redis_url
    )
    typer.echo(json.dumps(summary, indent=2))
