"""The MCP server object (official ``mcp`` SDK, ``MCPServer``) with memsvc's five tools.

:func:`build_server` takes a client factory (see :mod:`memsvc.mcp.tools`), so the same
server runs over stdio (``memsvc mcp``) and Streamable HTTP (``/mcp`` on the service).
Each tool has a typed input schema (pydantic ``Field`` limits: the SDK rejects bad
arguments as a tool error before the tool runs) and a description an assistant can act on.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from memsvc.mcp.tools import (
    INSTRUCTIONS,
    ClientFactory,
    MemoryId,
    MemoryTools,
    ToolFailure,
    UserId,
    session_id_field,
)

Text = Annotated[
    str, Field(min_length=1, max_length=16_000, description="the fact or preference, in words")
]
Query = Annotated[str, Field(min_length=1, max_length=2000, description="what to look for")]
Message = Annotated[
    str, Field(min_length=1, max_length=16_000, description="the user's message to memsvc's model")
]


def _tool_errors(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Anticipated failures become SDK tool errors (logged without a traceback)."""

    @functools.wraps(fn)
    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except ToolFailure as exc:
            raise ToolError(str(exc)) from None

    return wrapped


def build_server(clients: ClientFactory) -> MCPServer:
    """An ``MCPServer`` named ``memsvc`` whose tools reach memsvc through ``clients``."""
    server = MCPServer("memsvc", instructions=INSTRUCTIONS, version="0.1.0")
    tools = MemoryTools(clients)
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    @server.tool(
        description=(
            "Store a fact, preference or event about a user in long-term memory, in the "
            "user's own words (one fact per call). Returns the stored memory, or says it "
            "merged into an identical one."
        ),
        annotations=ToolAnnotations(idempotent_hint=True, open_world_hint=False),
    )
    @_tool_errors
    async def remember(user_id: UserId, text: Text, ctx: Context) -> dict[str, Any]:
        return await tools.remember(ctx, user_id, text)

    @server.tool(
        description=(
            "Search a user's memories by meaning (semantic search); most relevant first, "
            "each with its id and a similarity score. Use it before answering anything "
            "about the user."
        ),
        annotations=read_only,
    )
    @_tool_errors
    async def recall(
        user_id: UserId,
        query: Query,
        ctx: Context,
        limit: Annotated[int, Field(ge=1, le=50, description="how many memories")] = 5,
    ) -> dict[str, Any]:
        return await tools.recall(ctx, user_id, query, limit)

    @server.tool(
        description=(
            "List a user's memories, newest first (paged with limit/offset; optionally "
            "only those written in one chat session)."
        ),
        annotations=read_only,
    )
    @_tool_errors
    async def list_memories(
        user_id: UserId,
        ctx: Context,
        limit: Annotated[int, Field(ge=1, le=200, description="page length")] = 20,
        offset: Annotated[int, Field(ge=0, le=1_000_000, description="memories to skip")] = 0,
        session_id: session_id_field("only memories written in this chat session") = None,
    ) -> dict[str, Any]:
        return await tools.list_memories(ctx, user_id, limit, offset, session_id)

    @server.tool(
        description=(
            "Delete one of a user's memories for good, by its id (from recall or "
            "list_memories). Chat no longer recalls it. Says what text was removed."
        ),
        annotations=ToolAnnotations(destructive_hint=True, open_world_hint=False),
    )
    @_tool_errors
    async def forget(user_id: UserId, memory_id: MemoryId, ctx: Context) -> dict[str, Any]:
        return await tools.forget(ctx, user_id, memory_id)

    @server.tool(
        description=(
            "Send the user's message to memsvc's own chat model, which reads the user's "
            "memories and writes new ones from what the user says. Starts a new session "
            "when session_id is left out; pass the returned session_id to continue it."
        ),
        annotations=ToolAnnotations(open_world_hint=False),
    )
    @_tool_errors
    async def chat(
        user_id: UserId,
        message: Message,
        ctx: Context,
        session_id: session_id_field("continue this session; leave out to start one") = None,
        max_tokens: Annotated[
            int | None, Field(default=None, ge=1, le=4096, description="reply length cap")
        ] = None,
    ) -> dict[str, Any]:
        return await tools.chat(ctx, user_id, message, session_id, max_tokens)

    return server
