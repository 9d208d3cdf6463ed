"""The service on int8 weights with bf16-stored states (MEMSVC_WEIGHTS, MEMSVC_STATE_PRECISION).

A live server over Postgres + Redis: ``/readyz`` reports the precision, a session chats
and resumes across a restart (its state stored and loaded under the settings). The
precision is in the model's fingerprint, so the same database served with fp32
weights does not continue the int8 session's state with other weights: it rebuilds
the state once from the stored messages (``usage.state_rebuilt``) and saves it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import make_backend
from server_util import Server
from service_testkit import Backend


@pytest.fixture(scope="module")
def pg_backend(tmp_path_factory, checkpoint: Path) -> Iterator[Backend]:
    yield from make_backend("postgres", tmp_path_factory.mktemp("precision"), checkpoint)


def turn(http: httpx.Client, key: str, sid: str, content: str) -> httpx.Response:
    return http.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": content, "max_tokens": 4},
        headers={"Authorization": f"Bearer {key}"},
    )


def test_int8_weights_and_bf16_states(pg_backend: Backend, tmp_path: Path) -> None:
    key = pg_backend.new_tenant("precision")
    auth = {"Authorization": f"Bearer {key}"}
    env = {**pg_backend.env, "MEMSVC_WEIGHTS": "int8", "MEMSVC_STATE_PRECISION": "bf16"}
    with Server(env, tmp_path / "a") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        model = http.get("/readyz").json()["checks"]["model"]
        assert model["weights"] == "int8"
        sid = http.post("/v1/sessions", json={"user_id": "u"}, headers=auth).json()["id"]
        first = turn(http, key, sid, "Hello there, how are you?")
        assert first.status_code == 200, first.text
        int8_print = model["fingerprint"]
    with Server(env, tmp_path / "b") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        assert http.get("/readyz").json()["checks"]["model"]["fingerprint"] == int8_print
        again = turn(http, key, sid, "Tell me more.")  # resumes from the stored state
        assert again.status_code == 200, again.text
        assert again.json()["usage"]["cached_tokens"] >= first.json()["usage"]["total_tokens"]
    fp32 = {**pg_backend.env, "MEMSVC_WEIGHTS": "fp32"}
    with Server(fp32, tmp_path / "c") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
        model = http.get("/readyz").json()["checks"]["model"]
        assert model["weights"] == "fp32" and model["fingerprint"] != int8_print
        rebuilt = turn(http, key, sid, "Still there?")  # re-prefilled, never refused
        assert rebuilt.status_code == 200, rebuilt.text
        usage = rebuilt.json()["usage"]
        assert usage["state_rebuilt"] is True and usage["cached_tokens"] == 0
        assert usage["rebuilt_tokens"] > 0
        after = turn(http, key, sid, "And now?")  # the rebuilt state was saved: no rebuild
        assert after.status_code == 200, after.text
        assert after.json()["usage"]["state_rebuilt"] is False
        assert after.json()["usage"]["cached_tokens"] > usage["rebuilt_tokens"]
