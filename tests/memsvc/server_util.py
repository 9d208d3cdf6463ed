"""Start and stop a real memsvc server (uvicorn in a subprocess) on a free loopback port."""

from __future__ import annotations

import json

import httpx

from memsvc.bench._live import LiveServer as Server
from memsvc.bench._live import free_port

__all__ = ["ADMIN_KEY", "Server", "ask_in_new_session", "free_port", "sse_events"]

ADMIN_KEY = "test-admin-key"


def sse_events(body: str) -> list[tuple[str, dict]]:
    """Parse an SSE body into (event, data) pairs."""
    events = []
    for frame in body.split("\n\n"):
        name, data = "message", None
        for line in frame.splitlines():
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
        if data is not None:
            events.append((name, data))
    return events


def ask_in_new_session(http: httpx.Client, key: str, user: str, text: str) -> dict:
    """``text`` as the first message of a new session of ``user``: one greedy token (the
    turn's memory read and write are what such tests look at)."""
    headers = {"Authorization": f"Bearer {key}"}
    r = http.post("/v1/sessions", json={"user_id": user}, headers=headers)
    assert r.status_code == 201, r.text
    body = {"content": text, "max_tokens": 1, "temperature": 0.0}
    r = http.post(f"/v1/sessions/{r.json()['id']}/messages", json=body, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()
