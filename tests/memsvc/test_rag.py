"""Documents and RAG: passages retrieved, fed with aligned boundaries, snapshots reused."""

from __future__ import annotations

from service_testkit import Client
from test_chat import new_session, turn

FACT_DOC = (
    "Freedonia is a small country in the mountains.\n\n"
    "The capital of Freedonia is Glimmerstadt. Glimmerstadt is famous for its bridges.\n\n"
    "Cats are mammals. Dogs bark loudly at night."
)
QUESTION = "What is the capital of Freedonia?"


def add_doc(api: Client, text: str = FACT_DOC, **kw) -> dict:
    r = api("POST", "/v1/documents", json={"text": text, "title": "facts", **kw})
    assert r.status_code == 201, r.text
    return r.json()


def test_document_fact_is_retrieved_and_fed_on_passage_boundaries(api: Client, http) -> None:
    doc = add_doc(api)
    assert doc["passages"] >= 2
    hits = api("POST", "/v1/search", json={"query": QUESTION}).json()["data"]
    fact = [h for h in hits if "Glimmerstadt" in h["text"]]
    assert fact and fact[0]["document_id"] == doc["id"]
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)

    sid = new_session(api, memory_scope="none")
    out = turn(api, sid, QUESTION, max_tokens=4)
    fed = out["passages"]
    assert fact[0]["passage_id"] in [p["passage_id"] for p in fed]
    # every passage ends on a chunk boundary: boundaries are the running sums of lengths
    running = 0
    for p in fed:
        running += p["tokens"]
        assert p["boundary"] == running
    assert out["usage"]["passage_tokens"] == running
    # the passages are in the persisted state: history = passages + turn + reply + <|end|>
    session = api("GET", f"/v1/sessions/{sid}").json()
    usage = out["usage"]
    assert session["token_count"] == usage["prompt_tokens"] + usage["completion_tokens"] + 1

    # another session starting from the same (empty) state reuses the exact snapshots
    again = turn(api, new_session(api, memory_scope="none"), QUESTION, max_tokens=4)
    assert again["usage"]["snapshot_hits"] == len(fed) and again["usage"]["snapshot_misses"] == 0
    assert all(p["snapshot_hit"] for p in again["passages"])
    metrics = http.get("/metrics").text
    assert 'memsvc_snapshot_lookups_total{result="hit"}' in metrics

    # opting out of documents feeds nothing
    plain = turn(api, new_session(api), QUESTION, max_tokens=4, use_documents=False)
    assert plain["passages"] == [] and plain["usage"]["passage_tokens"] == 0


def test_documents_list_delete_and_user_scope(api: Client) -> None:
    shared = add_doc(api)
    private = add_doc(
        api, "Bob's locker code is 9931. Nobody else knows it.", scope="user", user_id="bob"
    )
    listed = {d["id"] for d in api("GET", "/v1/documents").json()["data"]}
    assert {shared["id"], private["id"]} <= listed

    q = {"query": "What is Bob's locker code?", "threshold": 0.2}
    as_bob = api("POST", "/v1/search", json={**q, "user_id": "bob"}).json()["data"]
    as_eve = api("POST", "/v1/search", json={**q, "user_id": "eve"}).json()["data"]
    assert private["id"] in [h["document_id"] for h in as_bob]
    assert private["id"] not in [h["document_id"] for h in as_eve]

    assert api("DELETE", f"/v1/documents/{shared['id']}").status_code == 204
    assert api("DELETE", f"/v1/documents/{shared['id']}").status_code == 404
    hits = api("POST", "/v1/search", json={"query": QUESTION, "threshold": -1}).json()["data"]
    assert shared["id"] not in [h["document_id"] for h in hits]
    out = turn(api, new_session(api), QUESTION, max_tokens=2)
    assert shared["id"] not in [p["document_id"] for p in out["passages"]]


def test_markdown_headings_start_new_passages(api: Client) -> None:
    md = "# Intro\nFreedonia is small.\n# Capital\nThe capital is Glimmerstadt."
    doc = add_doc(api, md, format="markdown")
    assert doc["passages"] == 2
