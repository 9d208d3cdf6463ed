"""``ChatMemsvc``: a LangChain chat model backed by a running memsvc, over HTTP.

It talks to memsvc's OpenAI-compatible ``/v1/chat/completions`` (sync and async,
invoke and stream). With ``session_id`` set, every call continues that memsvc session:
the history the session already holds is served from its persisted recurrent state
and only the new turn is fed (see :mod:`memsvc.services.openai`). Without it, each call
starts a new session, like any stateless chat model; the session id of every answer
is in ``response_metadata["session_id"]``.

    llm = ChatMemsvc(base_url="http://127.0.0.1:8000", api_key="msk_...", session_id=sid)
    llm.invoke("Hello")

``base_url`` and ``api_key`` default to ``MEMSVC_BASE_URL`` and ``MEMSVC_API_KEY``.
Tool calling, structured output and images are not supported.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import (
    BaseChatModel,
    LangSmithParams,
    agenerate_from_stream,
    generate_from_stream,
)
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils import from_env, secret_from_env
from pydantic import ConfigDict, Field, SecretStr

from memsvc.client import DEFAULT_BASE_URL, AsyncMemsvcClient, MemsvcClient

ROLES = {HumanMessage: "user", AIMessage: "assistant", SystemMessage: "system"}


def to_openai_message(message: BaseMessage) -> dict[str, Any]:
    """A LangChain message as an OpenAI chat message (text content only)."""
    role = message.role if isinstance(message, ChatMessage) else ROLES.get(type(message))
    if role is None:
        raise ValueError(f"ChatMemsvc does not support {type(message).__name__} messages")
    content = message.content
    if isinstance(content, list):
        texts = []
        for block in content:
            if isinstance(block, str):
                texts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                texts.append(block.get("text", ""))
            else:
                raise ValueError("ChatMemsvc accepts text content only")
        content = "".join(texts)
    return {"role": role, "content": content}


def usage_metadata(usage: dict[str, Any] | None) -> UsageMetadata | None:
    """OpenAI usage → LangChain usage; tokens from the persisted state are cache reads."""
    if not usage:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
    return UsageMetadata(
        input_tokens=usage["prompt_tokens"],
        output_tokens=usage["completion_tokens"],
        total_tokens=usage["total_tokens"],
        input_token_details={"cache_read": cached},
    )


class ChatMemsvc(BaseChatModel):
    """Chat model on a memsvc server (persistent sessions on a RetNet)."""

    model_config = ConfigDict(populate_by_name=True)

    model_name: str = Field(default="memsvc", alias="model")
    """Model id (``GET /v1/models``)."""
    base_url: str = Field(default_factory=from_env("MEMSVC_BASE_URL", default=DEFAULT_BASE_URL))
    """Server URL, e.g. ``http://127.0.0.1:8000`` (env ``MEMSVC_BASE_URL``)."""
    api_key: SecretStr | None = Field(
        default_factory=secret_from_env("MEMSVC_API_KEY", default=None)
    )
    """Tenant API key (env ``MEMSVC_API_KEY``)."""
    session_id: str | None = None
    """memsvc session to continue; None starts a new session per call."""
    user_id: str | None = None
    """End-user id of new sessions (memories carry over between that user's sessions)."""
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = 120.0
    max_retries: int = 2
    streaming: bool = False
    """Generate through the streaming endpoint even for ``invoke``."""
    use_documents: bool = True
    use_memory: bool = True

    @property
    def _llm_type(self) -> str:
        return "memsvc-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "base_url": self.base_url}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="memsvc",
            ls_model_name=kwargs.get("model", self.model_name),
            ls_model_type="chat",
        )
        if (temperature := kwargs.get("temperature", self.temperature)) is not None:
            params["ls_temperature"] = temperature
        if (max_tokens := kwargs.get("max_tokens", self.max_tokens)) is not None:
            params["ls_max_tokens"] = max_tokens
        if stops := stop or kwargs.get("stop") or self.stop:
            params["ls_stop"] = stops
        return params

    # ------------------------------------------------------------------ requests
    def _client_args(self) -> dict[str, Any]:
        key = self.api_key.get_secret_value() if self.api_key else None
        return {
            "base_url": self.base_url,
            "api_key": key,
            "timeout": self.timeout or 120.0,
            "max_retries": self.max_retries,
        }

    def _payload(self, messages: list[BaseMessage], stop: list[str] | None, **kw: Any) -> dict:
        body: dict[str, Any] = {
            "model": kw.pop("model", self.model_name),
            "messages": [to_openai_message(m) for m in messages],
            "use_documents": self.use_documents,
            "use_memory": self.use_memory,
        }
        options = {
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "top_p": self.top_p,
            "seed": self.seed,
            "user": self.user_id,
            "stop": stop if stop is not None else self.stop,
        }
        options.update({k: kw[k] for k in list(options) if k in kw})
        body.update({k: v for k, v in options.items() if v not in (None, [])})
        return body

    def _session(self, kwargs: dict[str, Any]) -> str | None:
        return kwargs.pop("session_id", None) or self.session_id

    def _result(self, body: dict[str, Any], session_id: str) -> ChatResult:
        choice = body["choices"][0]
        meta = {
            "model_name": body.get("model", self.model_name),
            "finish_reason": choice.get("finish_reason"),
            "session_id": session_id or body.get("session_id"),
            "system_fingerprint": body.get("system_fingerprint"),
            "model_provider": "memsvc",
        }
        message = AIMessage(
            content=choice["message"]["content"] or "",
            id=body.get("id"),
            usage_metadata=usage_metadata(body.get("usage")),
            response_metadata=meta,
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _chunk(self, body: dict[str, Any]) -> ChatGenerationChunk | None:
        """One ``chat.completion.chunk`` as a LangChain chunk (None when it says nothing)."""
        if body.get("usage") is not None:  # the last chunk: usage and metadata, once
            meta = {
                "model_name": body.get("model", self.model_name),
                "session_id": body.get("session_id"),
                "system_fingerprint": body.get("system_fingerprint"),
                "model_provider": "memsvc",
            }
            msg = AIMessageChunk(
                content="",
                usage_metadata=usage_metadata(body["usage"]),
                response_metadata=meta,
                chunk_position="last",
            )
            return ChatGenerationChunk(message=msg)
        if not body.get("choices"):
            return None
        choice = body["choices"][0]
        text = (choice.get("delta") or {}).get("content") or ""
        finish = choice.get("finish_reason")
        if not text and not finish:
            return None
        meta = {"finish_reason": finish} if finish else {}
        info = {"finish_reason": finish} if finish else None
        msg = AIMessageChunk(content=text, id=body.get("id"), response_metadata=meta)
        return ChatGenerationChunk(message=msg, generation_info=info)

    # ------------------------------------------------------------------ LangChain hooks
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            return generate_from_stream(self._stream(messages, stop, run_manager, **kwargs))
        session = self._session(kwargs)
        with MemsvcClient(**self._client_args()) as client:
            body, sid = client.chat_completion(self._payload(messages, stop, **kwargs), session)
        return self._result(body, sid)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        session = self._session(kwargs)
        payload = self._payload(messages, stop, **kwargs)
        with MemsvcClient(**self._client_args()) as client:
            for body in client.stream_chat_completion(payload, session):
                chunk = self._chunk(body)
                if chunk is None:
                    continue
                if run_manager and chunk.message.content:
                    run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.streaming:
            stream = self._astream(messages, stop, run_manager, **kwargs)
            return await agenerate_from_stream(stream)
        session = self._session(kwargs)
        payload = self._payload(messages, stop, **kwargs)
        async with AsyncMemsvcClient(**self._client_args()) as client:
            body, sid = await client.chat_completion(payload, session)
        return self._result(body, sid)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        session = self._session(kwargs)
        payload = self._payload(messages, stop, **kwargs)
        async with AsyncMemsvcClient(**self._client_args()) as client:
            async for body in client.stream_chat_completion(payload, session):
                chunk = self._chunk(body)
                if chunk is None:
                    continue
                if run_manager and chunk.message.content:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
