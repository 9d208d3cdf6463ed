"""Cross-session memory through REST, the way people talk (issue 13's protocol and targets).

`memsvc bench memory --out DIR` starts a live server (``python -m memsvc.server``;
SQLite unless ``--database-url`` / ``--redis-url``) on ``--model-dir`` (default: the
shipped model) and plays :func:`memsvc.bench.memory_data.make_plans` against it, many
users of one tenant, every turn greedy with ``max_tokens`` bounded. Per user:

1. session 1 tells two facts, session 2 a third (everyday phrasings, held-out values);
2. each fact is asked in a new session → **recall** (trained kinds / other kinds);
3. a kind never told is asked in a new session → **decline**;
4. another user of the tenant (nothing told) asks the first fact → **cross-user**;
5. one fact is updated ("Actually, I moved to …"), then asked in a new session →
   **latest value**;
6. another fact is forgotten ("Please forget …"), then asked in a new session, and the
   two others each in their own → **forget removes** / **forget keeps**.

Scoring (pure functions below): a recall counts when the reply :func:`contains` the
value (case-insensitive, whole word); a decline when :func:`is_decline`: the reply says
it does not know and names no value of the asked kind. Forget removes when the value is
neither in the reply nor in any memory text of ``GET /v1/users/{u}/memories``.

With ``--chatter`` every telling and update is said between two chit-chat messages of
the held-out test split, as people mention facts inside longer messages.

The memory-off baseline plays steps 1, 2, 3 and 5 in sessions with
``memory_scope: "none"`` (nothing written or read): what the model does without memory.

Writes ``memory.json`` (summary, meta, every scored item) and ``memory.md`` to DIR.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from memsvc.bench._live import (
    exit_on_sigterm,
    machine_info,
    play_on_live_server,
)
from memsvc.bench.memory_data import KINDS, WORDS, UserPlan, buried, chatter_lines, make_plans
from memsvc.bench.memory_report import MEASURES, command_line, markdown, plan_json, shown, summarise

# ---- scoring -------------------------------------------------------------------------
DECLINE = re.compile(
    r"\b(i\s+(do\s+not|don'?t|dont)\s+know|not\s+sure|no\s+idea|i'?m\s+not\s+aware"
    r"|(don'?t|do\s+not|can'?t|cannot)\s+(remember|recall)"
    r"|(haven'?t|have\s+not|didn'?t|did\s+not|never)\s+(told|tell|mentioned|mention|said))\b",
    re.IGNORECASE,
)
_I_FORMS = {"I", "I'm", "I've", "I'll", "I'd", "Im", "OK", "Okay"}
# common values of the everyday kinds a model may name without having been told
COMMON = {
    "colour": ("red", "blue", "green", "yellow", "black", "white", "pink", "purple", "orange"),
    "food": ("pizza", "pasta", "sushi", "burgers", "salad", "curry", "tacos", "steak"),
    "instrument": ("guitar", "piano", "drums", "violin", "flute", "trumpet", "bass"),
}


def contains(value: str, reply: str) -> bool:
    """Whether ``reply`` holds ``value`` as a whole word (case-insensitive).

    >>> contains("Ziggy", "Your dog is called ziggy!"), contains("Ziggy", "Ziggyx")
    (True, False)
    """
    pattern = rf"(?<![A-Za-z0-9]){re.escape(value)}(?![A-Za-z0-9])"
    return re.search(pattern, reply, re.IGNORECASE) is not None


def _capitalised_inside(reply: str) -> list[str]:
    """Capitalised words that do not start a sentence (names a model may invent)."""
    words = []
    for sentence in re.split(r"(?<=[.!?])\s+", reply.strip()):
        tokens = re.findall(r"[A-Za-z][A-Za-z']*", sentence)
        words += [t for t in tokens[1:] if t[0].isupper() and t not in _I_FORMS]
    return words


def names_value(reply: str, values: str, known: Iterable[str] = ()) -> bool:
    """Whether ``reply`` names a value of the ValuePools/WORDS kind ``values``.

    A value is named when the reply holds one of ``known`` (the values told in the run),
    a word of that kind's lists, a number of 2+ digits (``code``), or a capitalised word
    inside a sentence (``person``, ``place``, ``thing``: invented names are capitalised).
    """
    words = {w.lower() for w in re.findall(r"[A-Za-z0-9']+", reply)}
    vocab = {v.lower() for v in (*known, *WORDS.get(values, ()), *COMMON.get(values, ()))}
    if words & vocab:
        return True
    if values == "code":
        return re.search(r"\d{2,}", reply) is not None
    if values in ("person", "place", "thing"):
        return bool(_capitalised_inside(reply))
    return False


def is_decline(reply: str, values: str, known: Iterable[str] = ()) -> bool:
    """A decline: the reply says it does not know and names no value of the kind.

    >>> is_decline("I don't know your dog's name.", "person")
    True
    >>> is_decline("I don't know, maybe Bouford?", "place")
    False
    """
    return DECLINE.search(reply) is not None and not names_value(reply, values, known)


# ---- playing -------------------------------------------------------------------------
class Player:
    """Plays turns against a live server as one tenant (greedy, bounded tokens)."""

    def __init__(self, http: httpx.AsyncClient, key: str, max_tokens: int) -> None:
        self.http, self.max_tokens = http, max_tokens
        self.auth = {"Authorization": f"Bearer {key}"}

    async def session(self, user: str, scope: str, turns: list[str]) -> list[dict]:
        """One new session of ``user`` with ``turns`` in order; each turn's result."""
        r = await self.http.post(
            "/v1/sessions", json={"user_id": user, "memory_scope": scope}, headers=self.auth
        )
        r.raise_for_status()
        sid, out = r.json()["id"], []
        for text in turns:
            body = {"content": text, "max_tokens": self.max_tokens, "temperature": 0.0}
            t = await self.http.post(f"/v1/sessions/{sid}/messages", json=body, headers=self.auth)
            t.raise_for_status()
            out.append(t.json())
        return out

    async def ask(self, user: str, scope: str, text: str) -> str:
        """``text`` alone in a new session; the reply."""
        return (await self.session(user, scope, [text]))[0]["message"]["content"]

    async def memories(self, user: str) -> dict[str, str]:
        """{id: text} of every memory of ``user`` (all pages of GET /v1/users/{u}/memories)."""
        found: dict[str, str] = {}
        while True:
            r = await self.http.get(
                f"/v1/users/{user}/memories",
                params={"limit": 200, "offset": len(found)},
                headers=self.auth,
            )
            r.raise_for_status()
            page = r.json()["memories"]
            found.update((m["id"], m["text"]) for m in page)
            if len(page) < 200:
                return found


