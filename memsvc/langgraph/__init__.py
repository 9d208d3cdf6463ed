"""LangGraph adapter for memsvc (optional extra ``langgraph``): :class:`MemsvcStore`, a
``BaseStore`` over the keyed-memory API of a running server."""

from memsvc.langgraph.store import MemsvcStore

__all__ = ["MemsvcStore"]
