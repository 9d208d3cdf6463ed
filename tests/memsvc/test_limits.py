"""Per-tenant usage and limits end to end over HTTP (Postgres + Redis, and SQLite).

- ``GET /admin/tenants/{id}/usage`` counts what was done (tokens in and out equal the
  sum of the turns' usage; turns; live memories; stored bytes), leaves other tenants'
  usage alone, is the same from another replica (it is read from the database), and
  the per-tenant metrics agree with it;
- a second server on the same data runs with small limits (requests per minute,
  concurrent turns, memories per user): over each a request gets 429 with
  ``Retry-After``, and a refused turn or write leaves nothing behind.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from server_util import ADMIN_KEY, Server
from service_testkit import REDIS_URL, Backend, Client

from memsvc.cli.tenants import tenant_create

RPM, TURNS, MEMORIES = 20, 1, 2
LIMITED = {
    "MEMSVC_LIMIT_REQUESTS_PER_MINUTE": str(RPM),
    "MEMSVC_LIMIT_CONCURRENT_TURNS": str(TURNS),
    "MEMSVC_LIMIT_MEMORIES_PER_USER": str(MEMORIES),
}


@pytest.fixture(scope="module")
def limited(backend: Backend, tmp_path_factory) -> Iterator[httpx.Client]:
    """A second server on the backend's data, with small per-tenant limits."""
    env, work = {**backend.env, **LIMITED}, tmp_path_factory.mktemp("limited")
    with Server(env, work) as srv, httpx.Client(base_url=srv.url, timeout=120) as client:
        yield client


def new_tenant(http: httpx.Client, backend: Backend) -> tuple[str, Client]:
    """(tenant id, a client with its key) of a brand-new tenant."""
    tid, key = tenant_create(f"limits-{uuid.uuid4().hex[:8]}", backend.settings())
    return tid, Client(http, key)


def session(api: Client, **body) -> str:
    r = api("POST", "/v1/sessions", json=body)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def turn(api: Client, sid: str, content: str, max_tokens: int = 4) -> dict:
    r = api(
        "POST", f"/v1/sessions/{sid}/messages", json={"content": content, "max_tokens": max_tokens}
    )
    assert r.status_code == 200, r.text
    return r.json()


