"""The shipped default model: it loads, chats, and its memory works across sessions.

The small-scale REST recall run here is the CI form of ``memsvc bench recall`` (whose
>= 200-fact result is committed in docs/model-card/); it plays held-out facts through
a live server on the real Postgres and Redis.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
import redis
import torch
from conftest import _pg_database
from server_util import Server
from service_testkit import REDIS_URL

from memsvc.bench.recall import run as recall_run
from memsvc.config import DEFAULT_MODEL_DIR
from retnet_core.checkpoint import load_pretrained, tokenizer_path
from retnet_core.generate import SamplingParams, generate
from retnet_core.tokenizer import ChatTokenizer, Message

MAX_BYTES = 40 * 1024 * 1024


def test_shipped_checkpoint_is_small_complete_and_generates() -> None:
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert sum(files.values()) <= MAX_BYTES, files
    model = load_pretrained(DEFAULT_MODEL_DIR)
    assert model.config.memory_layers, "the default model has a Retention (memory) layer"
    tok = ChatTokenizer.load(tokenizer_path(DEFAULT_MODEL_DIR))
    prompt = tok.render([Message("user", "Hi! How was your weekend?")]).ids
    prompt = prompt + tok.generation_prompt()
    torch.manual_seed(0)
    gen = generate(model, prompt, params=SamplingParams(max_new_tokens=24, temperature=0.0))
    ids = list(gen)
    text = tok.decode(ids, skip_special=True).strip()
    assert len(ids) >= 2 and text, ids
    assert sum(c.isalpha() for c in text) >= 0.5 * len(text), text  # words, not noise


def test_memsvc_serve_with_nothing_set_chats(tmp_path: Path) -> None:
    """`memsvc serve` exactly as the README runs it: no model setting, SQLite default."""
    env = {"MEMSVC_DATA_DIR": str(tmp_path / "data"), "MEMSVC_ADMIN_KEY": "k"}
    server = Server(env, tmp_path, module_args=("-m", "memsvc.cli.main", "serve"))
    with server:
        from memsvc.bench._live import new_tenant_key

        key = new_tenant_key({**env, "MEMSVC_MODEL_DIR": str(DEFAULT_MODEL_DIR)})
        auth = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/v1/models", headers=auth).status_code == 200
            sid = http.post("/v1/sessions", json={"user_id": "u"}, headers=auth).json()["id"]
            r = http.post(
                f"/v1/sessions/{sid}/messages",
                json={"content": "Hello, how are you today?", "max_tokens": 16},
                headers=auth,
            )
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["message"]["content"].strip(), reply
    assert reply["usage"]["completion_tokens"] >= 1


@pytest.fixture
def pg_url() -> str:
    yield from _pg_database()


def test_cross_session_recall_and_forget_over_rest(tmp_path: Path, pg_url: str) -> None:
    """Held-out facts told in one session are recalled in a new one; 'forget' removes them."""
    prefix = f"memsvc-recall-test:{uuid.uuid4().hex[:12]}:"
    try:
        summary = recall_run(
            tmp_path, None, 16, 8, 3, 24, 8, pg_url, REDIS_URL, redis_prefix=prefix
        )
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=prefix + "*", count=500))
        if keys:
            client.delete(*keys)
        client.close()
    print(summary)  # shown with -s / on failure: the margins
    assert summary["facts"] == 16 and summary["forgets"] == 8
    assert summary["slot_written_on"] == 1.0, summary
    assert summary["recall_memory_on"] >= 0.6, summary
    assert summary["recall_memory_off"] <= 0.15, summary
    assert summary["forgotten"] >= 0.6, summary
    assert summary["forget_slot_removed"] >= 0.6, summary
    assert (tmp_path / "recall.md").is_file() and (tmp_path / "recall.png").is_file()
