"""LongMemEval through the REST API: import each history, ask in a new session, memory on/off.

`memsvc bench longmemeval --data FILE --out DIR` reads LongMemEval's published JSON
(:mod:`memsvc.bench.longmemeval_data`; ``--generate N --out-data FILE`` writes a synthetic
set in that format first, :mod:`memsvc.bench.longmemeval_synth`), starts a live server
(SQLite unless ``--database-url`` / ``--redis-url``) on ``--model-dir`` (default: the
shipped model) and, for each instance (the first ``--limit``), as a new user of one tenant:

1. imports the haystack sessions, oldest first, each into its own session through
   ``POST /v1/sessions/{id}/transcript`` with the session's date as every turn's
   timestamp (memory scope ``user``: the user turns are written to memory as they go).
   ``--variant oracle`` (the default) imports only the evidence sessions
   (``answer_session_ids``); ``full`` imports the whole haystack.
2. asks the question in a NEW session of that user (fresh recurrent state), greedy and
   bounded by ``--max-tokens``, twice: with ``memory_scope: "user"`` (memory on) and with
   ``memory_scope: "none"`` (memory off: nothing read). The import is shared; only the
   question turn differs, so the difference is what the memory carries across sessions.

Scoring (per reply): ``exact`` = normalised reply == normalised answer; ``contains`` =
normalised answer is in the normalised reply (lower case, runs of non-alphanumerics → one
space). For ``_abs`` questions both mean the reply declines (:data:`DECLINES`). ``correct``
is ``contains``, or the ``--judge module:function`` hook's verdict, called as
``fn(question, answer, reply) -> bool``.

Tokens: ``fed_import`` is the history prefilled by the imports (each new session's
``token_count``); ``fed_question`` the question turn's ``usage.prompt_tokens``;
``served_from_state`` its ``usage.cached_tokens`` (history tokens the turn resumed from a
saved state instead of feeding). The question session is new, so that is 0 by design:
the history reaches it through memory, never by replay.

Writes ``longmemeval.json`` and ``longmemeval.md`` to ``--out``.
"""

from __future__ import annotations

import importlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from memsvc.bench._live import (
    REPO_ROOT,
    exit_on_sigterm,
    machine_info,
    play_on_live_server,
)
from memsvc.bench.longmemeval_data import (
    DataError,
    Instance,
    chunks,
    load_instances,
    select_sessions,
    transcript_pairs,
)
from memsvc.bench.longmemeval_report import markdown, summarise

CONDITIONS = {"memory_on": "user", "memory_off": "none"}  # condition → question's scope
DECLINES = (
    "don't know", "do not know", "did not mention", "didn't mention", "not mentioned",
    "no information", "haven't told", "have not told", "didn't tell", "did not tell",
    "not sure", "can't recall", "cannot recall", "don't remember", "do not remember",
)  # fmt: skip
Judge = Callable[[str, str, str], bool]


def normalise(text: str) -> str:
    """Lower case; every run of characters other than a-z and 0-9 becomes one space."""
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def score(answer: str, reply: str, abstention: bool) -> dict[str, bool]:
    """``{"exact", "contains"}`` of one reply (see module doc)."""
    if abstention:
        declined = any(d in reply.lower().replace("’", "'") for d in DECLINES)
        return {"exact": declined, "contains": declined}
    a, r = normalise(answer), normalise(reply)
    return {"exact": bool(a) and a == r, "contains": bool(a) and f" {a} " in f" {r} "}


