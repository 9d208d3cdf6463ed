"""A small HTTP client of a running memsvc (sync and async), used by the CLI and LangChain.

It speaks memsvc's own REST API (sessions, messages, documents, search) and its
OpenAI-compatible ``/v1/chat/completions``. Every non-2xx answer becomes a
:class:`MemsvcError` carrying the server's error code and message.

    client = MemsvcClient("http://127.0.0.1:8000", api_key="msk_...")
    sid = client.create_session()["id"]
    for piece in client.stream_message(sid, "Hello"):
        print(piece.get("text", ""), end="")
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
SESSION_HEADER = "X-Memsvc-Session"


class MemsvcError(Exception):
    """A memsvc server answered with an error (or could not be reached)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({status} {code})" if status else message)
        self.status, self.code, self.message = status, code, message


def env_base_url() -> str:
    return os.environ.get("MEMSVC_BASE_URL", DEFAULT_BASE_URL)


def env_api_key() -> str | None:
    return os.environ.get("MEMSVC_API_KEY") or None


def _headers(api_key: str | None, session_id: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    if session_id:
        headers[SESSION_HEADER] = session_id
    return headers


def raise_for_error(r: httpx.Response) -> None:
    """Turn a memsvc error body (``{"error": {"code", "message"}}``) into MemsvcError."""
    if r.status_code < 400:
        return
    try:
        err = r.json().get("error", {})
    except (ValueError, AttributeError):
        err = {}
    if not isinstance(err, dict):
        err = {}
    raise MemsvcError(r.status_code, err.get("code", "http_error"), err.get("message", r.text))


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """(event name, decoded data) per SSE frame; ``[DONE]`` ends the stream."""
    event = "message"
    for line in lines:
        if not line:
            event = "message"
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
            if data == "[DONE]":
                return
            yield event, json.loads(data)


def check_event(event: str, data: Any) -> Any:
    """Raise an in-stream error (REST ``event: error`` or OpenAI ``{"error": ...}``)."""
    if event == "error" or (isinstance(data, dict) and "error" in data):
        err = data.get("error", data) if isinstance(data, dict) else {}
        raise MemsvcError(0, err.get("code") or "stream_error", err.get("message", str(data)))
    return data


class _Base:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        transport: Any = None,
    ) -> None:
        self.base_url = (base_url or env_base_url()).rstrip("/")
        self.api_key = api_key if api_key is not None else env_api_key()
        self.timeout = timeout
        self.transport_retries = max(0, max_retries)
        # another httpx transport (e.g. ASGITransport: the app in process, for /mcp)
        self.transport = transport

    def _client_kwargs(self) -> dict[str, Any]:
        return {
            "base_url": self.base_url,
            "headers": _headers(self.api_key),
            "timeout": self.timeout,
        }


