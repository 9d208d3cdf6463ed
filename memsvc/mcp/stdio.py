"""``memsvc mcp``: the MCP server over stdio, talking to a running memsvc over HTTP.

The service is ``MEMSVC_BASE_URL`` (default http://127.0.0.1:8000), the tenant key
``MEMSVC_API_KEY``. stdout carries the MCP protocol only; logs go to stderr.
"""

from __future__ import annotations

from typing import Any

from memsvc.client import AsyncMemsvcClient
from memsvc.mcp.server import build_server


def run_stdio(base_url: str | None = None, api_key: str | None = None) -> None:
    """Serve the memsvc tools on stdin/stdout until the client closes them."""

    async def clients(_: Any) -> AsyncMemsvcClient:
        return AsyncMemsvcClient(base_url, api_key)

    build_server(clients).run("stdio")
