"""Request and response bodies of the OpenAI-compatible endpoints (``/v1/chat/completions``).

They follow OpenAI's Chat Completions wire format. Parameters memsvc cannot honour
(``n > 1``, tools, logprobs, penalties, non-text content) are rejected with 422 rather
than silently ignored; unknown fields are rejected too, like OpenAI itself does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from memsvc.records import Count, Finite, PositiveCount, Seed

MODEL_ID = "memsvc"
SESSION_HEADER = "X-Memsvc-Session"
IDEMPOTENCY_HEADER = "Idempotency-Key"


def _no_nul(value: Any) -> Any:
    """Refuse NUL characters anywhere in a JSON value (PostgreSQL text cannot hold them)."""
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("strings must not contain NUL (\\u0000) characters")
    if isinstance(value, dict):
        for k, v in value.items():
            _no_nul(k)
            _no_nul(v)
    elif isinstance(value, list):
        for v in value:
            _no_nul(v)
    return value


class _Strict(BaseModel):
    """Unknown fields and NUL characters are rejected (422)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _reject_nul(cls, data: Any) -> Any:
        return _no_nul(data)


class TextPart(_Strict):
    """One content part; only text parts are supported (images, audio: 422)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """One message of the conversation, as OpenAI clients send it."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(default=None, max_length=256)
    refusal: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined)."""
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool = False
    include_obfuscation: bool | None = None


def _unsupported(value: Any, default: Any, name: str) -> Any:
    if value not in (None, default):
        raise ValueError(f"{name} is not supported by memsvc")
    return value


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions``: OpenAI's parameters plus two memsvc switches.

    Session mapping (see :mod:`memsvc.services.openai`): the ``X-Memsvc-Session`` header or
    ``metadata.session_id`` names the session; ``user`` becomes the session's user id
    (memories are shared across that user's sessions).
    """

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: PositiveCount | None = None
    max_completion_tokens: PositiveCount | None = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: Seed | None = None
    n: int | None = Field(default=None, ge=1, le=1, description="only 1 is supported")
    user: str | None = Field(default=None, min_length=1, max_length=128)
    metadata: dict[str, str] | None = None
    store: bool | None = None
    presence_penalty: Finite | None = None
    frequency_penalty: Finite | None = None
    logprobs: bool | None = None
    top_logprobs: Count | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    # memsvc extensions (the openai client passes them through ``extra_body``)
    use_documents: bool = True
    use_memory: bool = True

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, v: float | None, info) -> float | None:
        return _unsupported(v, 0.0, info.field_name)

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | None) -> bool | None:
        return _unsupported(v, False, "logprobs")

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, v: int | None) -> int | None:
        return _unsupported(v, 0, "top_logprobs")

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, v: list | None) -> list | None:
        if v:
            raise ValueError("tool calling is not supported by memsvc")
        return v

    @field_validator("tool_choice")
    @classmethod
    def _no_tool_choice(cls, v: Any) -> Any:
        return _unsupported(v, "none", "tool_choice")

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, v: dict | None) -> dict | None:
        if v is not None and v.get("type") != "text":
            raise ValueError("only response_format {'type': 'text'} is supported")
        return v

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> list[str]:
        items = [v] if isinstance(v, str) else list(v or [])
        if any(not s for s in items):
            raise ValueError("stop sequences must be non-empty strings")
        return items

    def new_tokens(self) -> int | None:
        """``max_completion_tokens`` (the current name) or ``max_tokens`` (the old one)."""
        return self.max_completion_tokens or self.max_tokens

    def session_hint(self) -> str | None:
        """The session named in the body (``metadata.session_id``), if any."""
        return (self.metadata or {}).get("session_id") or None


# ------------------------------------------------------------------ responses
class PromptTokensDetails(BaseModel):
    cached_tokens: int = Field(description="history tokens served from the persisted state")


class CompletionUsage(BaseModel):
    prompt_tokens: int = Field(description="fed this turn + served from the persisted state")
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str
    refusal: str | None = None


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    system_fingerprint: str | None = None
    session_id: str = Field(description="the memsvc session this turn was added to")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "memsvc"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
