"""The per-user memory API end to end over HTTP (Postgres + Redis, and SQLite): write,
list, search, read, history, export, delete (slots and index too), erase a user,
tenant isolation and bad input."""

from __future__ import annotations

import json
import uuid

from service_testkit import Client


def write(api: Client, user: str, text: str, **kw) -> dict:
    r = api("POST", f"/v1/users/{user}/memories", json={"text": text, "force": True, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def turn(api: Client, sid: str, content: str) -> dict:
    r = api("POST", f"/v1/sessions/{sid}/messages", json={"content": content, "max_tokens": 2})
    assert r.status_code == 200, r.text
    return r.json()


def test_write_list_read_and_duplicates(api: Client) -> None:
    first = write(api, "alice", "My dog is called Rex.")
    assert first["status"] == "stored" and first["slots_written"] > 0
    mem = first["memory"]
    assert mem["text"] == "My dog is called Rex." and mem["scope"] == "user"
    assert mem["slots"] == first["slots_written"] and mem["user_id"] == "alice"
    again = write(api, "alice", "My dog is called Rex.")
    assert again["status"] == "merged" and again["memory"]["id"] == mem["id"]
    assert again["slots_written"] == 0 and "duplicate" in again["reason"]
    write(api, "alice", "I live by the sea in Brittany.")
    listed = api("GET", "/v1/users/alice/memories").json()["memories"]
    assert [m["text"] for m in listed] == [
        "I live by the sea in Brittany.",
        "My dog is called Rex.",
    ]  # newest first
    page = api("GET", "/v1/users/alice/memories", params={"limit": 1, "offset": 1}).json()
    assert [m["id"] for m in page["memories"]] == [mem["id"]]
    got = api("GET", f"/v1/memories/{mem['id']}").json()
    assert [e["op"] for e in got["history"]] == ["written", "merged"]
    hist = api("GET", "/v1/users/alice/memories/history").json()["events"]
    assert [e["op"] for e in hist] == ["written", "merged", "written"]
    assert api("GET", "/v1/users/bob/memories").json()["memories"] == []


def test_search_is_semantic(api: Client) -> None:
    write(api, "u1", "My dog is called Rex and loves the beach.")
    write(api, "u1", "The quarterly tax report is due in April.")
    write(api, "u1", "I prefer green tea to coffee in the morning.")
    r = api("GET", "/v1/users/u1/memories", params={"query": "What is my pet's name?"})
    hits = r.json()["memories"]
    assert hits[0]["text"].startswith("My dog") and hits[0]["score"] > hits[1]["score"]


def test_chat_memories_reference_the_message(api: Client, admin: Client) -> None:
    user = f"carol-{uuid.uuid4().hex[:8]}"  # admin lists slots of every tenant's users
    sid = api("POST", "/v1/sessions", json={"user_id": user}).json()["id"]
    turn(api, sid, "Remember that my sister lives in Lyon.")
    mems = api("GET", f"/v1/users/{user}/memories", params={"session_id": sid}).json()["memories"]
    (m,) = mems  # the tiny model writes everything (threshold 0); the text is referenced
    assert m["text"] == "Remember that my sister lives in Lyon."
    assert m["message_id"] is not None and m["session_id"] == sid
    slots = admin("GET", "/admin/memory/slots", params={"user_id": user}).json()["data"]
    assert len(slots) == m["slots"] > 0 and all(s["text"] in m["text"] for s in slots)


def test_delete_removes_slots_and_chat_no_longer_reads_it(api: Client, admin: Client) -> None:
    dave = f"dave-{uuid.uuid4().hex[:8]}"
    keep = write(api, dave, "I am allergic to peanuts.")["memory"]
    gone = write(api, dave, "My locker code is 4711.")["memory"]
    r = api("DELETE", f"/v1/memories/{gone['id']}")
    assert r.status_code == 200 and r.json()["slots_removed"] == gone["slots"]
    assert api("GET", f"/v1/memories/{gone['id']}").status_code == 404
    assert api("DELETE", f"/v1/memories/{gone['id']}").status_code == 404
    slots = admin("GET", "/admin/memory/slots", params={"user_id": dave}).json()["data"]
    assert len(slots) == keep["slots"]  # only the kept memory's slots are left
    sid = api("POST", "/v1/sessions", json={"user_id": dave}).json()["id"]
    turn(api, sid, "What is my locker code?")
    reads = api("GET", f"/v1/memories/{keep['id']}").json()
    assert reads["reads"] > 0  # chat reads the user's bank: only what is left in it
    read_events = [e for e in reads["history"] if e["op"] == "read"]
    assert len(read_events) == 1 and read_events[0]["cause"].endswith("slot read(s) in a turn")
    ids = [m["id"] for m in api("GET", f"/v1/users/{dave}/memories").json()["memories"]]
    assert gone["id"] not in ids
    hist = api("GET", f"/v1/users/{dave}/memories/history").json()["events"]
    assert {"deleted", "evicted"} <= {e["op"] for e in hist if e["memory_id"] == gone["id"]}
    # the turn's reads are in the user's change log, for the kept memory only
    assert {e["memory_id"] for e in hist if e["op"] == "read"} == {keep["id"]}
    turn(api, sid, "And my allergy?")  # a second turn: a second read event
    again = api("GET", f"/v1/memories/{keep['id']}").json()
    assert [e["op"] for e in again["history"]].count("read") == 2
    assert again["reads"] > reads["reads"]


def test_export_and_erase_user(api: Client) -> None:
    m = write(api, "erin", "Erin's birthday is on May 3rd.")["memory"]
    sid = api("POST", "/v1/sessions", json={"user_id": "erin"}).json()["id"]
    turn(api, sid, "Hello")
    r = api("GET", "/v1/users/erin/memories/export")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in r.text.splitlines()]
    kinds = {row["type"] for row in rows}
    assert {"memory", "event", "message"} <= kinds
    assert any(row["type"] == "memory" and row["id"] == m["id"] for row in rows)
    r = api("DELETE", "/v1/users/erin")
    assert r.status_code == 200, r.text
    counts = r.json()
    assert counts["sessions"] == 1 and counts["messages"] == 2
    assert counts["memories"] >= 1 and counts["slots"] >= m["slots"]
    assert api("GET", f"/v1/sessions/{sid}").status_code == 404
    assert api("GET", f"/v1/memories/{m['id']}").status_code == 404
    assert api("GET", "/v1/users/erin/memories").json()["memories"] == []
    assert api("GET", "/v1/users/erin/memories/history").json()["events"] == []
    assert api("DELETE", "/v1/users/erin").status_code == 404


def test_other_tenants_get_404(api: Client, http, backend) -> None:
    other = Client(http, backend.new_tenant())
    m = write(api, "frank", "Frank drives a red car.")["memory"]
    assert other("GET", f"/v1/memories/{m['id']}").status_code == 404
    assert other("DELETE", f"/v1/memories/{m['id']}").status_code == 404
    assert other("GET", "/v1/users/frank/memories").json()["memories"] == []
    assert other("GET", "/v1/users/frank/memories/history").json()["events"] == []
    assert other("DELETE", "/v1/users/frank").status_code == 404
    assert api("GET", f"/v1/memories/{m['id']}").status_code == 200  # untouched


def test_bad_input_is_422(api: Client) -> None:
    base = "/v1/users/gina/memories"
    for body in (
        {},
        {"text": ""},
        {"text": "x" * 16_001},
        {"text": "ok", "extra": 1},
        {"text": "a\u0000b"},
        {"text": "ok", "collection": [""]},
        {"text": 5},
    ):
        assert api("POST", base, json=body).status_code == 422, body
    assert api("POST", base, json={"text": "ok", "key": "k"}).status_code == 422  # no collection
    for params in ({"limit": 0}, {"limit": 201}, {"offset": -1}, {"since": "not a date"}):
        assert api("GET", base, params=params).status_code == 422, params
    assert api("GET", "/v1/users/bad%20user/memories").status_code == 422
    assert api("GET", f"/v1/memories/{'x' * 65}").status_code == 422
    assert api("GET", "/v1/memories/unknown").status_code == 404


def test_keys_are_unique_within_user_and_collection(api: Client) -> None:
    a = write(api, "hal", "Prefers dark mode.", collection=["prefs"], key="theme")
    assert a["status"] == "stored" and a["memory"]["key"] == "theme"
    assert a["memory"]["collection"] == ["prefs"]
    r = api(
        "POST",
        "/v1/users/hal/memories",
        json={
            "text": "Prefers light mode.",
            "collection": ["prefs"],
            "key": "theme",
            "force": True,
        },
    )
    assert r.status_code == 409
    assert len(api("GET", "/v1/users/hal/memories").json()["memories"]) == 1


def test_transcript_import_advances_state_and_writes_memories(api: Client) -> None:
    sid = api("POST", "/v1/sessions", json={"user_id": "ivy"}).json()["id"]
    turns = [
        {"role": "user", "content": "My cat is called Momo."},
        {"role": "assistant", "content": "Nice name."},
        {"role": "user", "content": "I work as a nurse."},
        {"role": "assistant", "content": "Noted."},
    ]
    stamps = {0: "2023-05-20T02:21:00", 1: "2023-05-20T04:21:00+02:00"}  # both 02:21 UTC
    body = {
        "turns": [{**t, "timestamp": stamps[i]} if i in stamps else t for i, t in enumerate(turns)]
    }
    r = api("POST", f"/v1/sessions/{sid}/transcript", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["turns_imported"] == 2 and out["version"] == 2 and out["token_count"] > 0
    assert out["memory_writes"] > 0
    msgs = api("GET", f"/v1/sessions/{sid}/messages").json()["data"]
    assert [(m["role"], m["content"]) for m in msgs] == [(t["role"], t["content"]) for t in turns]
    # a turn's timestamp is its message's time; turns without one are stamped now
    assert {m["created_at"][:19] for m in msgs[:2]} == {"2023-05-20T02:21:00"}
    assert all(m["created_at"] > "2024" for m in msgs[2:])
    mems = api("GET", "/v1/users/ivy/memories").json()["memories"]
    assert [m["text"] for m in mems] == ["I work as a nurse.", "My cat is called Momo."]
    nxt = api("POST", f"/v1/sessions/{sid}/messages", json={"content": "Hi", "max_tokens": 2})
    assert nxt.json()["usage"]["cached_tokens"] == out["token_count"]  # resumed, not replayed
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    assert api("POST", f"/v1/sessions/{sid}/transcript", json={"turns": bad}).status_code == 422
    path = f"/v1/sessions/{sid}/transcript"
    for stamp in ("yesterday", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:00-05:00"):
        dated = [{**t, "timestamp": stamp} for t in turns]
        assert api("POST", path, json={"turns": dated}).status_code == 422
    for stamp in ("0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"):  # the extremes are stored
        r = api("POST", path, json={"turns": [{**t, "timestamp": stamp} for t in turns[:2]]})
        assert r.status_code == 200, r.text
        last = api("GET", f"/v1/sessions/{sid}/messages").json()["data"][-1]
        assert last["created_at"][:19] == stamp[:19]
    other = "0" * 32
    assert api("POST", f"/v1/sessions/{other}/transcript", json={"turns": turns}).status_code == 404
