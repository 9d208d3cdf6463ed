"""Bad input on every endpoint: a clear 4xx JSON error, never a 5xx, nothing lost."""

from __future__ import annotations

import pytest
from service_testkit import Client
from test_chat import new_session, turn

BIG = "x" * 2001  # over MEMSVC_MAX_MESSAGE_CHARS=2000


@pytest.fixture
def sid(api: Client) -> str:
    s = new_session(api)
    turn(api, s, "first message")
    return s


def cases(sid: str) -> list[tuple[str, str, dict, int, str]]:
    """(method, path, request kwargs, status, error code)."""
    msgs = f"/v1/sessions/{sid}/messages"
    fb = f"/v1/sessions/{sid}/feedback"
    bad_json = {"content": b'{"content": "hi"', "headers": {"content-type": "application/json"}}
    return [
        ("POST", "/v1/sessions", bad_json, 400, "malformed_json"),
        ("POST", "/v1/sessions", {"json": {"colour": "red"}}, 422, "invalid_request"),
        ("POST", "/v1/sessions", {"json": {"memory_scope": "galaxy"}}, 422, "invalid_request"),
        ("POST", "/v1/sessions", {"json": {"user_id": ""}}, 422, "invalid_request"),
        ("POST", "/v1/sessions", {"json": [1, 2]}, 422, "invalid_request"),
        ("GET", "/v1/sessions", {"params": {"limit": 0}}, 422, "invalid_request"),
        ("GET", "/v1/sessions/no-such-session", {}, 404, "not_found"),
        ("DELETE", "/v1/sessions/no-such-session", {}, 404, "not_found"),
        ("GET", "/v1/sessions/no-such-session/messages", {}, 404, "not_found"),
        ("GET", f"/v1/sessions/{sid}/logits", {"params": {"top": 1000}}, 422, "invalid_request"),
        ("POST", msgs, bad_json, 400, "malformed_json"),
        (
            "POST",
            msgs,
            {"content": b"", "headers": {"content-type": "application/json"}},
            422,
            "invalid_request",
        ),
        ("POST", msgs, {"json": {}}, 422, "invalid_request"),
        ("POST", msgs, {"json": {"content": ""}}, 422, "invalid_request"),
        ("POST", msgs, {"json": {"content": 5}}, 422, "invalid_request"),
        ("POST", msgs, {"json": {"content": "hi", "tempreature": 1}}, 422, "invalid_request"),
        ("POST", msgs, {"json": {"content": "hi", "temperature": -1}}, 422, "invalid_request"),
        ("POST", msgs, {"json": {"content": "hi", "top_p": 0}}, 422, "invalid_request"),
        ("POST", msgs, {"json": {"content": "hi", "top_p": 1.5}}, 422, "invalid_request"),
        ("POST", msgs, {"json": {"content": "hi", "max_tokens": 0}}, 422, "invalid_request"),
        ("POST", msgs, {"json": {"content": "hi", "stop": [""]}}, 422, "invalid_request"),
        ("POST", msgs, {"json": {"content": "hi", "seed": -3}}, 422, "invalid_request"),
        ("POST", msgs, {"json": {"content": "hi", "max_tokens": 33}}, 413, "too_large"),
        ("POST", msgs, {"json": {"content": BIG}}, 413, "too_large"),
        ("POST", msgs, {"json": {"content": "hi", "stop": ["a"] * 9}}, 413, "too_large"),
        (
            "POST",
            msgs,
            {
                "content": b"{" + b" " * 70000 + b"}",
                "headers": {"content-type": "application/json"},
            },
            413,
            "too_large",
        ),
        (
            "POST",
            "/v1/sessions/no-such-session/messages",
            {"json": {"content": "hi"}},
            404,
            "not_found",
        ),
        ("POST", fb, {"json": {"kind": "love"}}, 422, "invalid_request"),
        ("POST", fb, {"json": {"kind": "remember"}}, 422, "invalid_request"),
        ("POST", fb, {"json": {"kind": "rating", "rating": 1}}, 422, "invalid_request"),
        (
            "POST",
            fb,
            {"json": {"kind": "rating", "message_id": "1", "rating": 5}},
            422,
            "invalid_request",
        ),
        ("POST", fb, {"json": {"kind": "forget", "message_id": "999999"}}, 404, "not_found"),
        ("POST", fb, {"json": {"kind": "forget", "message_id": "not-a-number"}}, 404, "not_found"),
        ("POST", "/v1/documents", {"json": {"text": ""}}, 422, "invalid_request"),
        (
            "POST",
            "/v1/documents",
            {"json": {"text": "a b c.", "format": "pdf"}},
            422,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/documents",
            {"json": {"text": "a.", "scope": "user"}},
            422,
            "invalid_request",
        ),
        ("POST", "/v1/documents", {"json": {"text": "   \n\n  "}}, 422, "invalid_request"),
        ("POST", "/v1/documents", {"json": {"text": "word " * 4001}}, 413, "too_large"),
        ("POST", "/v1/documents", bad_json, 400, "malformed_json"),
        ("DELETE", "/v1/documents/no-such-doc", {}, 404, "not_found"),
        ("GET", "/v1/documents", {"params": {"limit": -1}}, 422, "invalid_request"),
        ("POST", "/v1/search", {"json": {"query": ""}}, 422, "invalid_request"),
        ("POST", "/v1/search", {"json": {"query": "x", "top_k": 0}}, 422, "invalid_request"),
        ("POST", "/v1/search", {"json": {"query": "x", "threshold": 2}}, 422, "invalid_request"),
        ("POST", "/v1/search", {"json": {"query": BIG}}, 413, "too_large"),
        ("GET", "/v1/nothing-here", {}, 404, "not_found"),
        ("POST", msgs, {"json": {"content": "nul \u0000 byte"}}, 422, "invalid_request"),
        ("POST", "/v1/sessions", {"json": {"user_id": "a\u0000"}}, 422, "invalid_request"),
        ("POST", "/v1/sessions", {"json": {"metadata": {"k": ["\u0000"]}}}, 422, "invalid_request"),
        ("POST", "/v1/documents", {"json": {"text": "a\u0000b."}}, 422, "invalid_request"),
        ("GET", "/v1/sessions/a%00b", {}, 400, "bad_request"),
        ("GET", "/v1/sessions", {"params": {"user_id": "a\u0000"}}, 400, "bad_request"),
        (
            "POST",
            msgs,
            {"json": {"content": "hi", "idempotency_key": "k" * 191}},
            422,
            "invalid_request",
        ),
        ("PUT", "/v1/sessions", {}, 405, "method_not_allowed"),
    ]