def _item(
    plan: UserPlan,
    measure: str,
    kind: str,
    value: str,
    asked: str,
    reply: str,
    ok: bool,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "user": plan.index,
        "measure": measure,
        "kind": kind,
        "value": value,
        "asked": asked,
        "reply": reply,
        "ok": ok,
        **extra,
    }


def _recall_measure(kind: str) -> str:
    return "recall_trained" if KINDS[kind].trained else "recall_other"


async def _tell_and_recall(p: Player, plan: UserPlan, user: str, scope: str, known: list[str]):
    """Steps 1–3 and 5 (both conditions): the scored items and the told turns' writes."""
    facts = plan.facts
    told = await p.session(user, scope, [facts[0].tell, facts[1].tell])
    told += await p.session(user, scope, [facts[2].tell])
    items = []
    for i, f in enumerate(facts):
        q = plan.ask(f.kind, i)
        reply = await p.ask(user, scope, q)
        items.append(
            _item(
                plan, _recall_measure(f.kind), f.kind, f.value, q, reply, contains(f.value, reply)
            )
        )
    q = plan.ask(plan.never, 0)
    reply = await p.ask(user, scope, q)
    values = KINDS[plan.never].values
    items.append(
        _item(plan, "declines", plan.never, "", q, reply, is_decline(reply, values, known))
    )
    fu = facts[plan.update]
    await p.session(user, scope, [plan.update_text])
    q = plan.ask(fu.kind, 1)
    reply = await p.ask(user, scope, q)
    items.append(
        _item(
            plan,
            "latest",
            fu.kind,
            plan.new_value,
            q,
            reply,
            contains(plan.new_value, reply),
            old_value=fu.value,
            old_named=contains(fu.value, reply),
            said=plan.update_text,
        )
    )
    writes = sum(t["usage"]["memory_writes"] for t in told)
    return items, writes


