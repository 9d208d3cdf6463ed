"""Start and stop a real memsvc server (uvicorn in a subprocess) on a free loopback port."""

from __future__ import annotations

import json

from memsvc.bench._live import LiveServer as Server
from memsvc.bench._live import free_port

__all__ = ["ADMIN_KEY", "Server", "free_port", "sse_events"]

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
