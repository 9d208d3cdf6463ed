"""LangChain adapters for memsvc (langchain-core 1.x), all over HTTP to a running server.

- :class:`ChatMemsvc`: chat model (sync/async, invoke/stream, usage metadata).
- :class:`MemsvcChatMessageHistory`: a session's messages as a chat history.
- :class:`MemsvcRetriever`: document passages or memory-slot provenance.

The LangGraph store is :class:`memsvc.langgraph.MemsvcStore` (extra ``langgraph``).
"""

from memsvc.langchain.chat import ChatMemsvc
from memsvc.langchain.history import MemsvcChatMessageHistory
from memsvc.langchain.retriever import MemsvcRetriever

__all__ = ["ChatMemsvc", "MemsvcChatMessageHistory", "MemsvcRetriever"]
