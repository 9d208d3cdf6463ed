"""memsvc's MCP tools: remember, recall, list_memories, forget, chat (issue 12 §3).

Every tool is a thin call of memsvc's own REST API through :class:`AsyncMemsvcClient`.
The two transports differ only in how that client reaches the service:

- ``memsvc mcp`` (stdio): over the network, to ``MEMSVC_BASE_URL`` with ``MEMSVC_API_KEY``;
- ``/mcp`` on the service (Streamable HTTP): in process, through an ASGI transport into
  the same FastAPI app, with the bearer key the MCP request came with.

Why the client and not the services directly: one implementation serves both
transports, and every tool call passes the very checks a REST call passes (the tenant's
key, validation, size limits, 404 across tenants, the error table), so MCP cannot
become a side door. The in-process hop costs a JSON round trip, nothing next to a turn.

Tools scope everything to ``user_id``: a memory or session of another user of the same
tenant is "not found", as another tenant's is. Failures are tool errors (``is_error``)
whose text says what to fix; nothing a client sends crashes the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from pydantic import Field

from memsvc.client import AsyncMemsvcClient, MemsvcError

#: How a tool gets a client for the current call (and closes it after).
ClientFactory = Callable[[Any], Awaitable[AsyncMemsvcClient]]

UserId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_.:@-]+$",
        description="the end user whose memory this is (letters, digits, _ . : @ -)",
    ),
]
# ids are path segments of the REST calls: letters, digits, - and _ only (no "/", "..")
ID_PATTERN = r"^[A-Za-z0-9_-]+$"
MemoryId = Annotated[
    str, Field(min_length=1, max_length=64, pattern=ID_PATTERN, description="a memory's id")
]


def session_id_field(description: str) -> Any:
    """An optional session id argument."""
    return Annotated[
        str | None,
        Field(
            default=None, min_length=1, max_length=64, pattern=ID_PATTERN, description=description
        ),
    ]


INSTRUCTIONS = (
    "memsvc keeps long-term memory per end user. Call `recall` with the user's id before "
    "answering questions about them; `remember` facts and preferences they state; "
    "`forget` a memory (by id from recall/list_memories) when they ask; `chat` talks to "
    "memsvc's own model, which reads the user's memories."
)


class ToolFailure(Exception):
    """A failure the caller can act on (becomes an MCP tool error with this message)."""


def _fail(exc: MemsvcError, what: str) -> ToolFailure:
    if exc.status == 404:
        return ToolFailure(f"{what} not found")
    if exc.status in (401, 403):
        return ToolFailure(f"not authorised: {exc.message}")
    if exc.status == 0:
        return ToolFailure(f"memsvc is unreachable: {exc.message}")
    return ToolFailure(f"{exc.message} (HTTP {exc.status}, {exc.code})")


def _memory_view(m: dict[str, Any]) -> dict[str, Any]:
    """What an assistant needs of a memory (no slot internals)."""
    keep = ("id", "text", "score", "session_id", "collection", "key", "created_at")
    return {k: m.get(k) for k in keep if m.get(k) is not None}


class MemoryTools:
    """The tool implementations over a client factory (see the module docstring)."""

    def __init__(self, clients: ClientFactory) -> None:
        self.clients = clients

    async def _call(self, ctx: Any, what: str, method: str, path: str, **kw: Any) -> Any:
        client = await self.clients(ctx)
        try:
            r = await client.request(method, path, **kw)
        except MemsvcError as exc:
            raise _fail(exc, what) from None
        finally:
            await client.aclose()
        return r.json() if r.content else None

    async def remember(self, ctx: Any, user_id: str, text: str) -> dict[str, Any]:
        body = {"text": text, "force": True}
        out = await self._call(ctx, "user", "POST", f"/v1/users/{user_id}/memories", json=body)
        result = {"status": out["status"], "slots_written": out["slots_written"]}
        if out.get("memory"):
            result["memory"] = _memory_view(out["memory"])
        if out.get("reason"):
            result["reason"] = out["reason"]
        return result

    async def recall(self, ctx: Any, user_id: str, query: str, limit: int) -> dict[str, Any]:
        params = {"query": query, "limit": limit}
        out = await self._call(ctx, "user", "GET", f"/v1/users/{user_id}/memories", params=params)
        return {"memories": [_memory_view(m) for m in out["memories"]]}

    async def list_memories(
        self, ctx: Any, user_id: str, limit: int, offset: int, session_id: str | None
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if session_id:
            params["session_id"] = session_id
        out = await self._call(ctx, "user", "GET", f"/v1/users/{user_id}/memories", params=params)
        return {"memories": [_memory_view(m) for m in out["memories"]], "offset": offset}

    async def forget(self, ctx: Any, user_id: str, memory_id: str) -> dict[str, Any]:
        what = f"memory {memory_id} of user {user_id}"
        got = await self._call(ctx, what, "GET", f"/v1/memories/{memory_id}")
        if got.get("user_id") != user_id:  # another user's memory is as unknown as a foreign one
            raise ToolFailure(f"{what} not found")
        out = await self._call(ctx, what, "DELETE", f"/v1/memories/{memory_id}")
        gone = out["slots_removed"]
        return {"forgotten": memory_id, "text": got.get("text"), "slots_removed": gone}

    async def chat(
        self,
        ctx: Any,
        user_id: str,
        message: str,
        session_id: str | None,
        max_tokens: int | None,
    ) -> dict[str, Any]:
        if session_id is None:
            new = {"user_id": user_id}
            created = await self._call(ctx, "user", "POST", "/v1/sessions", json=new)
            session_id = created["id"]
        else:
            what = f"session {session_id} of user {user_id}"
            got = await self._call(ctx, what, "GET", f"/v1/sessions/{session_id}")
            if got.get("user_id") != user_id:
                raise ToolFailure(f"{what} not found")
        body: dict[str, Any] = {"content": message, "stream": False}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        out = await self._call(
            ctx, f"session {session_id}", "POST", f"/v1/sessions/{session_id}/messages", json=body
        )
        usage = out.get("usage", {})
        return {
            "session_id": session_id,
            "reply": out["message"]["content"],
            "memory_writes": usage.get("memory_writes", 0),
            "cached_tokens": usage.get("cached_tokens", 0),
        }