def usage(http: httpx.Client, tid: str) -> dict:
    r = http.get(f"/admin/tenants/{tid}/usage", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text
    return r.json()


def admin_session(http: httpx.Client, sid: str) -> dict:
    r = http.get(f"/admin/sessions/{sid}", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 200, r.text
    return r.json()


def metric(http: httpx.Client, name: str, **labels: str) -> float:
    """A sample's value on ``/metrics`` (0 when absent)."""
    for family in text_string_to_metric_families(http.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def assert_refused(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    assert int(r.headers["Retry-After"]) >= 1


# ---- usage ------------------------------------------------------------------------------
def test_usage_counts_what_was_done(http, limited, backend: Backend) -> None:
    tid, api = new_tenant(http, backend)
    other_tid, other = new_tenant(http, backend)
    turn(other, session(other, user_id="olga"), "I keep bees on the roof")
    before_other = usage(http, other_tid)
    assert usage(http, tid)["turns"] == 0 and usage(http, tid)["tokens_in"] == 0

    sid = session(api, user_id="ann", system_prompt="You are terse.")
    turns = [turn(api, sid, text) for text in ("My cat is Tom", "I like rain", "Hi again")]
    r = api("POST", "/v1/users/ann/memories", json={"text": "Ann is left-handed", "force": True})
    assert r.status_code == 200 and r.json()["status"] == "stored", r.text
    explicit = r.json()["memory"]["id"]

    got = usage(http, tid)
    assert got["turns"] == 3 and got["messages"] == 6 and got["sessions"] == 1
    assert got["tokens_in"] == sum(t["usage"]["prompt_tokens"] for t in turns)
    assert got["tokens_out"] == sum(t["usage"]["completion_tokens"] for t in turns)
    listed = api("GET", "/v1/users/ann/memories", params={"limit": 200}).json()["memories"]
    assert got["memories"] == len(listed) >= 1
    stored = got["stored_bytes"]
    texts = [m["content"] for t in turns for m in (t["message"], t["user_message"])]
    assert stored["messages"] == sum(len(x) for x in texts)
    assert stored["states"] > 0 and stored["slots"] > 0 and stored["memories"] > 0
    assert stored["total"] == sum(v for k, v in stored.items() if k != "total")
    assert usage(http, other_tid) == before_other  # another tenant's usage is untouched
    assert usage(limited, tid) == {**got, "limits": usage(limited, tid)["limits"]}  # any replica

    assert api("DELETE", f"/v1/memories/{explicit}").status_code == 200
    assert usage(http, tid)["memories"] == got["memories"] - 1

    # this process's per-tenant metrics agree with the database's figures
    assert metric(http, "memsvc_tenant_turns_total", tenant=tid) == 3
    assert (
        metric(http, "memsvc_tenant_tokens_total", tenant=tid, direction="in") == got["tokens_in"]
    )
    assert (
        metric(http, "memsvc_tenant_tokens_total", tenant=tid, direction="out") == got["tokens_out"]
    )
    assert metric(http, "memsvc_tenant_memories", tenant=tid) == got["memories"] - 1
    assert metric(http, "memsvc_tenant_stored_bytes", tenant=tid) > 0


def test_usage_needs_the_admin_key_and_a_known_tenant(http, backend: Backend) -> None:
    tid, api = new_tenant(http, backend)
    path = f"/admin/tenants/{tid}/usage"
    assert http.get(path).status_code == 401
    assert http.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api("GET", path).status_code == 401  # a tenant key is not the admin key
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    r = http.get(f"/admin/tenants/{uuid.uuid4().hex}/usage", headers=admin)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert http.get(path, headers=admin).json()["limits"] == {
        "requests_per_minute": None,
        "concurrent_turns": None,
        "memories_per_user": None,
    }  # the default: no limits


# ---- limits -----------------------------------------------------------------------------
def test_requests_per_minute(limited, backend: Backend) -> None:
    left = 60 - time.time() % 60
    if left < 15:  # the fixed window must not roll over mid-test
        time.sleep(left + 0.5)
    tid, api = new_tenant(limited, backend)
    sid = session(api)
    for _ in range(RPM - 1):
        assert api("GET", "/v1/sessions").status_code == 200
    r = api("POST", f"/v1/sessions/{sid}/messages", json={"content": "hello", "max_tokens": 4})
    assert_refused(r)
    assert int(r.headers["Retry-After"]) <= 60
    kept = admin_session(limited, sid)  # admin routes are not the tenant's requests
    assert kept["message_count"] == 0 and kept["version"] == 0  # the refused turn left nothing
    assert usage(limited, tid)["turns"] == 0
    assert api("GET", "/v1/sessions").status_code == 429
    _, fresh = new_tenant(limited, backend)
    assert fresh("GET", "/v1/sessions").status_code == 200  # the limit is per tenant
    assert metric(limited, "memsvc_tenant_rate_limited_total", tenant=tid) >= 2


def test_concurrent_turns_burst(limited, backend: Backend) -> None:
    """Turns of one tenant started together: beyond one at a time they get 429, and
    each refused turn left its session untouched."""
    _, api = new_tenant(limited, backend)
    sids = [session(api) for _ in range(4)]
    committed = dict.fromkeys(sids, 0)
    refused = 0
    for _ in range(2):  # two bursts at most (13 of the tenant's 20 requests)
        gate = threading.Barrier(len(sids))
        answers: dict[str, httpx.Response] = {}

        def post(sid: str, gate=gate, answers=answers) -> None:
            gate.wait()
            body = {"content": "tell me a long story", "max_tokens": 32}
            answers[sid] = api("POST", f"/v1/sessions/{sid}/messages", json=body)

        threads = [threading.Thread(target=post, args=(sid,)) for sid in sids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for sid, r in answers.items():
            if r.status_code == 429:
                assert_refused(r)
                refused += 1
            else:
                assert r.status_code == 200, r.text
                committed[sid] += 1
        if refused:
            break
    assert refused and sum(committed.values()) >= 1
    for sid in sids:  # a refused turn left its session as it was
        kept = admin_session(limited, sid)
        assert kept["version"] == committed[sid] and kept["message_count"] == 2 * committed[sid]


def test_concurrent_turns_held_on_another_replica(limited, backend: Backend) -> None:
    """With Redis, a place held by any replica counts: a turn finds none free, 429. The
    embedded backend (no Redis) counts in process: the same key in Redis is not its own."""
    tid, api = new_tenant(limited, backend)
    sid = session(api)
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{backend.redis_prefix or 'memsvc:'}limit:turns:{tid}"
    try:
        client.zadd(key, {"another-replica": time.time() * 1000 + 60_000})
        if backend.redis_prefix is None:  # a server without Redis never reads that key
            assert turn(api, sid, "hi")["usage"]["completion_tokens"] >= 1
            assert client.zcard(key) == 1
            return
        r = api("POST", f"/v1/sessions/{sid}/messages", json={"content": "hi", "max_tokens": 4})
        assert_refused(r)
        kept = admin_session(limited, sid)
        assert kept["message_count"] == 0 and kept["version"] == 0
        client.zrem(key, "another-replica")
        assert turn(api, sid, "hi")["usage"]["completion_tokens"] >= 1
        assert client.zcard(key) == 0  # the finished turn gave its place back
    finally:
        client.delete(key)
        client.close()


def test_memories_per_user(limited, backend: Backend) -> None:
    tid, api = new_tenant(limited, backend)

    def write(user: str, text: str) -> httpx.Response:
        return api("POST", f"/v1/users/{user}/memories", json={"text": text, "force": True})

    for text in ("Bo likes jazz", "Bo has a red bike"):
        assert write("bo", text).json()["status"] == "stored"
    assert_refused(write("bo", "Bo was born in Oslo"))
    listed = api("GET", "/v1/users/bo/memories").json()["memories"]
    assert sorted(m["text"] for m in listed) == ["Bo has a red bike", "Bo likes jazz"]
    assert write("bo", "Bo likes jazz").json()["status"] == "merged"  # adds no memory
    r = api("PUT", "/v1/users/bo/items", json={"collection": ["c"], "key": "k", "value": {}})
    assert_refused(r)
    assert write("cy", "Cy likes tea").json()["status"] == "stored"  # the limit is per user
    # chat of a user at the limit still answers, and writes no memory
    full = turn(api, session(api, user_id="bo"), "My favourite colour is teal")
    assert full["usage"]["memory_limited"] is True and full["usage"]["memory_writes"] == 0
    pair = [
        {"role": "user", "content": "My favourite colour is teal"},
        {"role": "assistant", "content": "Noted."},
    ]
    r = api("POST", f"/v1/sessions/{session(api, user_id='bo')}/transcript", json={"turns": pair})
    assert r.status_code == 200 and r.json()["memory_writes"] == 0, r.text  # imports alike
    free = turn(api, session(api, user_id="cy"), "My favourite colour is teal")
    assert free["usage"]["memory_limited"] is False and free["usage"]["memory_writes"] >= 1
    bo = api("GET", "/v1/users/bo/memories").json()["memories"]
    cy = api("GET", "/v1/users/cy/memories").json()["memories"]
    assert len(bo) == MEMORIES and len(cy) >= 1
    assert usage(limited, tid)["memories"] == len(bo) + len(cy)
    assert usage(limited, tid)["limits"] == {
        "requests_per_minute": RPM,
        "concurrent_turns": TURNS,
        "memories_per_user": MEMORIES,
    }