async def play_user(p: Player, plan: UserPlan, prefix: str, known: list[str]) -> dict[str, Any]:
    """The whole protocol for one user, memory on; scored items and diagnostics."""
    user = f"{prefix}-u{plan.index}"
    items, writes = await _tell_and_recall(p, plan, user, "user", known)
    first = plan.facts[0]
    q = plan.ask(first.kind, 2)
    reply = await p.ask(f"{user}-other", "user", q)
    items.append(
        _item(plan, "cross_user", first.kind, first.value, q, reply, contains(first.value, reply))
    )
    before = await p.memories(user)
    forget = (await p.session(user, "user", [plan.forget_text]))[0]
    removed = forget["usage"]["forgotten_memories"]
    ff = plan.facts[plan.forget]
    q = plan.ask(ff.kind, 2)
    reply = await p.ask(user, "user", q)
    texts = list((await p.memories(user)).values())
    in_store = [t for t in texts if contains(ff.value, t)]
    gone_reply = not contains(ff.value, reply)
    items.append(
        _item(
            plan,
            "forget_removes",
            ff.kind,
            ff.value,
            q,
            reply,
            gone_reply and not in_store,
            said=plan.forget_text,
            gone_reply=gone_reply,
            gone_store=not in_store,
            ack=forget["message"]["content"],
            forgotten_memories=len(removed),
            removed_texts=[before.get(i, "?") for i in removed],
            holding=in_store[:3],
        )
    )
    for j, f in enumerate(plan.facts):
        if j == plan.forget:
            continue
        q = plan.ask(f.kind, 3 + j)
        reply = await p.ask(user, "user", q)
        value = plan.current(j)
        items.append(
            _item(
                plan,
                "forget_keeps",
                f.kind,
                value,
                q,
                reply,
                contains(value, reply),
                kept_in_store=any(contains(value, t) for t in texts),
            )
        )
    return {"user": plan.index, "items": items, "facts_written": writes, "memories": len(texts)}


async def play_baseline(p: Player, plan: UserPlan, prefix: str, known: list[str]) -> dict:
    """Steps 1–3 and 5 with memory off (``memory_scope: "none"``)."""
    items, writes = await _tell_and_recall(p, plan, f"{prefix}-off{plan.index}", "none", known)
    return {"user": plan.index, "items": items, "facts_written": writes}


async def _gather(jobs: list, concurrency: int) -> list:
    gate = asyncio.Semaphore(concurrency)

    async def run(job):
        async with gate:
            return await job

    return list(await asyncio.gather(*(run(j) for j in jobs)))


async def play_all(
    url: str, key: str, plans: list[UserPlan], max_tokens: int, concurrency: int, baseline: bool
) -> dict[str, list[dict]]:
    """Every user's protocol (memory on) and, with ``baseline``, the memory-off one."""
    known = [v for pl in plans for v in (*(f.value for f in pl.facts), pl.new_value)]
    prefix = f"mem{time.monotonic_ns()}"
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0)) as http:
        p = Player(http, key, max_tokens)
        on = [play_user(p, pl, prefix, known) for pl in plans]
        off = [play_baseline(p, pl, prefix, known) for pl in plans] if baseline else []
        done = await _gather(on + off, concurrency)
    return {"memory_on": done[: len(on)], "memory_off": done[len(on) :]}


def heldout_pools() -> dict[str, list[str]]:
    """ValuePools' held-out values per kind, minus words of the chit-chat training split."""
    from retnet_core.training.data import load_chitchat, split_conversations, words_of
    from retnet_core.training.dialogues import ValuePools

    train = split_conversations(load_chitchat())["train"]
    words = words_of(m.content for c in train for m in c.messages)
    return ValuePools.build(exclude=words).heldout


