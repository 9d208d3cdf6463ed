"""``MemsvcChatMessageHistory``: a memsvc session's messages as a LangChain chat history."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage

from memsvc.client import MemsvcClient

with warnings.catch_warnings():  # the base class warns on import-time subclassing
    warnings.simplefilter("ignore", DeprecationWarning)
    from langchain_core.chat_history import BaseChatMessageHistory

_FROM_ROLE = {"user": HumanMessage, "assistant": AIMessage}
_TO_ROLE = {"human": "user", "ai": "assistant"}


def _key(message: BaseMessage) -> tuple[str, str]:
    return _TO_ROLE.get(message.type, message.type), message.text


class MemsvcChatMessageHistory(BaseChatMessageHistory):
    """The messages of one memsvc session, read over HTTP.

    Note: langchain-core has deprecated ``BaseChatMessageHistory`` since 1.6.4 (removal
    planned for 2.0) in favour of LangGraph's short-term memory; it is still what many
    applications (``RunnableWithMessageHistory``) use, so memsvc keeps offering it.

    A memsvc session's history grows only through turns: the model reads each message
    into the session's recurrent state. So :meth:`add_messages` accepts messages the
    session already holds (for example after ``ChatMemsvc(session_id=...)`` ran the
    turn, which stored both messages) and skips them; a message the session does not
    hold cannot be inserted after the fact and raises ``ValueError``. :meth:`clear`
    deletes the session (messages, state, session-scoped memory) and starts a new, empty
    one; ``session_id`` then names the new session. Without a ``session_id`` the
    constructor creates a new session (``POST /v1/sessions``). ``base_url`` and
    ``api_key`` default to ``MEMSVC_BASE_URL`` and ``MEMSVC_API_KEY``.
    """

    def __init__(
        self,
        session_id: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        user_id: str | None = None,
    ) -> None:
        self._args: dict[str, Any] = {"base_url": base_url, "api_key": api_key, "timeout": timeout}
        self.user_id = user_id
        self.session_id = session_id or self._new_session()

    def _client(self) -> MemsvcClient:
        return MemsvcClient(**self._args)

    def _new_session(self) -> str:
        body = {"user_id": self.user_id} if self.user_id else {}
        with self._client() as client:
            return client.create_session(**body)["id"]

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The session's messages, oldest first."""
        with self._client() as client:
            rows = client.messages(self.session_id, limit=10_000)
        return [_FROM_ROLE[r["role"]](content=r["content"], id=r["id"]) for r in rows]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Accept messages the session already holds, in order (see the class doc)."""
        held = [_key(m) for m in self.messages]
        new = [_key(m) for m in messages]
        if not new:
            return
        for start in range(len(held) - len(new), -1, -1):  # newest occurrence first
            if held[start : start + len(new)] == new:
                return
        raise ValueError(
            f"memsvc session {self.session_id} does not hold these messages; a session grows "
            "only through turns (use ChatMemsvc with session_id to add them)"
        )

    def clear(self) -> None:
        """Delete the session and continue with a new, empty one."""
        with self._client() as client:
            client.clear_session(self.session_id)
        self.session_id = self._new_session()