def load_judge(spec: str) -> Judge:
    """``"package.module:function"`` → the function (a clear error when it is not there)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise typer.BadParameter(f"judge {spec!r} must look like 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise typer.BadParameter(f"judge {spec!r}: {exc}") from None
    if not callable(fn):
        raise typer.BadParameter(f"judge {spec!r} is not callable")
    return fn


class Asker:
    """One tenant's client: sessions, transcript imports and timed question turns."""

    def __init__(self, http: httpx.AsyncClient, key: str, max_tokens: int) -> None:
        self.http, self.max_tokens = http, max_tokens
        self.auth = {"Authorization": f"Bearer {key}"}

    async def _post(self, path: str, body: dict) -> dict:
        r = await self.http.post(path, json=body, headers=self.auth)
        if r.status_code >= 300:
            raise RuntimeError(f"POST {path}: {r.status_code} {r.text[:300]}")
        return r.json()

    async def session(self, user: str, scope: str) -> str:
        return (await self._post("/v1/sessions", {"user_id": user, "memory_scope": scope}))["id"]

    async def import_session(self, user: str, turns: list[tuple[str, str]], stamp: str) -> dict:
        """A new session of ``user`` holding ``turns`` (in requests of ≤ 200 turns)."""
        sid = await self.session(user, "user")
        out = {"token_count": 0, "memory_writes": 0, "turns": 0}
        for part in chunks(turns):
            body = {"turns": [{"role": r, "content": c, "timestamp": stamp} for r, c in part]}
            res = await self._post(f"/v1/sessions/{sid}/transcript", body)
            out["token_count"] = res["token_count"]  # the session's whole history so far
            out["memory_writes"] += res["memory_writes"]
            out["turns"] += res["messages"]
        return out

    async def ask(self, user: str, scope: str, question: str) -> dict:
        """The question in a new session of ``user``; reply, latency and usage."""
        sid = await self.session(user, scope)
        body = {"content": question, "max_tokens": self.max_tokens, "temperature": 0.0}
        t0 = time.perf_counter()
        res = await self._post(f"/v1/sessions/{sid}/messages", body)
        latency = time.perf_counter() - t0
        u = res["usage"]
        return {
            "reply": res["message"]["content"],
            "latency_s": latency,
            "prompt_tokens": u["prompt_tokens"],
            "completion_tokens": u["completion_tokens"],
            "cached_tokens": u["cached_tokens"],
            "state_source": u["state_source"],
        }


async def play_one(asker: Asker, inst: Instance, user: str, variant: str, judge: Judge | None):
    """Import one instance's history, ask its question memory on and off; one result row."""
    row: dict[str, Any] = {
        "question_id": inst.question_id,
        "question_type": inst.question_type,
        "abstention": inst.abstention,
        "question": inst.question,
        "answer": inst.answer,
        "sessions": 0,
        "turns_imported": 0,
        "turns_changed": 0,
        "fed_import": 0,
        "memory_writes": 0,
    }
    t0 = time.perf_counter()
    for s in sorted(select_sessions(inst, variant), key=lambda s: s.date):
        turns, changed = transcript_pairs(s.turns)
        row["turns_changed"] += changed
        if not turns:
            continue
        res = await asker.import_session(user, turns, s.date.isoformat())
        row["sessions"] += 1
        row["turns_imported"] += res["turns"]
        row["fed_import"] += res["token_count"]
        row["memory_writes"] += res["memory_writes"]
    row["import_s"] = time.perf_counter() - t0
    for cond, scope in CONDITIONS.items():
        got = await asker.ask(user, scope, inst.question)
        got.update(score(inst.answer, got["reply"], inst.abstention))
        if judge is not None:
            got["judge"] = bool(judge(inst.question, inst.answer, got["reply"]))
        got["correct"] = got["judge"] if judge is not None else got["contains"]
        row[cond] = got
    return row


async def play_all(
    url: str, key: str, instances: list[Instance], variant: str, max_tokens: int, judge
) -> list[dict]:
    """Every instance in order, one at a time (latencies are not queueing delays)."""
    stamp = time.monotonic_ns()
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0)) as http:
        asker = Asker(http, key, max_tokens)
        return [
            await play_one(asker, inst, f"lme-{stamp}-{i}", variant, judge)
            for i, inst in enumerate(instances)
        ]


