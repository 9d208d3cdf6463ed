"""Admin API: auth, slot listing/filters/detail, delete and evict (unreachable after).

Every test works as a brand-new tenant (the ``api`` fixture) with user names of its own:
the admin API filters across tenants, so a shared name would see other tests' data.
"""

from __future__ import annotations

import uuid

from service_testkit import Client
from test_chat import new_session, turn


def own(name: str) -> str:
    """A user name no other test (or earlier run on the same database) uses."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_admin_requires_the_admin_key(api: Client, http) -> None:
    for path in ("/admin/stats", "/admin/memory/slots", "/admin/sessions"):
        assert http.get(path).status_code == 401
        assert http.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert api("GET", path).status_code == 401  # a tenant key is not an admin key
    assert http.post("/admin/reindex").json()["error"]["code"] == "unauthorized"


def test_slots_carry_provenance_and_filter(api: Client, admin: Client) -> None:
    carol = own("carol")
    sid = new_session(api, user_id=carol)
    out = turn(api, sid, "My favourite colour is teal")
    assert out["usage"]["memory_writes"] >= 1
    slots = admin("GET", "/admin/memory/slots", params={"session_id": sid}).json()["data"]
    assert slots
    slot = admin("GET", f"/admin/memory/slots/{slots[0]['id']}").json()
    assert slot["text"] == "My favourite colour is teal"
    assert slot["session_id"] == sid and slot["user_id"] == carol and slot["scope"] == "user"
    assert slot["message_id"] == out["user_message"]["id"]
    assert slot["span"][0] < slot["span"][1] and 0.0 <= slot["gate"] <= 1.0
    by_user = admin("GET", "/admin/memory/slots", params={"user_id": carol}).json()["data"]
    assert slot["id"] in [s["id"] for s in by_user]
    assert admin("GET", "/admin/memory/slots", params={"min_gate": 1.0, "session_id": sid}).json()[
        "data"
    ] == [s for s in slots if s["gate"] >= 1.0]
    assert admin("GET", "/admin/memory/slots", params={"layer": 99}).json()["data"] == []
    # every filter is applied in SQL across tenants, tenant and age included
    tid = slot["tenant_id"]
    in_tenant = {"tenant_id": tid, "session_id": sid, "older_than_s": 0}
    assert admin("GET", "/admin/memory/slots", params=in_tenant).json()["data"] == slots
    old = {"session_id": sid, "older_than_s": 3600}
    assert admin("GET", "/admin/memory/slots", params=old).json()["data"] == []
    assert admin("GET", "/admin/memory/slots", params={"tenant_id": "nope"}).json()["data"] == []
    # a memory written in one session of carol's is read in her next session
    other = new_session(api, user_id=carol)
    turn(api, other, "What is my favourite colour?")
    listed = admin("GET", "/admin/memory/slots", params={"user_id": carol}).json()["data"]
    assert {s["session_id"] for s in listed} == {sid, other}


def session_ids(admin: Client, sid: str) -> set[str]:
    data = admin("GET", "/admin/memory/slots", params={"session_id": sid}).json()["data"]
    return {s["id"] for s in data}


def test_evict_and_delete_make_slots_unreachable(api: Client, admin: Client) -> None:
    sid = new_session(api, memory_scope="session")
    turn(api, sid, "The wifi password is hunter2")
    turn(api, sid, "The door code is 5150")
    slots = admin("GET", "/admin/memory/slots", params={"session_id": sid}).json()["data"]
    assert len(slots) == 2
    first, second = slots
    stats_before = admin("GET", "/admin/stats").json()["data"]

    assert admin("DELETE", f"/admin/memory/slots/{first['id']}").status_code == 204
    assert admin("GET", f"/admin/memory/slots/{first['id']}").status_code == 404
    assert admin("DELETE", f"/admin/memory/slots/{first['id']}").status_code == 404

    got = admin("POST", "/admin/memory/evict", json={"session_id": sid}).json()
    assert got == {"evicted": 1, "ids": [second["id"]]}
    assert admin("GET", "/admin/memory/slots", params={"session_id": sid}).json()["data"] == []
    assert admin("GET", "/admin/stats").json()["data"]["slots"] == stats_before["slots"] - 2
    # the index never hands an evicted slot back: forgetting by its text finds nothing
    r = api("POST", f"/v1/sessions/{sid}/feedback", json={"kind": "forget", "text": "hunter2"})
    assert r.status_code == 200 and r.json()["slots_removed"] == []
    # and neither a new turn's writes nor a rebuilt index resurrect them: ids are never
    # reused (SQLite included), so an evicted id stays 404 even after new slots are written
    gone = {first["id"], second["id"]}
    out = turn(api, sid, "Anything else?")
    assert out["usage"]["memory_writes"] >= 1
    new_ids = session_ids(admin, sid)
    assert new_ids and not gone & new_ids
    assert admin("POST", "/admin/reindex").status_code == 200
    assert session_ids(admin, sid) == new_ids
    for slot_id in gone:
        assert admin("GET", f"/admin/memory/slots/{slot_id}").status_code == 404


def test_feedback_remember_forget_and_rating(api: Client, admin: Client) -> None:
    dave = own("dave")
    sid = new_session(api, user_id=dave)
    out = turn(api, sid, "hello", use_memory=False)
    assert out["usage"]["memory_writes"] == 0
    r = api(
        "POST", f"/v1/sessions/{sid}/feedback", json={"kind": "remember", "text": "Dave likes jazz"}
    )
    written = r.json()["slots_written"]
    assert r.status_code == 200 and written
    assert admin("GET", f"/admin/memory/slots/{written[0]}").json()["gate"] == 1.0  # forced
    r = api("POST", f"/v1/sessions/{sid}/feedback", json={"kind": "forget", "text": "jazz"})
    assert sorted(r.json()["slots_removed"]) == sorted(written)
    reply = out["message"]["id"]
    r = api(
        "POST",
        f"/v1/sessions/{sid}/feedback",
        json={"kind": "rating", "message_id": reply, "rating": 1},
    )
    assert r.status_code == 200 and r.json()["kind"] == "rating"
    r = api(
        "POST",
        f"/v1/sessions/{sid}/feedback",
        json={"kind": "rating", "message_id": reply, "rating": -1},
    )
    assert r.status_code == 200


def test_admin_sessions_and_stats(api: Client, admin: Client) -> None:
    erin = own("erin")
    sid = new_session(api, user_id=erin)
    turn(api, sid, "hi")
    one = admin("GET", f"/admin/sessions/{sid}").json()
    assert one["id"] == sid and one["user_id"] == erin and one["message_count"] == 2
    listed = admin("GET", "/admin/sessions", params={"tenant_id": one["tenant_id"]}).json()["data"]
    assert [s["id"] for s in listed] == [sid]
    assert listed[0]["token_count"] == one["token_count"] > 0  # a real count, not 0
    stats = admin("GET", "/admin/stats").json()["data"]
    assert {"slots", "slot_banks", "passages", "state_loads", "snapshot_cache"} <= set(stats)


def test_session_lists_filter_by_user_before_the_limit(api: Client, admin: Client) -> None:
    frank, gina = own("frank"), own("gina")
    mine = new_session(api, user_id=frank)
    others = [new_session(api, user_id=gina) for _ in range(3)]
    got = api("GET", "/v1/sessions", params={"user_id": frank, "limit": 2}).json()["data"]
    assert [s["id"] for s in got] == [mine]
    tid = admin("GET", f"/admin/sessions/{mine}").json()["tenant_id"]
    by_admin = admin("GET", "/admin/sessions", params={"tenant_id": tid, "limit": 2}).json()
    assert [s["id"] for s in by_admin["data"]] == others[::-1][:2]  # newest first


def test_forget_said_in_chat_removes_the_memory(api: Client, admin: Client) -> None:
    """'Forget that.' removes the newest slot, 'Forget everything.' the rest; the
    requests themselves are never written, and later sessions of the user read none."""
    gina = own("gina")
    sid = new_session(api, user_id=gina)
    turn(api, sid, "My locker code is 4711.")
    turn(api, sid, "I live in Tarnwick.")
    by_user = {"user_id": gina}
    slots = admin("GET", "/admin/memory/slots", params=by_user).json()["data"]
    assert {s["text"] for s in slots} == {"My locker code is 4711.", "I live in Tarnwick."}

    out = turn(api, sid, "Forget that.")
    assert out["usage"]["memory_forgotten"] == 1 and out["usage"]["memory_writes"] == 0
    # the reply is the service's receipt (cut at the server's 32 tokens), not the model's
    receipt = 'Done, I have forgotten it. Removed from my memory: "I live in Tarnwick."'
    reply = out["message"]["content"]
    assert len(reply) > 8 and receipt.startswith(reply), reply
    left = admin("GET", "/admin/memory/slots", params=by_user).json()["data"]
    assert [s["text"] for s in left] == ["My locker code is 4711."]

    later = new_session(api, user_id=gina)  # the user's memory, not the session's
    out = turn(api, later, "Please forget everything about me!")
    assert out["usage"]["memory_forgotten"] == 1
    assert admin("GET", "/admin/memory/slots", params=by_user).json()["data"] == []
    # "don't forget" is no forget request: it is written like any message
    out = turn(api, later, "Don't forget my locker code is 4711.")
    assert out["usage"]["memory_forgotten"] == 0 and out["usage"]["memory_writes"] >= 1


def test_forget_in_chat_matches_the_memories_text(api: Client, admin: Client) -> None:
    """'Please forget my dog's name.' removes both tellings of that fact, matched on the
    memories' own text (the tiny test model's read is noise), and nothing else; the
    turn's usage names the removed memories and their history records the deletion."""
    hana = own("hana")
    sid = new_session(api, user_id=hana)
    told = {
        text: turn(api, sid, text)
        for text in (
            "My dog is called Rex.",
            "I live in Lyon.",
            "Actually my dog's name is Max now.",
            "My favourite colour is teal.",
        )
    }
    mems = {m["text"]: m["id"] for m in api("GET", f"/v1/users/{hana}/memories").json()["memories"]}
    assert set(mems) == set(told)
    out = turn(api, new_session(api, user_id=hana), "Please forget my dog's name.")
    dog = {mems["My dog is called Rex."], mems["Actually my dog's name is Max now."]}
    assert set(out["usage"]["forgotten_memories"]) == dog
    assert out["usage"]["memory_writes"] == 0  # the request itself is not a memory
    left = {m["text"] for m in api("GET", f"/v1/users/{hana}/memories").json()["memories"]}
    assert left == {"I live in Lyon.", "My favourite colour is teal."}
    slots = admin("GET", "/admin/memory/slots", params={"user_id": hana}).json()["data"]
    assert {s["text"] for s in slots} <= left and slots
    hist = api("GET", f"/v1/users/{hana}/memories/history").json()["events"]
    assert {e["memory_id"] for e in hist if e["op"] == "deleted"} == dog
    # a topic that names nothing held removes nothing
    out = turn(api, sid, "Please forget my grandmother's recipe for plum cake.")
    assert out["usage"]["forgotten_memories"] == [] and out["usage"]["memory_forgotten"] == 0
