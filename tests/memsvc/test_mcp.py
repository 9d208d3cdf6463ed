"""The MCP server through the SDK's own client, over both transports, against a live
server (Postgres + Redis, and SQLite): Streamable HTTP at ``/mcp`` (tenant bearer key)
and ``memsvc mcp`` (stdio, a subprocess talking to the server over HTTP).

The tiny random model cannot say a fact back, so "recalled in a REST chat" is asserted
through the memory API: the MCP-written memory's slots are read by the REST chat turn
of a new session of the same user (its ``reads`` count rises from 0).
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import httpx2
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from server_util import Server
from service_testkit import Client

REPO = Path(__file__).resolve().parents[2]
TOOLS = {"remember", "recall", "list_memories", "forget", "chat"}


@asynccontextmanager
async def http_session(server: Server, key: str | None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=120) as http,
        streamable_http_client(server.url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def stdio_session(server: Server, key: str):
    env = {
        "MEMSVC_BASE_URL": server.url,
        "MEMSVC_API_KEY": key,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
    }
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "memsvc.cli.main", "mcp"], env=env, cwd=str(REPO)
    )
    with open(os.devnull, "w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **args: Any) -> dict[str, Any]:
    """A tool's JSON result; fails the test on a tool error."""
    r = await session.call_tool(tool, args)
    assert not r.is_error, r.content
    return json.loads(r.content[0].text)


async def error(session: ClientSession, tool: str, **args: Any) -> str:
    """A tool error's message; fails the test when the call succeeds."""
    r = await session.call_tool(tool, args)
    assert r.is_error, r.content
    return r.content[0].text


def run(fn, *args):
    return anyio.run(fn, *args)


def test_http_tools_end_to_end(server: Server, api: Client) -> None:
    async def scenario() -> None:
        async with http_session(server, api.key) as s:
            listed = {t.name: t for t in (await s.list_tools()).tools}
            assert set(listed) == TOOLS
            for tool in listed.values():
                assert len(tool.description) > 40 and "user_id" in tool.input_schema["required"]
            fact = await call(s, "remember", user_id="ann", text="My dog is called Rex.")
            assert fact["status"] == "stored" and fact["slots_written"] > 0
            mid = fact["memory"]["id"]
            await call(s, "remember", user_id="ann", text="The tax report is due in April.")
            hits = await call(s, "recall", user_id="ann", query="my pet's name", limit=2)
            assert hits["memories"][0]["id"] == mid and hits["memories"][0]["score"] > 0
            page = await call(s, "list_memories", user_id="ann", limit=1)
            assert len(page["memories"]) == 1
            again = await call(s, "remember", user_id="ann", text="My dog is called Rex.")
            assert again["status"] == "merged" and again["memory"]["id"] == mid
            out = await call(s, "forget", user_id="ann", memory_id=mid)
            assert out["forgotten"] == mid and out["text"] == "My dog is called Rex."
            assert out["slots_removed"] == fact["slots_written"]
            left = await call(s, "list_memories", user_id="ann")
            assert [m["text"] for m in left["memories"]] == ["The tax report is due in April."]
            assert "not found" in await error(s, "forget", user_id="ann", memory_id=mid)
            turn = await call(s, "chat", user_id="ann", message="Hello there", max_tokens=3)
            sid = turn["session_id"]
            assert isinstance(turn["reply"], str) and turn["memory_writes"] > 0
            nxt = await call(s, "chat", user_id="ann", message="Hi", session_id=sid, max_tokens=2)
            assert nxt["session_id"] == sid and nxt["cached_tokens"] > 0  # resumed
        got = api("GET", f"/v1/sessions/{sid}").json()
        assert got["user_id"] == "ann" and got["message_count"] == 4

    run(scenario)


