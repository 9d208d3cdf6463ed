"""LangChain adapters against a live server: langchain-tests' ChatModelIntegrationTests
and RetrieversIntegrationTests, plus the chat history and the memory-slot retriever.

One backend (PostgreSQL + Redis) keeps the suites inside the CI budget; the OpenAI
layer underneath runs on both backends in test_openai.py. The adapters read
MEMSVC_BASE_URL / MEMSVC_API_KEY, which a module fixture points at the live server.
"""

from __future__ import annotations

import uuid

import pytest
from langchain_core.documents import Document
from langchain_core.messages import AIMessage, HumanMessage
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    RetrieversIntegrationTests,
)
from server_util import ADMIN_KEY
from talkative_model import REPLY_TOKENS, talkative_server

from memsvc.cli.tenants import tenant_create
from memsvc.client import MemsvcClient
from memsvc.langchain import ChatMemsvc, MemsvcChatMessageHistory, MemsvcRetriever

pytestmark = [
    pytest.mark.parametrize("backend", ["postgres"], indirect=True, scope="session"),
    pytest.mark.asyncio,
    pytest.mark.filterwarnings("ignore:The test <Function:pytest.PytestWarning"),
]

FACTS = [
    "The capital of Freedonia is Glimmerstadt, a city of bridges.",
    "Freedonia exports glass, tea and clockwork toys.",
    "The river Lum runs through Glimmerstadt and freezes every winter.",
    "Ada keeps bees on the roof of the Freedonia library.",
]


@pytest.fixture(scope="module")
def server(backend, tmp_path_factory, pytestconfig):
    """`memsvc serve` with the talkative checkpoint on the shared backend."""
    return talkative_server(backend, tmp_path_factory, pytestconfig)


@pytest.fixture(scope="module")
def tenant(backend) -> tuple[str, str]:
    """(tenant id, API key) of the tenant every adapter in this module uses."""
    return tenant_create(f"lc-{uuid.uuid4().hex[:6]}", backend.settings())


@pytest.fixture(scope="module", autouse=True)
def memsvc_env(server, tenant):
    """Point the adapters' environment defaults at the live server; add documents."""
    with MemsvcClient(server.url, tenant[1]) as client:
        for text in FACTS:
            client.add_document(text, title=text[:20])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMSVC_BASE_URL", server.url)
        mp.setenv("MEMSVC_API_KEY", tenant[1])
        yield


class TestChatMemsvcIntegration(ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatMemsvc]:
        return ChatMemsvc

    @property
    def chat_model_params(self) -> dict:
        return {"model": "memsvc", "max_tokens": 8}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": ["cache_read_input"], "stream": ["cache_read_input"]}

    def invoke_with_cache_read_input(self, *, stream: bool = False) -> AIMessage:
        """A second turn of one session: its history is read from the persisted state."""
        sid = MemsvcChatMessageHistory().session_id
        model = ChatMemsvc(session_id=sid, max_tokens=4)
        model.invoke("Hello there")
        if not stream:
            return model.invoke("How are you?")
        full = None
        for chunk in model.stream("How are you?"):
            full = chunk if full is None else full + chunk
        return full


class TestMemsvcRetrieverIntegration(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[MemsvcRetriever]:
        return MemsvcRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"threshold": -1.0}

    @property
    def retriever_query_example(self) -> str:
        return "What is the capital of Freedonia?"


def test_session_continues_and_reports_cache_reads() -> None:
    history = MemsvcChatMessageHistory()
    model = ChatMemsvc(session_id=history.session_id, max_tokens=4)
    first = model.invoke([HumanMessage("My name is Ada.")])
    assert first.usage_metadata["input_token_details"]["cache_read"] == 0
    assert first.response_metadata["session_id"] == history.session_id
    second = model.invoke([HumanMessage("My name is Ada."), first, HumanMessage("Hi?")])
    assert second.usage_metadata["input_token_details"]["cache_read"] > 0
    texts = [(m.type, m.content) for m in history.messages]
    assert texts == [
        ("human", "My name is Ada."),
        ("ai", first.content),
        ("human", "Hi?"),
        ("ai", second.content),
    ]


def test_history_accepts_held_messages_refuses_others_and_clears() -> None:
    history = MemsvcChatMessageHistory()
    reply = ChatMemsvc(session_id=history.session_id, max_tokens=3).invoke("Hello")
    history.add_messages([HumanMessage("Hello"), AIMessage(reply.content)])
    assert len(history.messages) == 2
    with pytest.raises(ValueError, match="does not hold"):
        history.add_user_message("never said")
    old = history.session_id
    history.clear()
    assert history.session_id != old and history.messages == []
    with MemsvcClient() as client, pytest.raises(Exception, match="404"):
        client.get_session(old)


async def test_async_stream_on_a_session() -> None:
    sid = MemsvcChatMessageHistory().session_id
    model = ChatMemsvc(session_id=sid, max_tokens=5)
    chunks = [c async for c in model.astream("Hello")]
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata["output_tokens"] == 5
    stored = MemsvcChatMessageHistory(session_id=sid).messages
    assert stored[-1].content == "".join(c.content for c in chunks)


def test_documents_retriever_ranks_the_fact_first() -> None:
    docs = MemsvcRetriever(k=2, threshold=-1.0).invoke("Which river freezes in winter?")
    assert len(docs) == 2 and all(isinstance(d, Document) for d in docs)
    assert "Lum" in docs[0].page_content and docs[0].metadata["source"] == "documents"


def test_memory_retriever_reads_slot_provenance(server, tenant) -> None:
    history = MemsvcChatMessageHistory(user_id="ada")
    ChatMemsvc(session_id=history.session_id, max_tokens=3).invoke("I keep bees on the roof.")
    retriever = MemsvcRetriever(
        source="memory", api_key=ADMIN_KEY, tenant_id=tenant[0], k=3, session_id=history.session_id
    )
    docs = retriever.invoke("who keeps bees?")
    assert docs, "the turn wrote no memory slot"
    assert all(d.metadata["tenant_id"] == tenant[0] for d in docs)
    assert all(d.metadata["session_id"] == history.session_id for d in docs)
    assert "bees" in docs[0].page_content
    other = MemsvcRetriever(source="memory", api_key=ADMIN_KEY, tenant_id=str(uuid.uuid4()))
    assert other.invoke("bees") == []


async def test_a_reply_that_ends_with_its_end_token_reports_stop() -> None:
    """The model emits ``<|end|>`` after REPLY_TOKENS tokens: invoke and stream say "stop";
    a ``max_tokens`` below that says "length"."""
    sid = MemsvcChatMessageHistory().session_id
    model = ChatMemsvc(session_id=sid, max_tokens=REPLY_TOKENS + 6)
    reply = model.invoke("Hello")
    assert reply.content and reply.response_metadata["finish_reason"] == "stop"
    assert reply.usage_metadata["output_tokens"] == REPLY_TOKENS
    chunks = [c async for c in model.astream("Again")]
    finishes = [c.response_metadata.get("finish_reason") for c in chunks]
    assert "stop" in finishes and "length" not in finishes
    assert chunks[-1].usage_metadata["output_tokens"] == REPLY_TOKENS
    short = ChatMemsvc(session_id=sid, max_tokens=REPLY_TOKENS - 1).invoke("Once more")
    assert short.response_metadata["finish_reason"] == "length"
    stored = MemsvcChatMessageHistory(session_id=sid).messages
    assert [m.content for m in stored[1::2]] == [
        reply.content,
        "".join(c.content for c in chunks),
        short.content,
    ]