class MemsvcClient(_Base):
    """Synchronous client; a context manager (or call :meth:`close`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        transport = self.transport or httpx.HTTPTransport(retries=self.transport_retries)
        self.http = httpx.Client(transport=transport, **self._client_kwargs())

    def __enter__(self) -> MemsvcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise MemsvcError(0, "unreachable", f"cannot reach {self.base_url}: {exc}") from exc
        raise_for_error(r)
        return r

    def _stream(self, path: str, body: dict, headers: dict | None = None) -> Iterator[Any]:
        try:
            with self.http.stream("POST", path, json=body, headers=headers or {}) as r:
                if r.status_code >= 400:
                    r.read()
                    raise_for_error(r)
                for event, data in parse_sse(r.iter_lines()):
                    yield event, check_event(event, data)
        except httpx.HTTPError as exc:
            raise MemsvcError(0, "unreachable", f"cannot reach {self.base_url}: {exc}") from exc

    # -- REST
    def health(self) -> dict:
        return self.request("GET", "/readyz").json()

    def create_session(self, **body: Any) -> dict:
        return self.request("POST", "/v1/sessions", json=body).json()

    def get_session(self, session_id: str) -> dict:
        return self.request("GET", f"/v1/sessions/{session_id}").json()

    def messages(self, session_id: str, limit: int = 200) -> list[dict]:
        path = f"/v1/sessions/{session_id}/messages"
        return self.request("GET", path, params={"limit": limit}).json()["data"]

    def clear_session(self, session_id: str) -> None:
        self.request("DELETE", f"/v1/sessions/{session_id}")

    def send_message(self, session_id: str, content: str, **params: Any) -> dict:
        body = {"content": content, **params, "stream": False}
        return self.request("POST", f"/v1/sessions/{session_id}/messages", json=body).json()

    def stream_message(self, session_id: str, content: str, **params: Any) -> Iterator[dict]:
        """``delta`` events as {"text": ...}, then the ``done`` body (it has "usage")."""
        body = {"content": content, **params, "stream": True}
        for _, data in self._stream(f"/v1/sessions/{session_id}/messages", body):
            yield data

    def add_document(self, text: str, **body: Any) -> dict:
        return self.request("POST", "/v1/documents", json={"text": text, **body}).json()

    def search(self, query: str, **body: Any) -> list[dict]:
        return self.request("POST", "/v1/search", json={"query": query, **body}).json()["data"]

    # -- OpenAI-compatible
    def chat_completion(self, body: dict, session_id: str | None = None) -> tuple[dict, str]:
        """(``chat.completion`` body, session id)."""
        headers = _headers(None, session_id)
        r = self.request(
            "POST", "/v1/chat/completions", json={**body, "stream": False}, headers=headers
        )
        return r.json(), r.headers.get(SESSION_HEADER, "")

    def stream_chat_completion(self, body: dict, session_id: str | None = None) -> Iterator[dict]:
        """``chat.completion.chunk`` bodies (usage chunk included)."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        for _, data in self._stream("/v1/chat/completions", body, _headers(None, session_id)):
            yield data


class AsyncMemsvcClient(_Base):
    """The asynchronous twin of :class:`MemsvcClient` (the calls LangChain needs)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        transport = self.transport or httpx.AsyncHTTPTransport(retries=self.transport_retries)
        self.http = httpx.AsyncClient(transport=transport, **self._client_kwargs())

    async def __aenter__(self) -> AsyncMemsvcClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = await self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise MemsvcError(0, "unreachable", f"cannot reach {self.base_url}: {exc}") from exc
        raise_for_error(r)
        return r

    async def chat_completion(self, body: dict, session_id: str | None = None) -> tuple[dict, str]:
        headers = _headers(None, session_id)
        r = await self.request(
            "POST", "/v1/chat/completions", json={**body, "stream": False}, headers=headers
        )
        return r.json(), r.headers.get(SESSION_HEADER, "")

    async def stream_chat_completion(
        self, body: dict, session_id: str | None = None
    ) -> AsyncIterator[dict]:
        """``chat.completion.chunk`` bodies as they arrive (usage chunk included)."""
        body = {**body, "stream": True, "stream_options": {"include_usage": True}}
        headers = _headers(None, session_id)
        try:
            async with self.http.stream(
                "POST", "/v1/chat/completions", json=body, headers=headers
            ) as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise_for_error(r)
                async for event, data in _aparse_sse(r.aiter_lines()):
                    yield check_event(event, data)
        except httpx.HTTPError as exc:
            raise MemsvcError(0, "unreachable", f"cannot reach {self.base_url}: {exc}") from exc

    async def messages(self, session_id: str, limit: int = 200) -> list[dict]:
        path = f"/v1/sessions/{session_id}/messages"
        return (await self.request("GET", path, params={"limit": limit})).json()["data"]

    async def search(self, query: str, **body: Any) -> list[dict]:
        r = await self.request("POST", "/v1/search", json={"query": query, **body})
        return r.json()["data"]


async def _aparse_sse(lines: AsyncIterator[str]) -> AsyncIterator[tuple[str, Any]]:
    event = "message"
    async for line in lines:
        if not line:
            event = "message"
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
            if data == "[DONE]":
                return
            yield event, json.loads(data)
