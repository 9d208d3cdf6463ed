"""Ten sample conversations with the shipped model, verbatim, through the REST API.

`memsvc bench samples --out DIR` starts a live server (SQLite, greedy decoding) and
writes ``samples.md`` and ``samples.json``: five chit-chat conversations opened with
lines of the held-out chit-chat split, then one each of

- cross-session recall (a fact told in one session, asked in a new one);
- forgetting (told, "please forget", asked again in a third session);
- a conversation **resumed after a server restart** (the second server loads the
  session's state from the database: ``cached_tokens`` shows that nothing is replayed);
- RAG (a document uploaded, then a question its passage answers);
- a question about something never told.

Facts and documents use held-out values (see ``memsvc bench recall``). Nothing here is
cherry-picked: the dialogues are fixed by the seed, and every reply is printed.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from memsvc.bench._live import (
    LiveServer,
    exit_on_sigterm,
    machine_info,
    new_tenant_key,
    server_env,
    work_root,
)
from memsvc.bench.recall import heldout_examples


def chitchat_openers(n: int) -> list[list[str]]:
    """The first and third lines of ``n`` held-out (test split) chit-chat conversations."""
    from retnet_core.training.data import load_chitchat, split_conversations

    test = [c for c in split_conversations(load_chitchat())["test"] if len(c.messages) >= 3]
    return [[c.messages[0].content, c.messages[2].content] for c in test[:n]]


class Chat:
    """A tenant's view of a server; records every turn as (session, role, text, usage)."""

    def __init__(self, url: str, key: str, max_tokens: int) -> None:
        self.http = httpx.Client(base_url=url, timeout=300.0)
        self.auth = {"Authorization": f"Bearer {key}"}
        self.max_tokens = max_tokens

    def session(self, user: str) -> str:
        r = self.http.post("/v1/sessions", json={"user_id": user}, headers=self.auth)
        r.raise_for_status()
        return r.json()["id"]

    def say(self, sid: str, text: str) -> dict:
        body = {"content": text, "max_tokens": self.max_tokens}
        r = self.http.post(f"/v1/sessions/{sid}/messages", json=body, headers=self.auth)
        r.raise_for_status()
        out = r.json()
        return {"session": sid, "user": text, "assistant": out["message"]["content"], **_usage(out)}

    def document(self, text: str, title: str) -> None:
        r = self.http.post("/v1/documents", json={"text": text, "title": title}, headers=self.auth)
        r.raise_for_status()

    def close(self) -> None:
        self.http.close()


def _usage(out: dict) -> dict:
    u = out["usage"]
    keep = ("cached_tokens", "state_source", "memory_writes", "memory_forgotten")
    return {k: u.get(k) for k in keep} | {"passages": len(out.get("passages") or [])}


def _sessions(chat: Chat, user: str, sessions: list[list[str]]) -> list[dict]:
    turns = []
    for texts in sessions:
        sid = chat.session(user)
        turns += [chat.say(sid, t) for t in texts]
    return turns


def play(env: dict, work: Path, max_tokens: int, seed: int) -> list[dict[str, Any]]:
    """The ten conversations, in order (two servers: the second resumes the seventh)."""
    recall = heldout_examples("recall", 1, seed)[0]
    forget = heldout_examples("forget", 1, seed + 1)[0]
    resumed = heldout_examples("in_context", 1, seed + 2)[0]
    passage = heldout_examples("passage", 1, seed + 3)[0]
    unknown = heldout_examples("unknown", 1, seed + 4)[0]
    users = lambda s: [m.content for m in s if m.role == "user"]  # noqa: E731
    convs: list[dict[str, Any]] = []
    with LiveServer(env, work) as server:
        key = new_tenant_key(env)  # the tenant lives in the database both servers share
        chat = Chat(server.url, key, max_tokens)
        for i, lines in enumerate(chitchat_openers(5)):
            convs.append(
                {"title": f"chit-chat {i + 1}", "turns": _sessions(chat, f"c{i}", [lines])}
            )
        sessions = [users(s) for s in recall.sessions]
        convs.append({"title": "cross-session recall", "turns": _sessions(chat, "r", sessions)})
        sessions = [users(s) for s in forget.sessions]
        convs.append({"title": "forget across sessions", "turns": _sessions(chat, "f", sessions)})
        told = users(resumed.sessions[0])
        sid = chat.session("s")
        first = [chat.say(sid, t) for t in told[:-1]]
        chat.document(passage.sessions[0][0].content, "sample document")
        rag = [chat.say(chat.session("d"), users(passage.sessions[0])[-1])]
        sessions = [users(s) for s in unknown.sessions]
        never = _sessions(chat, "u", sessions)
        chat.close()
    with LiveServer(env, work) as server:  # a new process: the state comes from the database
        chat = Chat(server.url, key, max_tokens)
        after = [chat.say(sid, told[-1])]
        chat.close()
    convs.append({"title": "resumed after a server restart", "turns": first + after})
    convs.append({"title": "RAG: answer from an uploaded document", "turns": rag})
    convs.append({"title": "asked about something never told", "turns": never})
    return convs


def _markdown(convs: list[dict], meta: dict) -> str:
    lines = [
        "# Sample conversations (verbatim, greedy decoding)",
        "",
        f"Command: `{meta['command']}`; model `{meta['model_dir']}`.",
        "A new session is marked with a rule; `cached` is the history served from the saved",
        "state (no replay), `mem +n/-n` the memory slots written / removed by that turn.",
        "",
    ]
    for n, conv in enumerate(convs, 1):
        lines += [f"## {n}. {conv['title']}", ""]
        last = None
        for t in conv["turns"]:
            if last is not None and t["session"] != last:
                lines += ["---", ""]
            last = t["session"]
            note = f"cached {t['cached_tokens']}, mem +{t['memory_writes']}"
            note += f"/-{t['memory_forgotten']}"
            note += f", passages {t['passages']}" if t["passages"] else ""
            lines += [
                f"**user:** {t['user']}  ",
                f"**memsvc:** {t['assistant']}  ",
                f"*({note})*",
                "",
            ]
    return "\n".join(lines)


def cli(
    out: Annotated[Path, typer.Option(help="folder for samples.md / samples.json")],
    model_dir: Annotated[Path | None, typer.Option(help="checkpoint [default: shipped]")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="tokens per reply")] = 40,
    seed: Annotated[int, typer.Option(help="dialogue seed")] = 11,
) -> None:
    """Ten sample conversations through the REST API, verbatim."""
    from memsvc.config import DEFAULT_MODEL_DIR

    exit_on_sigterm()
    model = Path(model_dir or DEFAULT_MODEL_DIR).resolve()  # the server runs in its own cwd
    work = work_root() / f"samples-{time.monotonic_ns()}"
    env = server_env(model, work / "data", None, None)
    try:
        convs = play(env, work, max_tokens, seed)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta = {
        "command": f"memsvc bench samples --out {out} --seed {seed}",
        "model_dir": str(model),
        "machine": machine_info(),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.json").write_text(json.dumps({"meta": meta, "conversations": convs}, indent=1))
    (out / "samples.md").write_text(_markdown(convs, meta))
    typer.echo(str(out / "samples.md"))
