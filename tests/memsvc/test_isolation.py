"""Tenant isolation on every endpoint: another tenant's ids are 404, never data."""

from __future__ import annotations

import pytest
from service_testkit import Backend, Client
from test_chat import new_session, turn
from test_rag import FACT_DOC, QUESTION


@pytest.fixture
def intruder(http, backend: Backend) -> Client:
    return Client(http, backend.new_tenant("intruder"))


def test_a_tenant_never_sees_another_tenants_data(api: Client, intruder: Client, admin) -> None:
    sid = new_session(api, user_id="isolde")
    out = turn(api, sid, "My secret is 7781")
    msg_id = out["message"]["id"]
    doc = api("POST", "/v1/documents", json={"text": FACT_DOC}).json()

    not_found = [
        ("GET", f"/v1/sessions/{sid}", None),
        ("GET", f"/v1/sessions/{sid}/messages", None),
        ("GET", f"/v1/sessions/{sid}/logits", None),
        ("POST", f"/v1/sessions/{sid}/messages", {"content": "hi"}),
        ("POST", f"/v1/sessions/{sid}/messages", {"content": "hi", "stream": True}),
        ("POST", f"/v1/sessions/{sid}/feedback", {"kind": "remember", "text": "x"}),
        ("DELETE", f"/v1/sessions/{sid}", None),
        ("DELETE", f"/v1/documents/{doc['id']}", None),
    ]
    for method, path, body in not_found:
        r = intruder(method, path, json=body)
        assert r.status_code == 404, (method, path, r.status_code)
        assert r.json()["error"]["code"] == "not_found"

    assert sid not in [s["id"] for s in intruder("GET", "/v1/sessions").json()["data"]]
    assert doc["id"] not in [d["id"] for d in intruder("GET", "/v1/documents").json()["data"]]
    hits = intruder("POST", "/v1/search", json={"query": QUESTION, "threshold": -1}).json()
    assert hits["data"] == []
    # the intruder's own session: no passages and no memories of the first tenant
    own = new_session(intruder, user_id="isolde")
    r = intruder(
        "POST",
        f"/v1/sessions/{own}/feedback",
        json={"kind": "rating", "message_id": msg_id, "rating": 1},
    )
    assert r.status_code == 404
    mine = turn(intruder, own, QUESTION)
    assert mine["passages"] == []
    slots = admin("GET", "/admin/memory/slots", params={"user_id": "isolde"}).json()["data"]
    owner = {x: admin("GET", f"/admin/sessions/{x}").json()["tenant_id"] for x in (sid, own)}
    ours = [s for s in slots if s["session_id"] in owner]
    # same user id in two tenants: two separate banks, each slot in its session's tenant
    assert {s["session_id"] for s in ours} == {sid, own}
    assert all(s["tenant_id"] == owner[s["session_id"]] for s in ours)
    assert owner[sid] != owner[own]

    # and nothing the intruder did changed the owner's session
    assert api("GET", f"/v1/sessions/{sid}").json()["version"] == 1
    assert len(api("GET", f"/v1/sessions/{sid}/messages").json()["data"]) == 2
    assert api("DELETE", f"/v1/documents/{doc['id']}").status_code == 204
