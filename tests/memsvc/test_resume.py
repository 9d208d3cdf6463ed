"""A conversation resumes in a new server process with bit-identical next-token logits."""

from __future__ import annotations

import httpx
import redis
from server_util import Server
from service_testkit import REDIS_URL, Backend


def _chat(http: httpx.Client, key: str, sid: str, content: str) -> dict:
    r = http.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": content, "max_tokens": 6},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_resume_in_a_new_process_gives_identical_logits(
    backend: Backend, server: Server, tmp_path
) -> None:
    """History is built on the shared server; a second process that never saw the session
    resumes it from Redis / Postgres / SQLite alone (the same happens after a restart)."""
    key = backend.new_tenant("resume")
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server.url, timeout=120) as h:
        sids = []
        for _ in range(2):  # two sessions with the same history (greedy, no memory, no RAG)
            r = h.post("/v1/sessions", json={"memory_scope": "none"}, headers=auth)
            sids.append(r.json()["id"])
        for sid in sids:
            _chat(h, key, sid, "Hello there")
            _chat(h, key, sid, "How are you today?")
        before = h.get(f"/v1/sessions/{sids[0]}/logits", headers=auth).json()
        twin = h.get(f"/v1/sessions/{sids[1]}/logits", headers=auth).json()
        assert before["logits_sha256"] == twin["logits_sha256"]
        reply_in_a = _chat(h, key, sids[1], "Tell me more")  # advances only the twin
        tokens_before = h.get(f"/v1/sessions/{sids[0]}", headers=auth).json()["token_count"]

    with Server(backend.env, tmp_path / "b") as b, httpx.Client(base_url=b.url, timeout=120) as h:
        after = h.get(f"/v1/sessions/{sids[0]}/logits", headers=auth).json()
        assert after["logits_sha256"] == before["logits_sha256"]
        assert after["top"] == before["top"] and after["version"] == before["version"]
        if backend.redis_prefix:  # drop the hot copy: Postgres alone must give the same state
            client = redis.Redis.from_url(REDIS_URL)
            for k in client.scan_iter(match=f"{backend.redis_prefix}*{sids[0]}*"):
                client.delete(k)
            client.close()
            cold = h.get(f"/v1/sessions/{sids[0]}/logits", headers=auth).json()
            assert cold["logits_sha256"] == before["logits_sha256"]
        reply_in_b = _chat(h, key, sids[0], "Tell me more")
        # same state, same greedy continuation, token for token, across processes
        assert reply_in_b["message"]["content"] == reply_in_a["message"]["content"]
        assert reply_in_b["usage"]["cached_tokens"] == tokens_before
        assert reply_in_b["usage"]["state_source"] in ("local", "redis", "lru", "sql")
