"""MemsvcStore (a LangGraph BaseStore over HTTP) against a live server (Postgres + Redis,
and SQLite): the BaseStore contract, batch and async, a compiled graph across two
threads of one user, remembered items read by chat, and isolation across tenants,
including namespace prefixes with LIKE wildcards (``%``, ``_``)."""

from __future__ import annotations

import asyncio
import time
from typing import TypedDict

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.store.base import GetOp, InvalidNamespaceError, ListNamespacesOp, PutOp, SearchOp
from server_util import Server
from service_testkit import Client
from sqlalchemy import create_engine, text

from memsvc.langgraph import MemsvcStore


@pytest.fixture
def store(server: Server, api: Client):
    with MemsvcStore(server.url, api.key, index_fields=["text"]) as s:
        yield s


def test_put_get_overwrite_delete(store: MemsvcStore) -> None:
    ns = ("ada", "prefs")
    assert store.get(ns, "theme") is None
    store.put(ns, "theme", {"text": "dark mode", "level": 1})
    first = store.get(ns, "theme")
    assert first.value == {"text": "dark mode", "level": 1} and first.namespace == ns
    time.sleep(0.01)
    store.put(ns, "theme", {"text": "light mode", "level": 2})  # overwrites in place
    second = store.get(ns, "theme")
    assert second.value == {"text": "light mode", "level": 2}
    assert second.created_at == first.created_at and second.updated_at > first.updated_at
    assert store.get(("ada",), "theme") is None  # another collection
    assert store.get(("ada", "prefs", "sub"), "theme") is None
    assert store.get(("bo", "prefs"), "theme") is None  # another user
    store.delete(ns, "theme")
    assert store.get(ns, "theme") is None
    store.delete(ns, "theme")  # deleting a missing key is no error
    store.put(ns, "theme", {"text": "again"})  # a deleted key can be put again
    assert store.get(ns, "theme").value == {"text": "again"}


def test_search_prefix_filter_query_limit_offset(store: MemsvcStore) -> None:
    docs = {
        ("cy", "facts"): {
            "pet": {"text": "My dog is called Rex and loves the beach.", "n": 1, "kind": "pet"},
            "tax": {"text": "The quarterly tax report is due in April.", "n": 2, "kind": "work"},
        },
        ("cy", "facts", "old"): {
            "tea": {"text": "I prefer green tea to coffee.", "n": 3, "kind": "food"},
        },
        ("cy", "other"): {"x": {"text": "unrelated", "n": 4, "kind": "pet"}},
    }
    for ns, items in docs.items():
        for key, value in items.items():
            store.put(ns, key, value)
    under = store.search(("cy", "facts"))
    assert {i.key for i in under} == {"pet", "tax", "tea"}
    assert [i.key for i in under] == ["tea", "tax", "pet"]  # newest update first
    assert {i.key for i in store.search(("cy",))} == {"pet", "tax", "tea", "x"}
    assert [i.key for i in store.search(("cy",), filter={"kind": "pet"})] == ["x", "pet"]
    assert {i.key for i in store.search(("cy",), filter={"n": {"$gte": 2, "$lt": 4}})} == {
        "tax",
        "tea",
    }
    assert store.search(("cy",), filter={"n": {"$gt": "a"}}) == []  # no type error
    hits = store.search(("cy", "facts"), query="What is my pet's name?")
    assert hits[0].key == "pet" and hits[0].score > hits[1].score
    page = store.search(("cy",), limit=2, offset=1)
    assert [i.key for i in page] == [i.key for i in store.search(("cy",))][1:3]
    assert store.search(("cy", "nothing")) == []
    with pytest.raises(InvalidNamespaceError):
        store.search(())  # a store never searches across users


def test_list_namespaces_prefix_suffix_depth(store: MemsvcStore) -> None:
    for ns in [("di", "a", "x"), ("di", "a", "y", "v1"), ("di", "b", "v1"), ("dj", "a")]:
        store.put(ns, "k", {"text": "t"})
    got = set(store.list_namespaces(prefix=("di",)))
    assert got == {("di", "a", "x"), ("di", "a", "y", "v1"), ("di", "b", "v1")}
    assert set(store.list_namespaces(prefix=("di",), suffix=("v1",))) == {
        ("di", "a", "y", "v1"),
        ("di", "b", "v1"),
    }
    assert set(store.list_namespaces(prefix=("di",), max_depth=2)) == {("di", "a"), ("di", "b")}
    assert set(store.list_namespaces(prefix=("*", "a"))) == {
        ("di", "a", "x"),
        ("di", "a", "y", "v1"),
        ("dj", "a"),
    }
    everything = store.list_namespaces(limit=1000)
    assert ("dj", "a") in everything and len(store.list_namespaces(limit=2)) == 2
    assert store.list_namespaces(prefix=("di",), limit=1, offset=1) == [("di", "a", "y", "v1")]


