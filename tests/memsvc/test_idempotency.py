"""Idempotency keys end to end: replays (plain and streamed), concurrent duplicates, and a
key reused for another message (409, nothing written).

The server runs the talkative checkpoint, so every reply has text and a replay that
lost it could not pass as ``"" == ""``.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import httpx
import pytest
from server_util import Server, sse_events
from service_testkit import Backend, Client
from talkative_model import make_talkative_checkpoint


@pytest.fixture
def api(talkative_api: Client) -> Client:
    return talkative_api


def new_session(api: Client) -> str:
    r = api("POST", "/v1/sessions", json={})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def stored(api: Client, sid: str) -> list[tuple[str, str]]:
    msgs = api("GET", f"/v1/sessions/{sid}/messages").json()["data"]
    return [(m["role"], m["content"]) for m in msgs]


def post(api: Client, sid: str, content: str, key: str, **kw) -> httpx.Response:
    body = {"content": content, "idempotency_key": key, "max_tokens": 6, **kw}
    return api("POST", f"/v1/sessions/{sid}/messages", json=body)


def test_same_key_other_content_is_409_and_writes_nothing(api: Client) -> None:
    sid = new_session(api)
    first = post(api, sid, "My name is Ada.", "k-1")
    assert first.status_code == 200 and first.json()["message"]["content"], first.text
    for stream in (False, True):
        r = post(api, sid, "My name is Bob.", "k-1", stream=stream)
        assert r.status_code == 409, r.text
        assert r.json()["error"]["code"] == "idempotency_mismatch"
    assert stored(api, sid) == [
        ("user", "My name is Ada."),
        ("assistant", first.json()["message"]["content"]),
    ]
    assert api("GET", f"/v1/sessions/{sid}").json()["version"] == 1
    # the same key and message is still a replay, and a new key a new turn
    again = post(api, sid, "My name is Ada.", "k-1")
    assert again.status_code == 200 and again.json()["replayed"] is True
    assert post(api, sid, "My name is Bob.", "k-2").json()["replayed"] is False
    assert len(stored(api, sid)) == 4


def test_streamed_replay_sends_the_stored_text(api: Client) -> None:
    sid = new_session(api)
    streamed = sse_events(post(api, sid, "Tell me", "s-1", stream=True).text)
    assert streamed[-1][0] == "done" and streamed[-1][1]["replayed"] is False
    text = streamed[-1][1]["message"]["content"]
    assert text and "".join(d["text"] for n, d in streamed if n == "delta") == text
    for stream in (True, False):  # replays, streamed and not, give the same committed turn
        r = post(api, sid, "Tell me", "s-1", stream=stream)
        assert r.status_code == 200, r.text
        if stream:
            events = sse_events(r.text)
            assert [n for n, _ in events] == ["delta", "done"]
            assert events[0][1]["text"] == text
            done = events[-1][1]
        else:
            done = r.json()
        assert done["replayed"] is True
        assert done["message"] == streamed[-1][1]["message"]
    assert stored(api, sid) == [("user", "Tell me"), ("assistant", text)]


def _at_once(n: int, send) -> list[httpx.Response]:
    """``send()`` from ``n`` threads released together."""
    barrier = threading.Barrier(n)

    def go(_: int) -> httpx.Response:
        barrier.wait()
        return send()

    with cf.ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


def _one_turn_answered(api: Client, sid: str, replies: list[dict]) -> None:
    """Every reply is the same committed turn, computed once, stored once."""
    assert len({r["message"]["id"] for r in replies}) == 1
    assert len({r["message"]["content"] for r in replies}) == 1
    assert sorted(r["replayed"] for r in replies) == [False] + [True] * (len(replies) - 1)
    assert stored(api, sid) == [
        ("user", "Same again"),
        ("assistant", replies[0]["message"]["content"]),
    ]
    assert api("GET", f"/v1/sessions/{sid}").json()["version"] == 1


def test_concurrent_duplicates_commit_one_turn(api: Client) -> None:
    """Without a lock wait a duplicate in flight is 409 ``session_busy``; the client's retry
    with the same key then gets the committed turn."""
    sid = new_session(api)

    def send_until_answered() -> httpx.Response:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            r = post(api, sid, "Same again", "dup-1")
            if r.status_code != 409:
                return r
            assert r.json()["error"]["code"] == "session_busy"
            time.sleep(0.02)
        raise AssertionError("the session stayed busy for 60 s")

    responses = _at_once(4, send_until_answered)
    assert [r.status_code for r in responses] == [200] * 4
    _one_turn_answered(api, sid, [r.json() for r in responses])


def test_concurrent_duplicates_waiting_for_the_lock_replay(backend: Backend, tmp_path) -> None:
    """With ``lock_wait_s``, duplicates queue on the lock and find the turn committed."""
    ckpt = make_talkative_checkpoint(tmp_path / "ckpt")
    env = {**backend.env, "MEMSVC_MODEL_DIR": str(ckpt), "MEMSVC_LOCK_WAIT_S": "60"}
    with Server(env, tmp_path / "srv") as srv, httpx.Client(base_url=srv.url, timeout=120) as h:
        api = Client(h, backend.new_tenant("dup"))
        sid = new_session(api)
        responses = _at_once(4, lambda: post(api, sid, "Same again", "dup-2"))
        assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
        _one_turn_answered(api, sid, [r.json() for r in responses])