def test_mcp_needs_the_tenant_key(server: Server) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = httpx.post(server.url + "/mcp", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text


def test_tenants_and_users_are_isolated(server: Server, api: Client, backend) -> None:
    other_key = backend.new_tenant()

    async def scenario() -> None:
        async with http_session(server, api.key) as mine:
            fact = await call(mine, "remember", user_id="bea", text="Bea's PIN is 2468.")
            mid = fact["memory"]["id"]
            sid = (await call(mine, "chat", user_id="bea", message="Hi", max_tokens=1))[
                "session_id"
            ]
            # another user of the same tenant: not found, as across tenants
            assert "not found" in await error(mine, "forget", user_id="cid", memory_id=mid)
            msg = await error(mine, "chat", user_id="cid", message="Hi", session_id=sid)
            assert "not found" in msg
            assert (await call(mine, "recall", user_id="cid", query="PIN"))["memories"] == []
        async with http_session(server, other_key) as theirs:
            assert "not found" in await error(theirs, "forget", user_id="bea", memory_id=mid)
            msg = await error(theirs, "chat", user_id="bea", message="Hi", session_id=sid)
            assert "not found" in msg
            assert (await call(theirs, "recall", user_id="bea", query="PIN"))["memories"] == []
            assert (await call(theirs, "list_memories", user_id="bea"))["memories"] == []

    run(scenario)
    assert api("GET", f"/v1/memories/{mid_of(api, 'bea')}").status_code == 200  # untouched


def mid_of(api: Client, user: str) -> str:
    (m,) = [
        m for m in api("GET", f"/v1/users/{user}/memories").json()["memories"] if "PIN" in m["text"]
    ]
    return m["id"]


def test_bad_input_is_a_tool_error(server: Server, api: Client) -> None:
    async def scenario() -> None:
        async with http_session(server, api.key) as s:
            bad = [
                ("remember", {"user_id": "bad user", "text": "x"}),
                ("remember", {"user_id": "u", "text": ""}),
                ("remember", {"user_id": "u", "text": "x" * 16_001}),
                ("remember", {"user_id": "u"}),
                ("remember", {"user_id": 5, "text": "x"}),
                ("recall", {"user_id": "u", "query": "q", "limit": 0}),
                ("recall", {"user_id": "u", "query": "q", "limit": "many"}),
                ("list_memories", {"user_id": "u", "offset": -1}),
                ("forget", {"user_id": "u", "memory_id": "../sessions/x"}),
                ("forget", {"user_id": "u", "memory_id": "0" * 32}),
                ("chat", {"user_id": "u", "message": "hi", "session_id": "0" * 32}),
                ("chat", {"user_id": "u", "message": "hi", "max_tokens": 0}),
                ("nonexistent_tool", {"user_id": "u"}),
            ]
            for tool, args in bad:
                r = await s.call_tool(tool, args)
                assert r.is_error and r.content[0].text, (tool, args)
            long = "x" * 2001  # over the server's message limit: the REST answer, as a tool error
            msg = await error(s, "chat", user_id="u", message=long, max_tokens=1)
            assert "413" in msg or "too" in msg.lower()

    run(scenario)
    assert httpx.get(server.url + "/readyz").status_code == 200  # still serving


def test_stdio_memory_is_read_by_a_rest_chat_of_the_same_user(server: Server, api: Client) -> None:
    async def scenario() -> dict[str, Any]:
        async with stdio_session(server, api.key) as s:
            assert {t.name for t in (await s.list_tools()).tools} == TOOLS
            fact = await call(s, "remember", user_id="dan", text="Dan's locker code is 4711.")
            hits = await call(s, "recall", user_id="dan", query="locker code")
            assert hits["memories"][0]["id"] == fact["memory"]["id"]
            return fact["memory"]

    memory = run(scenario)
    assert api("GET", f"/v1/memories/{memory['id']}").json()["reads"] == 0
    sid = api("POST", "/v1/sessions", json={"user_id": "dan"}).json()["id"]
    r = api("POST", f"/v1/sessions/{sid}/messages", json={"content": "What is my locker code?"})
    assert r.status_code == 200, r.text
    assert api("GET", f"/v1/memories/{memory['id']}").json()["reads"] > 0


def test_stdio_reports_a_bad_key_as_a_tool_error(server: Server) -> None:
    async def scenario() -> str:
        async with stdio_session(server, "msk_not_a_key") as s:
            return await error(s, "recall", user_id="u", query="anything")

    assert "not authorised" in run(scenario)