def test_batch_runs_ops_in_order(store: MemsvcStore) -> None:
    ns = ("ed", "notes")
    results = store.batch(
        [
            PutOp(ns, "n1", {"text": "first"}),
            GetOp(ns, "n1"),
            GetOp(ns, "missing"),
            SearchOp(("ed",), limit=5),
            ListNamespacesOp(),
            PutOp(ns, "n1", None),
            GetOp(ns, "n1"),
        ]
    )
    assert results[0] is None and results[1].value == {"text": "first"} and results[2] is None
    assert [i.key for i in results[3]] == ["n1"] and ns in results[4]
    assert results[5] is None and results[6] is None


def test_async_variants(server: Server, api: Client) -> None:
    async def scenario() -> None:
        store = MemsvcStore(server.url, api.key)
        ns = ("fay", "a_b")
        await store.aput(ns, "k", {"v": 1})
        assert (await store.aget(ns, "k")).value == {"v": 1}
        assert [i.key for i in await store.asearch(("fay",), filter={"v": 1})] == ["k"]
        assert await store.alist_namespaces(prefix=("fay",)) == [ns]
        out = await store.abatch([GetOp(ns, "k"), PutOp(ns, "k", None), GetOp(ns, "k")])
        assert out[0].key == "k" and out[2] is None
        await store.adelete(ns, "k")  # missing: fine

    asyncio.run(scenario())


def test_tenants_are_isolated_and_like_wildcards_are_literal(server: Server, api, backend):
    mine = MemsvcStore(server.url, api.key)
    theirs = MemsvcStore(server.url, backend.new_tenant())
    mine.put(("gus", "a_b"), "k1", {"t": 1})
    mine.put(("gus", "acb", "deep"), "k2", {"t": 2})  # '_' would match 'c'
    mine.put(("gus", "50%"), "k3", {"t": 3})
    mine.put(("gus", "50%x", "deep"), "k4", {"t": 4})  # '%' would match 'x", "deep'
    mine.put(("gus", "back\\slash"), "k5", {"t": 5})
    assert [i.key for i in mine.search(("gus", "a_b"))] == ["k1"]
    assert [i.key for i in mine.search(("gus", "50%"))] == ["k3"]
    assert [i.key for i in mine.search(("gus", "back\\slash"))] == ["k5"]
    assert mine.list_namespaces(prefix=("gus", "a_b")) == [("gus", "a_b")]
    assert mine.list_namespaces(prefix=("gus", "50%")) == [("gus", "50%")]
    # the other tenant, same user and names: sees nothing, changes nothing
    assert theirs.get(("gus", "a_b"), "k1") is None
    assert theirs.search(("gus",)) == [] and theirs.search(("gus", "%")) == []
    assert theirs.list_namespaces() == [] and theirs.list_namespaces(prefix=("%",)) == []
    theirs.delete(("gus", "a_b"), "k1")
    theirs.put(("gus", "a_b"), "k1", {"t": "theirs"})
    assert mine.get(("gus", "a_b"), "k1").value == {"t": 1}
    assert theirs.get(("gus", "a_b"), "k1").value == {"t": "theirs"}
    mine.close(), theirs.close()


def test_bad_input_is_an_error_not_a_crash(store: MemsvcStore, api: Client) -> None:
    from memsvc.client import MemsvcError

    with pytest.raises(InvalidNamespaceError):
        store.put(("bad user",), "k", {"v": 1})
    with pytest.raises(MemsvcError) as err:
        store.put(("hal", *["n"] * 17), "k", {"v": 1})  # too deep
    assert err.value.status == 422
    with pytest.raises(MemsvcError) as err:
        store.put(("hal",), "k", {"blob": "x" * 70_000})  # over the body / value limit
    assert err.value.status in (413, 422)
    base = "/v1/users/hal/items"
    for body in (
        {},
        {"key": "k"},
        {"key": "", "value": {}},
        {"key": "k", "value": []},
        {"key": "k", "value": {}, "collection": [""]},
        {"key": "k", "value": {}, "extra": 1},
    ):
        assert api("PUT", base, json=body).status_code == 422, body
    assert api("GET", base).status_code == 422  # no key
    assert api("GET", base, params={"key": "k", "collection": "x" * 201}).status_code == 422
    bad = {"filter": {"n": {"$regex": "."}}}
    assert api("POST", base + "/search", json=bad).status_code == 422
    assert api("POST", base + "/search", json={"limit": 0}).status_code == 422
    assert api("POST", "/v1/items/namespaces", json={"max_depth": 0}).status_code == 422