def run(
    data: Path,
    out: Path,
    *,
    variant: str = "oracle",
    limit: int | None = None,
    model_dir: Path | None = None,
    max_tokens: int = 24,
    judge: str | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Validate ``data``, run the bench on a live server, write the two files; the summary."""
    from memsvc.config import DEFAULT_MODEL_DIR

    instances = load_instances(data)
    chosen = instances[:limit] if limit else instances
    judge_fn = load_judge(judge) if judge else None
    model = Path(model_dir or DEFAULT_MODEL_DIR).resolve()  # the server runs in its own cwd
    t0 = time.perf_counter()
    rows = play_on_live_server(
        "longmemeval", model, database_url, redis_url, extra_env,
        lambda url, key: play_all(url, key, chosen, variant, max_tokens, judge_fn),
    )  # fmt: skip
    summary = summarise(rows)
    meta = {
        "command": command
        or f"memsvc bench longmemeval --data {data} --out {out} --variant {variant}"
        + (f" --limit {limit}" if limit else ""),
        "data": str(data),
        "instances_in_file": len(instances),
        "variant": variant,
        "model_dir": str(
            model.relative_to(REPO_ROOT) if model.is_relative_to(REPO_ROOT) else model
        ),
        "backend": "Postgres" if database_url else "SQLite (embedded default)",
        "max_tokens": max_tokens,
        "judge": judge,
        "wall_s": time.perf_counter() - t0,
        "machine": machine_info(),
    }
    out.mkdir(parents=True, exist_ok=True)
    record = {"summary": summary, "meta": meta, "rows": rows}
    (out / "longmemeval.json").write_text(json.dumps(record, indent=1))
    (out / "longmemeval.md").write_text(markdown(summary, meta, rows))
    return summary


def cli(
    out: Annotated[Path | None, typer.Option(help="folder for longmemeval.json / .md")] = None,
    data: Annotated[Path | None, typer.Option(help="LongMemEval JSON (e.g. oracle)")] = None,
    variant: Annotated[str, typer.Option(help="oracle: evidence sessions only; full")] = "oracle",
    limit: Annotated[int | None, typer.Option(min=1, help="first N questions only")] = None,
    generate: Annotated[int | None, typer.Option(min=1, help="write N synthetic")] = None,
    out_data: Annotated[Path | None, typer.Option(help="where --generate writes")] = None,
    seed: Annotated[int, typer.Option(help="seed of --generate")] = 0,
    max_filler: Annotated[int, typer.Option(min=0, help="--generate: most filler")] = 8,
    judge: Annotated[str | None, typer.Option(help="module:function(q, a, reply)")] = None,
    model_dir: Annotated[Path | None, typer.Option(help="checkpoint [default: shipped]")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, max=512, help="tokens per reply")] = 24,
    database_url: Annotated[str | None, typer.Option(help="Postgres URL")] = None,
    redis_url: Annotated[str | None, typer.Option(help="Redis URL")] = None,
) -> None:
    """LongMemEval (or a synthetic set in its format): accuracy per type, memory on vs off."""
    exit_on_sigterm()
    if variant not in ("oracle", "full"):
        raise typer.BadParameter("--variant must be 'oracle' or 'full'")
    if generate is not None:
        from memsvc.bench.longmemeval_synth import generate as make

        if out_data is None:
            raise typer.BadParameter("--generate needs --out-data FILE")
        out_data.parent.mkdir(parents=True, exist_ok=True)
        out_data.write_text(json.dumps(make(generate, seed, max_filler), indent=1))
        typer.echo(f"wrote {generate} synthetic instances to {out_data}")
        if out is None:  # only the data set was asked for
            return
        data = data or out_data
    if data is None or out is None:
        raise typer.BadParameter("give --data FILE (or --generate N --out-data FILE) and --out DIR")
    parts = ["memsvc bench longmemeval"]
    if generate is not None:
        parts.append(f"--generate {generate} --seed {seed} --max-filler {max_filler}")
        parts.append(f"--out-data {out_data}")
    else:
        parts.append(f"--data {data}")
    parts.append(f"--variant {variant}" + (f" --limit {limit}" if limit else ""))
    parts.append(f"--max-tokens {max_tokens} --out {out}")
    if judge:
        parts.append(f"--judge {judge}")
    if database_url:
        parts.append("--database-url … --redis-url …" if redis_url else "--database-url …")
    try:
        summary = run(
            data, out, variant=variant, limit=limit, model_dir=model_dir, max_tokens=max_tokens,
            judge=judge, database_url=database_url, redis_url=redis_url, command=" ".join(parts),
        )  # fmt: skip
    except DataError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps({k: summary[k] for k in ("questions", "overall", "latency")}, indent=2))