def test_bad_input_gets_a_clear_4xx_and_loses_nothing(api: Client, sid: str) -> None:
    before = api("GET", f"/v1/sessions/{sid}/messages").json()["data"]
    for method, path, kwargs, status, code in cases(sid):
        r = api(method, path, **kwargs)
        assert r.status_code == status, (method, path, kwargs.get("json"), r.status_code, r.text)
        err = r.json()["error"]
        assert err["code"] == code and err["status"] == status and err["message"]
    assert api("GET", f"/v1/sessions/{sid}/messages").json()["data"] == before
    assert api("GET", f"/v1/sessions/{sid}").json()["version"] == 1
    turn(api, sid, "still works")  # the session is usable afterwards


def test_missing_or_bad_credentials_are_401(http, sid: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}):
        r = http.get("/v1/sessions", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = http.post(f"/v1/sessions/{sid}/messages", json={"content": "hi"}, headers=headers)
        assert r.status_code == 401


def test_admin_bad_input(admin: Client) -> None:
    assert admin("GET", "/admin/memory/slots/12345678").status_code == 404
    assert admin("GET", "/admin/memory/slots/abc").status_code == 404
    assert admin("DELETE", "/admin/memory/slots/abc").status_code == 404
    assert admin("GET", "/admin/sessions/nope").status_code == 404
    assert admin("GET", "/admin/memory/slots", params={"max_gate": 3}).status_code == 422
    r = admin("POST", "/admin/memory/evict", json={})
    assert r.status_code == 422 and "filter" in r.json()["error"]["message"]
    assert admin("POST", "/admin/memory/evict", json={"sesion_id": "x"}).status_code == 422
    assert admin("POST", "/admin/memory/evict", json={"max_reads": -1}).status_code == 422


HUGE = 6499868732214543908864  # > 2**64: no SQL BIGINT or torch int64 holds it


def test_out_of_range_numbers_are_422_not_500(admin: Client, api: Client, sid: str) -> None:
    slots = "/admin/memory/slots"
    for params in (
        {"min_reads": HUGE},
        {"max_reads": HUGE},
        {"layer": HUGE},
        {"min_reads": -HUGE},
        {"older_than_s": 1e300},
        {"older_than_s": "inf"},
        {"min_gate": "nan"},
    ):
        r = admin("GET", slots, params=params)
        assert r.status_code == 422, (params, r.status_code, r.text)
    for body in ({"max_reads": HUGE}, {"layer": HUGE}, {"older_than_s": 1e300}):
        r = admin("POST", "/admin/memory/evict", json=body)
        assert r.status_code == 422, (body, r.status_code, r.text)
    assert admin("GET", slots, params={"min_reads": 2**63 - 1}).status_code == 200
    msgs = f"/v1/sessions/{sid}/messages"
    for extra in ({"max_tokens": HUGE}, {"seed": HUGE}, {"top_k": HUGE}):
        r = api("POST", msgs, json={"content": "hi", **extra})
        assert r.status_code == 422, (extra, r.status_code, r.text)
    chat = {"model": "memsvc", "messages": [{"role": "user", "content": "hi"}]}
    for extra in ({"max_tokens": HUGE}, {"max_completion_tokens": HUGE}, {"top_logprobs": HUGE}):
        r = api("POST", "/v1/chat/completions", json={**chat, **extra})
        assert r.status_code == 422, (extra, r.status_code, r.text)
