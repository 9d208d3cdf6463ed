"""The OpenAI-compatible API through the official ``openai`` client, on a live server.

Both backends (PostgreSQL + Redis, and the SQLite default). The server runs a tiny
"talkative" checkpoint (replies are never empty, see ``talkative_model``) on the
suite's shared databases.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from talkative_model import REPLY_TOKENS, talkative_server

from memsvc.services.openai_schemas import IDEMPOTENCY_HEADER, SESSION_HEADER


@pytest.fixture(scope="module")
def server(backend, tmp_path_factory, pytestconfig):
    """`memsvc serve` with the talkative checkpoint on the shared backend."""
    return talkative_server(backend, tmp_path_factory, pytestconfig)


@pytest.fixture
def key(backend) -> str:
    return backend.new_tenant("oai")


@pytest.fixture
def client(server, key) -> openai.OpenAI:
    with openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0) as c:
        yield c


def _create(client: openai.OpenAI, messages: list[dict], **kw):
    """(completion, session id from the response header)."""
    raw = client.chat.completions.with_raw_response.create(
        model="memsvc", messages=messages, max_tokens=6, temperature=0, **kw
    )
    return raw.parse(), raw.headers[SESSION_HEADER]


def _stored(server, key: str, session_id: str) -> list[tuple[str, str]]:
    r = httpx.get(
        f"{server.url}/v1/sessions/{session_id}/messages",
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 200, r.text
    return [(m["role"], m["content"]) for m in r.json()["data"]]


def test_models_lists_the_served_model(client: openai.OpenAI, server) -> None:
    assert [m.id for m in client.models.list()] == ["memsvc"]
    anonymous = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


def test_completion_creates_a_session_and_reports_usage(client, server, key) -> None:
    done, sid = _create(client, [{"role": "user", "content": "Hello there"}])
    text = done.choices[0].message.content
    assert text and done.choices[0].finish_reason == "length"
    assert done.object == "chat.completion" and done.model == "memsvc"
    assert done.usage.completion_tokens == 6
    assert done.usage.prompt_tokens_details.cached_tokens == 0
    assert done.usage.total_tokens == done.usage.prompt_tokens + 6
    assert _stored(server, key, sid) == [("user", "Hello there"), ("assistant", text)]


def test_resent_history_feeds_only_the_new_turn(client, server, key) -> None:
    first, sid = _create(client, [{"role": "user", "content": "My name is Ada."}])
    history = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.choices[0].message.content},
    ]
    fresh, _ = _create(client, [{"role": "user", "content": "What is my name?"}])
    again, sid2 = _create(
        client,
        [*history, {"role": "user", "content": "What is my name?"}],
        extra_headers={SESSION_HEADER: sid},
    )
    assert sid2 == sid
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached == first.usage.prompt_tokens + first.usage.completion_tokens + 1
    # only the new turn was fed: as many tokens as the same message in a fresh session
    assert again.usage.prompt_tokens - cached == fresh.usage.prompt_tokens
    stored = _stored(server, key, sid)
    assert [r for r, _ in stored] == ["user", "assistant", "user", "assistant"]


def test_metadata_session_and_only_the_new_message(client, server, key) -> None:
    _, sid = _create(client, [{"role": "user", "content": "Hello"}])
    done, sid2 = _create(
        client, [{"role": "user", "content": "And again"}], metadata={"session_id": sid}
    )
    assert sid2 == sid and done.session_id == sid
    assert done.usage.prompt_tokens_details.cached_tokens > 0
    assert len(_stored(server, key, sid)) == 4


def test_stream_chunks_usage_and_done(client, server, key) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="memsvc",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
    )
    sid = raw.headers[SESSION_HEADER]
    chunks = list(raw.parse())
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert _stored(server, key, sid) == [("user", "Hi"), ("assistant", text)]


def test_stream_without_usage_ends_with_finish_chunk(client) -> None:
    stream = client.chat.completions.create(
        model="memsvc", messages=[{"role": "user", "content": "Hi"}], max_tokens=3, stream=True
    )
    chunks = list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(c.usage is None for c in chunks)


def test_raw_stream_ends_with_done(server, key) -> None:
    body = {"model": "memsvc", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    with httpx.stream(
        "POST",
        f"{server.url}/v1/chat/completions",
        json={**body, "max_tokens": 3},
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
    ) as r:
        lines = [ln for ln in r.iter_lines() if ln]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(ln.startswith("data: ") for ln in lines)


def test_new_session_from_a_history_then_continue(client, server, key) -> None:
    history = [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "I like tea."},
        {"role": "assistant", "content": "Tea is nice."},
    ]
    first, sid = _create(client, [*history, {"role": "user", "content": "And you?"}])
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    follow = [
        *history,
        {"role": "user", "content": "And you?"},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Bye"},
    ]
    done, sid2 = _create(client, follow, extra_headers={SESSION_HEADER: sid})
    assert sid2 == sid and done.usage.prompt_tokens_details.cached_tokens > 0


def test_diverging_history_is_rejected_and_nothing_fed(client, server, key) -> None:
    _, sid = _create(client, [{"role": "user", "content": "Hello"}])
    wrong = [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "something the server never said"},
        {"role": "user", "content": "Hm?"},
    ]
    with pytest.raises(openai.BadRequestError) as err:
        _create(client, wrong, extra_headers={SESSION_HEADER: sid})
    assert err.value.body["code"] == "history_mismatch"
    assert len(_stored(server, key, sid)) == 2


def test_bad_requests(client, backend) -> None:
    user = [{"role": "user", "content": "Hi"}]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=user)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="memsvc", messages=user, n=2)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="memsvc", messages=user, tools=[tool])
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(
            model="memsvc", messages=[*user, {"role": "assistant", "content": "last"}]
        )
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="memsvc", messages=user, temperature=3)
    for content in ("", "nul \x00 inside"):  # refused by the turn body / by the schema
        with pytest.raises(openai.UnprocessableEntityError):
            client.chat.completions.create(
                model="memsvc", messages=[{"role": "user", "content": content}]
            )
    with pytest.raises(openai.APIStatusError) as big:
        client.chat.completions.create(model="memsvc", messages=user, max_tokens=10_000)
    assert big.value.status_code == 413


def test_foreign_session_is_not_found(client, server, backend) -> None:
    other = openai.OpenAI(
        base_url=server.url + "/v1", api_key=backend.new_tenant("other"), max_retries=0
    )
    _, sid = _create(other, [{"role": "user", "content": "secret"}])
    with pytest.raises(openai.NotFoundError):
        _create(client, [{"role": "user", "content": "Hi"}], extra_headers={SESSION_HEADER: sid})


def test_reply_that_emits_its_end_token_finishes_with_stop(client, server, key) -> None:
    """The talkative model ends every reply with ``<|end|>`` after REPLY_TOKENS tokens."""
    user = [{"role": "user", "content": "Hello there"}]
    raw = client.chat.completions.with_raw_response.create(
        model="memsvc", messages=user, max_tokens=REPLY_TOKENS + 6
    )
    done, sid = raw.parse(), raw.headers[SESSION_HEADER]
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.completion_tokens == REPLY_TOKENS
    text = done.choices[0].message.content
    assert text and _stored(server, key, sid) == [("user", "Hello there"), ("assistant", text)]
    chunks = list(
        client.chat.completions.create(
            model="memsvc",
            messages=[
                *user,
                {"role": "assistant", "content": text},
                {"role": "user", "content": "Hi"},
            ],
            max_tokens=REPLY_TOKENS + 6,
            stream=True,
            extra_headers={SESSION_HEADER: sid},
        )
    )
    assert chunks[-1].choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed and _stored(server, key, sid)[-1] == ("assistant", streamed)


def test_idempotency_key_replays_the_turn_and_refuses_other_content(client, server, key) -> None:
    """``Idempotency-Key``: a retry resending the same request (its history now one turn
    behind the session) is answered from the committed turn, JSON or streamed."""
    _, sid = _create(client, [{"role": "user", "content": "Hello"}])
    before = _stored(server, key, sid)
    request = [
        *({"role": r, "content": c} for r, c in before),
        {"role": "user", "content": "My name is Ada."},
    ]
    headers = {SESSION_HEADER: sid, IDEMPOTENCY_HEADER: "oai-1"}
    first, _ = _create(client, request, extra_headers=headers)
    again, _ = _create(client, request, extra_headers=headers)
    text = first.choices[0].message.content
    assert text and again.choices[0].message.content == text
    stream = client.chat.completions.create(
        model="memsvc", messages=request, max_tokens=6, stream=True, extra_headers=headers
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == text
    expected = [*before, ("user", "My name is Ada."), ("assistant", text)]
    assert _stored(server, key, sid) == expected
    other = [*request[:-1], {"role": "user", "content": "My name is Bob."}]
    with pytest.raises(openai.ConflictError) as err:
        _create(client, other, extra_headers=headers)
    assert err.value.body["code"] == "idempotency_mismatch"
    with pytest.raises(openai.UnprocessableEntityError):  # a key needs a named session
        _create(client, other, extra_headers={IDEMPOTENCY_HEADER: "oai-2"})
    assert _stored(server, key, sid) == expected