def test_remembered_items_are_memories_that_chat_reads(
    server: Server, api: Client, backend
) -> None:
    with MemsvcStore(server.url, api.key, index_fields=["text"], remember=True) as store:
        store.put(("ivo", "facts"), "locker", {"text": "My locker code is 4711.", "src": "x"})
    (m,) = api("GET", "/v1/users/ivo/memories").json()["memories"]
    assert m["text"] == "My locker code is 4711." and m["key"] == "locker" and m["slots"] > 0
    sid = api("POST", "/v1/sessions", json={"user_id": "ivo"}).json()["id"]
    r = api("POST", f"/v1/sessions/{sid}/messages", json={"content": "What is my locker code?"})
    assert r.status_code == 200, r.text
    assert api("GET", f"/v1/memories/{m['id']}").json()["reads"] > 0
    with MemsvcStore(server.url, api.key, remember=True) as store:
        store.put(("ivo", "facts"), "locker", {"text": "now 1234"}, index=["text"])
        got = api("GET", f"/v1/memories/{m['id']}").json()
        assert got["text"] == "now 1234" and got["slots"] > 0  # old slots replaced
        store.delete(("ivo", "facts"), "locker")
        assert api("GET", f"/v1/memories/{m['id']}").status_code == 404
        store.put(("ivo", "facts"), "pin", {"text": "PIN 2468"})
        pin = store.get(("ivo", "facts"), "pin")
        mems = api("GET", "/v1/users/ivo/memories").json()["memories"]
        (row,) = [x for x in mems if x["key"] == "pin"]
        assert api("DELETE", f"/v1/memories/{row['id']}").status_code == 200  # the memory API
        assert pin is not None and store.get(("ivo", "facts"), "pin") is None
    engine = create_engine(backend.database_url)
    with engine.connect() as conn:  # tombstones keep no document or text
        q = text("SELECT value, text FROM memories WHERE id IN (:a, :b)")
        rows = conn.execute(q, {"a": m["id"], "b": row["id"]}).all()
    engine.dispose()
    assert rows == [(None, None), (None, None)]


class State(TypedDict):
    user: str
    message: str
    answer: str


def remember_or_recall(state: State, runtime: Runtime) -> dict:
    """Store "my name is X" per user; answer "what is my name" from the store."""
    ns = (state["user"], "profile")
    text = state["message"]
    if text.lower().startswith("my name is "):
        runtime.store.put(ns, "name", {"text": text, "name": text[len("my name is ") :]})
        return {"answer": "noted"}
    item = runtime.store.get(ns, "name")
    return {"answer": item.value["name"] if item else "I don't know"}


def test_a_compiled_graph_shares_the_store_across_threads(server: Server, api: Client) -> None:
    builder = StateGraph(State)
    builder.add_node("memory", remember_or_recall)
    builder.add_edge(START, "memory")
    builder.add_edge("memory", END)
    with MemsvcStore(server.url, api.key, index_fields=["text"]) as store:
        graph = builder.compile(checkpointer=InMemorySaver(), store=store)
        one = {"configurable": {"thread_id": "thread-1"}}
        two = {"configurable": {"thread_id": "thread-2"}}
        before = graph.invoke({"user": "jo", "message": "what is my name?", "answer": ""}, two)
        assert before["answer"] == "I don't know"
        graph.invoke({"user": "jo", "message": "my name is Joanna", "answer": ""}, one)
        after = graph.invoke({"user": "jo", "message": "what is my name?", "answer": ""}, two)
        assert after["answer"] == "Joanna"
        other = graph.invoke({"user": "kim", "message": "what is my name?", "answer": ""}, two)
        assert other["answer"] == "I don't know"
        assert [i.key for i in store.search(("jo",), query="name")] == ["name"]