def run(
    out: Path,
    model_dir: Path | None = None,
    users: int = 70,
    seed: int = 13,
    max_tokens: int = 24,
    concurrency: int = 8,
    baseline: bool = True,
    database_url: str | None = None,
    redis_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    weights: str = "auto",
    chatter: bool = False,
    query_adapter: str = "bundled",
    note_contrast: float | None = None,
    note_check: bool = True,
) -> dict[str, Any]:
    """Start a server, play every user, write memory.{json,md}; returns the summary.
    ``chatter``: every telling and update said between two chit-chat messages;
    ``query_adapter``: the server's ``MEMSVC_MEMORY_QUERY_ADAPTER`` (bundled, none, a path);
    ``note_contrast``: its ``MEMSVC_MEMORY_NOTE_CONTRAST`` (None: the setting's default);
    ``note_check``: its ``MEMSVC_MEMORY_NOTE_CHECK``."""
    from memsvc.config import DEFAULT_MODEL_DIR

    model = Path(model_dir or DEFAULT_MODEL_DIR).resolve()
    plans = make_plans(users, seed, heldout_pools())
    if chatter:
        lines = chatter_lines()
        plans = [buried(p, lines) for p in plans]
    t0 = time.perf_counter()
    env = {
        **(extra_env or {}),
        "MEMSVC_WEIGHTS": weights,
        "MEMSVC_MEMORY_QUERY_ADAPTER": query_adapter,
    }
    if note_contrast is not None:
        env["MEMSVC_MEMORY_NOTE_CONTRAST"] = str(note_contrast)
    env["MEMSVC_MEMORY_NOTE_CHECK"] = str(note_check).lower()
    rows = play_on_live_server(
        "memory", model, database_url, redis_url, env,
        lambda url, key: play_all(url, key, plans, max_tokens, concurrency, baseline),
    )  # fmt: skip
    summary = summarise(rows)
    meta = {
        "command": command_line(
            out,
            model_dir,
            users,
            seed,
            max_tokens,
            concurrency,
            baseline,
            database_url is not None,
            weights,
            chatter,
            query_adapter,
            note_contrast,
            note_check,
        ),
        "model_dir": shown(model),
        "backend": "Postgres + Redis" if database_url else "SQLite (embedded default)",
        "users": users,
        "wall_s": round(time.perf_counter() - t0, 1),
        "machine": machine_info(),
        "measures": {m.key: {"label": m.label, "op": m.op, "target": m.target} for m in MEASURES},
    }
    out.mkdir(parents=True, exist_ok=True)
    record = {"summary": summary, "meta": meta, "plans": [plan_json(p) for p in plans], **rows}
    (out / "memory.json").write_text(json.dumps(record, indent=1))
    (out / "memory.md").write_text(markdown(summary, meta, rows))
    return summary


def cli(
    out: Annotated[Path, typer.Option(help="folder for memory.json / memory.md")],
    model_dir: Annotated[Path | None, typer.Option(help="checkpoint [default: shipped]")] = None,
    users: Annotated[int, typer.Option(min=1, help="users, three facts each")] = 70,
    seed: Annotated[int, typer.Option(help="plan seed")] = 13,
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens per reply")] = 24,
    concurrency: Annotated[int, typer.Option(min=1, help="users in flight")] = 8,
    baseline: Annotated[bool, typer.Option(help="also play memory off")] = True,
    database_url: Annotated[str | None, typer.Option(help="Postgres URL")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL")] = None,
    weights: Annotated[str, typer.Option(help="auto, fp32, bf16 or int8")] = "auto",
    chatter: Annotated[
        bool, typer.Option(help="tell each fact between two chit-chat messages")
    ] = False,
    query_adapter: Annotated[
        str, typer.Option(help="the note read's query adapter: bundled, none or a path")
    ] = "bundled",
    note_contrast: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=10,
            help="context-aware decoding weight for noted turns [default: the setting's]",
        ),
    ] = None,
    note_check: Annotated[
        bool, typer.Option(help="check a noted question's other lines alone first")
    ] = True,
) -> None:
    """Cross-session memory through REST: recall, declines, update, forget, other users."""
    exit_on_sigterm()
    summary = run(
        out,
        model_dir,
        users,
        seed,
        max_tokens,
        concurrency,
        baseline,
        database_url,
        redis_url,
        weights=weights,
        chatter=chatter,
        query_adapter=query_adapter,
        note_contrast=note_contrast,
        note_check=note_check,
    )
    typer.echo(json.dumps(summary, indent=2))
