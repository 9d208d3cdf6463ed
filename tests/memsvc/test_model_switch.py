"""Switching models under a live Postgres + Redis database loses nothing (issue 13 §7).

A server on checkpoint A chats in a session and writes a memory; the same database is
then served by checkpoint B (other random weights and other slot dims) or by a model
without a Retention Layer. The session goes on: its state is rebuilt once from the
stored messages (``usage.state_rebuilt``), its history is intact; memories keep their
ids and are re-encoded for B at start (new slots, banks stamped with B's fingerprint
and dims), or stay stored untouched when the new model has no memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import make_backend
from server_util import ADMIN_KEY, Server
from service_testkit import Backend
from tiny_model import make_tiny_checkpoint

USER = "switcher"


@pytest.fixture(scope="module")
def pg_backend(tmp_path_factory, checkpoint: Path) -> Iterator[Backend]:
    yield from make_backend("postgres", tmp_path_factory.mktemp("switch"), checkpoint)


def call(http: httpx.Client, key: str, method: str, path: str, **kw) -> httpx.Response:
    return http.request(method, path, headers={"Authorization": f"Bearer {key}"}, **kw)


def turn(http: httpx.Client, key: str, sid: str, content: str) -> dict:
    r = call(http, key, "POST", f"/v1/sessions/{sid}/messages", json={"content": content})
    assert r.status_code == 200, r.text
    return r.json()


def banks(http: httpx.Client, tenant_key: str) -> list[dict]:
    """This test's user's slot banks, from the admin stats."""
    stats = call(http, ADMIN_KEY, "GET", "/admin/stats").json()["data"]
    return [b for b in stats["slot_banks"] if b["namespace"] == f"user:{USER}"]


def memories(http: httpx.Client, key: str) -> dict[str, dict]:
    r = call(http, key, "GET", f"/v1/users/{USER}/memories", params={"limit": 100})
    assert r.status_code == 200, r.text
    return {m["id"]: m for m in r.json()["memories"]}


def slot_ids(http: httpx.Client) -> set[str]:
    r = call(http, ADMIN_KEY, "GET", "/admin/memory/slots", params={"user_id": USER})
    return {s["id"] for s in r.json()["data"]}


def chat_on_a(http: httpx.Client, key: str) -> tuple[str, dict]:
    """Two turns in a session with a system prompt, and one explicit memory."""
    body = {"user_id": USER, "system_prompt": "You are a kind assistant."}
    sid = call(http, key, "POST", "/v1/sessions", json=body).json()["id"]
    for text in ("Hello there, how are you today?", "My name is Ada."):
        assert turn(http, key, sid, text)["usage"]["state_rebuilt"] is False
    body = {"text": "I like tea and long walks.", "force": True, "collection": ["likes"]}
    body["key"] = "pastimes"
    r = call(http, key, "POST", f"/v1/users/{USER}/memories", json=body)
    assert r.status_code == 200 and r.json()["status"] == "stored", r.text
    return sid, r.json()["memory"]


def test_switch_rebuilds_the_session_and_reencodes_memories(
    pg_backend: Backend, tmp_path: Path
) -> None:
    key = pg_backend.new_tenant("switch")
    env_a = pg_backend.env
    with Server(env_a, tmp_path / "a") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        print_a = http.get("/readyz").json()["checks"]["model"]["fingerprint"]
        sid, written = chat_on_a(http, key)
        before = memories(http, key)
        old_slots = slot_ids(http)
        assert {b["fingerprint"] for b in banks(http, key)} == {print_a}
    assert written["id"] in before and len(before) == 3  # two chat turns + the explicit one

    ckpt_b = make_tiny_checkpoint(tmp_path / "ckpt-b", seed=1, memory_d=8)
    env_b = {**env_a, "MEMSVC_MODEL_DIR": str(ckpt_b)}
    assert memsvc_cli(env_b, "reindex", "--dry-run")["stale_namespaces"] >= 1

    with Server(env_b, tmp_path / "b") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        print_b = http.get("/readyz").json()["checks"]["model"]["fingerprint"]
        assert print_b != print_a
        # memories: re-encoded at start, same ids, text, collection/key and provenance
        after = memories(http, key)
        assert set(after) == set(before)
        for mid, m in after.items():
            old = before[mid]
            kept = ("text", "collection", "key", "session_id", "message_id", "span")
            assert {f: m[f] for f in kept} == {f: old[f] for f in kept}
            assert m["slots"] > 0
        assert {(b["fingerprint"], b["d_key"]) for b in banks(http, key)} == {(print_b, 8)}
        new_slots = slot_ids(http)
        assert new_slots and not (new_slots & old_slots)
        events = call(http, key, "GET", f"/v1/memories/{written['id']}").json()["history"]
        assert any(e["op"] == "evicted" and "reindex" in (e["cause"] or "") for e in events)
        # the session: rebuilt once from its messages, then resumed from the saved state
        third = turn(http, key, sid, "Tell me more.")["usage"]
        assert third["state_rebuilt"] is True and third["cached_tokens"] == 0
        assert third["rebuilt_tokens"] > 0
        fourth = turn(http, key, sid, "And then?")["usage"]
        assert fourth["state_rebuilt"] is False and fourth["rebuilt_tokens"] == 0
        assert fourth["cached_tokens"] > third["rebuilt_tokens"]
        msgs = call(http, key, "GET", f"/v1/sessions/{sid}/messages").json()["data"]
        users = [m["content"] for m in msgs if m["role"] == "user"]
        assert users == ["Hello there, how are you today?", "My name is Ada.", "Tell me more."] + [
            "And then?"
        ]
        assert len(msgs) == 8
        # chat reads the re-encoded slots
        reads = sum(m["reads"] for m in memories(http, key).values())
        assert reads > 0


def test_a_model_without_memory_keeps_memories_stored(pg_backend: Backend, tmp_path: Path) -> None:
    key = pg_backend.new_tenant("switch-off")
    env_a = pg_backend.env
    with Server(env_a, tmp_path / "a") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        print_a = http.get("/readyz").json()["checks"]["model"]["fingerprint"]
        sid, _ = chat_on_a(http, key)
        before = memories(http, key)
        old_slots = slot_ids(http)
    plain = make_tiny_checkpoint(tmp_path / "ckpt-plain", seed=2, memory_layers=())
    env_c = {**env_a, "MEMSVC_MODEL_DIR": str(plain)}
    with Server(env_c, tmp_path / "c") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        # no Retention Layer: memories are read as text notes (memsvc.services.memory_notes)
        assert http.get("/readyz").json()["checks"]["memory"]["mode"] == "notes"
        assert memories(http, key).keys() == before.keys()
        assert slot_ids(http) == old_slots  # nothing re-encoded, nothing evicted
        assert {b["fingerprint"] for b in banks(http, key)} == {print_a}
        probe = call(http, key, "GET", f"/v1/sessions/{sid}/logits")  # read-only rebuild
        assert probe.status_code == 200, probe.text
        usage = turn(http, key, sid, "Still there?")["usage"]
        assert usage["state_rebuilt"] is True and usage["rebuilt_tokens"] > 0
    with Server(env_a, tmp_path / "a2") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        assert slot_ids(http) == old_slots  # back on A: its own slots, no reindex
        pairs = [
            {"role": "user", "content": "I like tea."},
            {"role": "assistant", "content": "Ok."},
        ]
        path = f"/v1/sessions/{sid}/transcript"
        r = call(http, key, "POST", path, json={"turns": pairs})  # the state was C's
        assert r.status_code == 200 and r.json()["state_rebuilt"] is True, r.text
        usage = turn(http, key, sid, "Back again.")["usage"]
        assert usage["state_rebuilt"] is False  # the import saved A's rebuilt state
        msgs = call(http, key, "GET", f"/v1/sessions/{sid}/messages").json()["data"]
        assert [m["content"] for m in msgs][-4:] == ["I like tea.", "Ok.", "Back again."] + [
            msgs[-1]["content"]
        ]
        assert len(msgs) == 10


def memsvc_cli(env: dict, *args: str) -> dict:
    """Run ``memsvc ARGS`` against the test database; its last stdout line as JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "memsvc.cli.main", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_reindex_command(pg_backend: Backend, tmp_path: Path) -> None:
    key = pg_backend.new_tenant("switch-cli")
    with (
        Server(pg_backend.env, tmp_path / "a") as srv,
        httpx.Client(base_url=srv.url, timeout=60) as http,
    ):
        chat_on_a(http, key)
    ckpt_b = make_tiny_checkpoint(tmp_path / "ckpt-b", seed=3)  # same dims, other weights
    report = memsvc_cli(pg_backend.env, "reindex", "--model-dir", str(ckpt_b))
    assert report["enabled"] is True and report["memories"] >= 3, report
    assert report["slots_written"] > 0 and report["slots_evicted"] > 0
    again = memsvc_cli(pg_backend.env, "reindex", "--model-dir", str(ckpt_b), "--dry-run")
    assert again["stale_namespaces"] == 0  # every bank is B's now
    back = memsvc_cli(pg_backend.env, "reindex", "--dry-run")  # the configured model: A
    assert back["stale_namespaces"] >= 1


def test_history_is_rendered_as_the_turn_path_feeds_it(checkpoint: Path) -> None:
    from types import SimpleNamespace as Msg

    from memsvc.services.rebuild import history_ids
    from retnet_core.tokenizer import ChatTokenizer

    tok = ChatTokenizer.load(checkpoint)
    stored = [Msg(role="user", content="Hi."), Msg(role="assistant", content="Hello!")]
    stored.append(Msg(role="tool", content="not replayed"))
    want = tok.render(
        [{"role": "system", "content": "Be kind."}]
        + [{"role": m.role, "content": m.content} for m in stored[:2]]
    ).ids
    assert history_ids(tok, "Be kind.", stored) == want
    assert history_ids(tok, None, []) == []
