"""Server-Sent Events of a turn on a model that talks: the deltas add up exactly to the
stored reply (also when a stop sequence cuts it), and a turn that fails after deltas
were sent ends with an ``error`` event and stores nothing.
"""

from __future__ import annotations

import json

import pytest
from server_util import sse_events
from service_testkit import Backend, Client
from sqlalchemy import create_engine, text
from talkative_model import REPLY_TOKENS


def new_session(api: Client) -> str:
    r = api("POST", "/v1/sessions", json={})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def stream_turn(api: Client, sid: str, content: str, **kw) -> list[tuple[str, dict]]:
    body = {"content": content, "stream": True, "max_tokens": REPLY_TOKENS + 6, **kw}
    r = api("POST", f"/v1/sessions/{sid}/messages", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    return sse_events(r.text)


def deltas(events: list[tuple[str, dict]]) -> list[str]:
    return [d["text"] for name, d in events if name == "delta"]


def stored_replies(api: Client, sid: str) -> list[str]:
    msgs = api("GET", f"/v1/sessions/{sid}/messages").json()["data"]
    return [m["content"] for m in msgs if m["role"] == "assistant"]


def test_deltas_add_up_to_the_stored_reply(talkative_api: Client) -> None:
    api = talkative_api
    sid = new_session(api)
    events = stream_turn(api, sid, "Tell me")
    assert [n for n, _ in events][-1] == "done"
    done = events[-1][1]
    assert done["finish_reason"] == "stop" and done["usage"]["completion_tokens"] == REPLY_TOKENS
    pieces = deltas(events)
    assert len(pieces) >= 2 and all(pieces)  # really streamed, piece by piece
    reply = done["message"]["content"]
    assert reply and "".join(pieces) == reply
    assert stored_replies(api, sid) == [reply]

    # a stop sequence inside the reply: text held back for it is never sent
    cut = reply[len(reply) // 2 :][:3]
    events = stream_turn(api, new_session(api), "Tell me", stop=[cut])
    done = events[-1][1]
    assert done["finish_reason"] == "stop_sequence"
    assert done["message"]["content"] == reply[: reply.index(cut)]
    assert "".join(deltas(events)) == done["message"]["content"]


@pytest.mark.parametrize("backend", ["postgres"], indirect=True, scope="session")
def test_a_turn_that_fails_after_its_deltas_sends_error_and_stores_nothing(
    talkative_api: Client, backend: Backend
) -> None:
    """A real failure between decode and commit: while the turn streams, another writer
    holds the session row and then moves its version; the turn's compare-and-set loses."""
    api = talkative_api
    sid = new_session(api)
    body = {"content": "Tell me", "stream": True, "max_tokens": REPLY_TOKENS + 6}
    engine = create_engine(backend.database_url)
    try:
        with engine.connect() as other:
            other.execute(text("select version from sessions where id = :s for update"), {"s": sid})
            with api.http.stream(
                "POST",
                f"/v1/sessions/{sid}/messages",
                json=body,
                headers={"Authorization": f"Bearer {api.key}"},
            ) as r:
                lines = r.iter_lines()
                first = next(ln for ln in lines if ln.startswith("data: "))
                assert json.loads(first[len("data: ") :])["text"]  # a delta is out
                other.execute(
                    text("update sessions set version = version + 1 where id = :s"), {"s": sid}
                )
                other.commit()  # the turn's commit now finds version 1, not 0
                rest = "\n".join(lines)
    finally:
        engine.dispose()
    events = sse_events("event: delta\n" + first + "\n\n" + rest)
    names = [n for n, _ in events]
    assert names[-1] == "error" and "done" not in names
    assert set(names[:-1]) == {"delta"}
    assert events[-1][1]["code"] == "conflict"
    assert stored_replies(api, sid) == []
    # the failed turn released the session: the next one commits on the moved version
    events = stream_turn(api, sid, "Again")
    assert events[-1][0] == "done" and stored_replies(api, sid) == [
        events[-1][1]["message"]["content"]
    ]
    assert api("GET", f"/v1/sessions/{sid}").json()["version"] == 2
