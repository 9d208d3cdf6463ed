"""Chat end to end: turns, streaming, idempotency, serialised concurrent turns, delete."""

from __future__ import annotations

import concurrent.futures as cf
import time

import pytest
import redis
from server_util import sse_events
from service_testkit import REDIS_URL, Backend, Client
from sqlalchemy import create_engine, text


def new_session(api: Client, **body) -> str:
    r = api("POST", "/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def turn(api: Client, sid: str, content: str, **kw) -> dict:
    r = api("POST", f"/v1/sessions/{sid}/messages", json={"content": content, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def test_chat_turns_report_usage_and_persist_messages(api: Client) -> None:
    sid = new_session(api, user_id="alice", system_prompt="You are terse.")
    first = turn(api, sid, "Hello there", max_tokens=6)
    assert first["finish_reason"] in ("stop", "length")
    assert first["usage"]["completion_tokens"] <= 6
    assert first["usage"]["cached_tokens"] == 0 and first["usage"]["state_source"] == "new"
    assert first["usage"]["memory_enabled"] is True
    after_first = api("GET", f"/v1/sessions/{sid}").json()
    assert after_first["version"] == 1 and after_first["message_count"] == 2
    assert after_first["token_count"] > first["usage"]["prompt_tokens"]

    second = turn(api, sid, "And again", max_tokens=4)
    # the whole history came from the persisted state, none of it was re-read
    assert second["usage"]["cached_tokens"] == after_first["token_count"]
    assert second["usage"]["state_source"] in ("local", "redis", "lru", "sql")
    msgs = api("GET", f"/v1/sessions/{sid}/messages").json()["data"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == "Hello there" and msgs[2]["content"] == "And again"
    assert msgs[1]["content"] == first["message"]["content"]
    listed = {s["id"]: s for s in api("GET", "/v1/sessions").json()["data"]}
    one = api("GET", f"/v1/sessions/{sid}").json()
    # lists report the same real token count as the single read (it used to be 0)
    assert listed[sid]["token_count"] == one["token_count"] > after_first["token_count"]


def test_stop_sequence_and_seeded_sampling(api: Client) -> None:
    sid_a, sid_b = new_session(api), new_session(api)
    body = {"content": "Hi", "temperature": 0.9, "top_p": 0.9, "top_k": 50, "seed": 7}
    a, b = turn(api, sid_a, **body), turn(api, sid_b, **body)
    assert a["message"]["content"] == b["message"]["content"]  # same seed, same state
    text_a = a["message"]["content"]
    if len(text_a) >= 2:
        sid_c = new_session(api)
        c = turn(api, sid_c, **body, stop=[text_a[1:3] or text_a[1]])
        assert c["finish_reason"] == "stop_sequence"
        assert c["message"]["content"] == text_a[: text_a.index(text_a[1:3] or text_a[1])]


def test_idempotency_key_replays_the_committed_turn(api: Client) -> None:
    sid = new_session(api)
    first = turn(api, sid, "Once only", idempotency_key="k-1")
    again = turn(api, sid, "Once only", idempotency_key="k-1")
    assert again["replayed"] is True
    assert again["message"]["id"] == first["message"]["id"]
    assert len(api("GET", f"/v1/sessions/{sid}/messages").json()["data"]) == 2


def test_concurrent_turns_are_serialised_and_nothing_is_lost(api: Client) -> None:
    sid = new_session(api)
    contents = [f"message number {i}" for i in range(5)]

    def post_until_accepted(content: str) -> tuple[int, int]:
        busy = 0
        deadline = time.monotonic() + 90  # a leaked lock fails here, not at the 600 s timeout
        while time.monotonic() < deadline:
            r = api("POST", f"/v1/sessions/{sid}/messages", json={"content": content})
            if r.status_code == 409:
                assert r.json()["error"]["code"] == "session_busy"
                busy += 1
                time.sleep(0.02)
                continue
            assert r.status_code == 200, r.text
            return busy, r.json()["usage"]["cached_tokens"]
        raise AssertionError(f"session still busy after {busy} tries: is its lock leaked?")

    with cf.ThreadPoolExecutor(len(contents)) as pool:
        results = list(pool.map(post_until_accepted, contents))
    assert sum(b for b, _ in results) > 0  # they really collided
    msgs = api("GET", f"/v1/sessions/{sid}/messages").json()["data"]
    assert [m["role"] for m in msgs] == ["user", "assistant"] * len(contents)
    assert sorted(m["content"] for m in msgs if m["role"] == "user") == sorted(contents)
    # each turn continued the state the previous one left: histories strictly grow
    cached = sorted(c for _, c in results)
    assert len(set(cached)) == len(contents) and cached[0] == 0
    assert api("GET", f"/v1/sessions/{sid}").json()["version"] == len(contents)


def test_with_lock_wait_concurrent_turns_queue_instead_of_409(backend: Backend, tmp_path) -> None:
    """``lock_wait_s > 0``: a turn on a busy session waits for the lock, none gets 409."""
    import httpx
    from server_util import Server

    env = {**backend.env, "MEMSVC_LOCK_WAIT_S": "60"}
    with Server(env, tmp_path) as srv, httpx.Client(base_url=srv.url, timeout=120) as http:
        api = Client(http, backend.new_tenant("wait"))
        sid = new_session(api)
        contents = [f"queued {i}" for i in range(4)]

        def post(content: str) -> httpx.Response:
            return api("POST", f"/v1/sessions/{sid}/messages", json={"content": content})

        with cf.ThreadPoolExecutor(len(contents)) as pool:
            responses = list(pool.map(post, contents))
        assert [r.status_code for r in responses] == [200] * len(contents)
        cached = sorted(r.json()["usage"]["cached_tokens"] for r in responses)
        assert len(set(cached)) == len(contents) and cached[0] == 0  # one after another
        assert api("GET", f"/v1/sessions/{sid}").json()["version"] == len(contents)


def test_delete_erases_messages_states_and_session_slots(
    api: Client, admin: Client, backend: Backend
) -> None:
    sid = new_session(api, memory_scope="session")
    turn(api, sid, "Remember that my locker code is 4417")
    slots = admin("GET", "/admin/memory/slots", params={"session_id": sid}).json()["data"]
    assert slots, "the turn should have written a session-scoped slot"
    assert api("DELETE", f"/v1/sessions/{sid}").status_code == 204

    for path in ("", "/messages", "/logits"):
        assert api("GET", f"/v1/sessions/{sid}{path}").status_code == 404
    assert api("DELETE", f"/v1/sessions/{sid}").status_code == 404
    assert admin("GET", f"/admin/sessions/{sid}").status_code == 404
    assert admin("GET", "/admin/memory/slots", params={"session_id": sid}).json()["data"] == []
    for slot in slots:
        assert admin("GET", f"/admin/memory/slots/{slot['id']}").status_code == 404
    engine = create_engine(backend.database_url)
    with engine.connect() as conn:
        for table in ("messages", "session_states", "sessions"):
            column = "id" if table == "sessions" else "session_id"
            n = conn.execute(text(f"select count(*) from {table} where {column} = :s"), {"s": sid})
            assert n.scalar() == 0, table
        n = conn.execute(
            text("select count(*) from memory_slots where session_id = :s"), {"s": sid}
        )
        assert n.scalar() == 0
    engine.dispose()
    if backend.redis_prefix:
        client = redis.Redis.from_url(REDIS_URL)
        assert list(client.scan_iter(match=f"{backend.redis_prefix}*{sid}*")) == []
        client.close()


def test_metrics_cover_latency_ttft_tokens_states_and_batches(api: Client, http) -> None:
    sid = new_session(api)
    turn(api, sid, "one")
    turn(api, sid, "two")
    text = http.get("/metrics").text
    for name in (
        "memsvc_request_latency_seconds_bucket",
        "memsvc_time_to_first_token_seconds_count",
        'memsvc_tokens_total{direction="in"}',
        'memsvc_tokens_total{direction="out"}',
        'memsvc_tokens_total{direction="cached"}',
        "memsvc_decode_batch_size_count",
        "memsvc_storage_state_reads_total",
        'memsvc_turns_total{outcome="ok"}',
    ):
        assert name in text, name
    ready = http.get("/readyz").json()
    assert ready["status"] == "ready" and ready["checks"]["model"]["ok"]
    assert ready["checks"]["database"]["ok"]
    assert ready["checks"]["memory"] == {"ok": True, "enabled": True, "mode": "slots"}


def _multi_session_steps(http) -> float:
    """Decode steps so far that advanced more than one session (from /metrics)."""
    total = one = 0.0
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("memsvc_decode_batch_size_count"):
            total = float(line.split()[-1])
        elif line.startswith('memsvc_decode_batch_size_bucket{le="1.0"}'):
            one = float(line.split()[-1])
    return total - one


def test_concurrent_sessions_share_decode_steps(api: Client, http) -> None:
    """Continuous batching: turns of different sessions join the same decode steps."""
    body = {"content": "Tell me a long story", "max_tokens": 32, "stream": True}
    for _attempt in range(3):
        before = _multi_session_steps(http)
        sids = [new_session(api, memory_scope="none") for _ in range(6)]
        with cf.ThreadPoolExecutor(len(sids)) as pool:
            replies = list(
                pool.map(lambda s: api("POST", f"/v1/sessions/{s}/messages", json=body), sids)
            )
        assert all(r.status_code == 200 and sse_events(r.text)[-1][0] == "done" for r in replies)
        if _multi_session_steps(http) > before:
            return
    raise AssertionError("six concurrent turns never shared a decode step")


def test_a_lost_compare_and_set_commits_no_messages(backend: Backend) -> None:
    """A turn's messages and its state are one transaction: a stale writer leaves neither."""
    from prometheus_client import CollectorRegistry

    from memsvc.api.errors import Conflict
    from memsvc.store import TurnCommit
    from memsvc.store_adapter import StorageStore
    from storage import migrate

    migrate.upgrade(backend.database_url)  # as the server does on start (idempotent)
    st = StorageStore(
        backend.database_url,
        backend.env.get("MEMSVC_REDIS_URL"),
        CollectorRegistry(),
        backend.redis_prefix or "memsvc:",
    )
    try:
        tenant, _ = st.create_tenant("cas")
        sid = st.create_session(tenant, None, None, "session", None).id

        def commit(key: str, version: int, blob: bytes) -> tuple:
            c = TurnCommit(tenant, sid, version, f"q {key}", f"a {key}", key, blob, "fp", 5, 1, 1)
            return st.commit_turn(c)

        user, reply = commit("k1", 0, b"one")
        with pytest.raises(Conflict):
            commit("k2", 0, b"stale")
        msgs = st.list_messages(tenant, sid, 100)
        assert [m.id for m in msgs] == [user.id, reply.id]
        assert st.find_turn(tenant, sid, "k2") is None
        loaded = st.load_state(tenant, sid)
        assert (loaded.data, loaded.version) == (b"one", 1)
        # storage says which tier answered: the stale writer dropped the hot copy, so SQL,
        # which refills the hot tier for the next load
        assert loaded.tier == "sql"
        hot = "local" if backend.redis_prefix else "lru"
        assert st.load_state(tenant, sid).tier == hot
        assert [m.id for m in st.find_turn(tenant, sid, "k1")] == [user.id, reply.id]
        assert st.get_session(tenant, sid).token_count == 5  # position, from metadata
        assert not st.has_passages(tenant)
    finally:
        st.close()
