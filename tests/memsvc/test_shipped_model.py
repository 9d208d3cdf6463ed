"""The shipped default model: small, loads, generates, and remembers across sessions.

These run on the checkpoint committed at ``memsvc/models/default/`` (what `memsvc serve`
loads when nothing is configured), through a live server on the embedded default
(SQLite, no Redis), as a new user gets it from the README's two commands. The
≥ 200-fact evaluation is ``memsvc bench recall`` (docs/model-card/recall.md); this is
its small-scale run.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from memsvc.bench._live import LiveServer
from memsvc.bench.recall import run as recall_run
from memsvc.config import DEFAULT_MODEL_DIR, Settings
from memsvc.runtime import ModelRuntime

MAX_BYTES = 40 * 1024 * 1024


def test_shipped_checkpoint_is_complete_and_small() -> None:
    files = {p.name: p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir() if p.is_file()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(files)
    assert sum(files.values()) <= MAX_BYTES, files
    assert Settings().resolved_model_dir == DEFAULT_MODEL_DIR  # the default when unset


def test_shipped_checkpoint_loads_and_generates() -> None:
    rt = ModelRuntime.load(DEFAULT_MODEL_DIR, "cpu")
    tok = rt.tokenizer
    ids = tok.render_turn({"role": "user", "content": "Hi! How are you today?"})
    ids += tok.generation_prompt()

    def reply() -> str:
        out = rt.prefill(ids, None, [len(ids)])
        state, logits, got = out.state, out.logits, []
        for _ in range(16):
            nxt = int(logits.reshape(-1)[-logits.shape[-1] :].argmax())
            if nxt == tok.end_id:
                break
            got.append(nxt)
            logits, state = rt.step([nxt], state)
        return tok.decode(got)

    first = reply()
    assert first.strip() and any(c.isalpha() for c in first), first
    assert reply() == first  # greedy: the same state gives the same words


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory) -> LiveServer:
    """`memsvc serve` exactly as a user starts it: no model, database or Redis set."""
    work = tmp_path_factory.mktemp("shipped")
    env = {"MEMSVC_DATA_DIR": str(work / "data"), "MEMSVC_DEVICE": "cpu"}
    with LiveServer(env, work, module_args=("-m", "memsvc.cli", "serve")) as server:
        yield server


def test_serve_with_nothing_set_chats_on_the_shipped_model(shipped_server: LiveServer) -> None:
    ready = httpx.get(shipped_server.url + "/readyz", timeout=30).json()
    assert ready["status"] == "ready", ready
    from memsvc.bench._live import new_tenant_key

    key = new_tenant_key({**shipped_server.env, "MEMSVC_MODEL_DIR": str(DEFAULT_MODEL_DIR)})
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=shipped_server.url, timeout=120, headers=auth) as http:
        sid = http.post("/v1/sessions", json={"user_id": "newcomer"}).json()["id"]
        r = http.post(f"/v1/sessions/{sid}/messages", json={"content": "Hello! How are you?"})
        assert r.status_code == 200, r.text
        assert r.json()["message"]["content"].strip()


def test_cross_session_recall_and_forgetting_over_rest(tmp_path: Path) -> None:
    """Held-out facts told in one session are recalled in a new one with memory, not
    without; a 'please forget' makes them unrecallable (small-scale bench recall)."""
    s = recall_run(tmp_path, None, 16, 8, 3, 24, 8, None, None)
    assert s["recall_memory_on"] >= 0.75, s
    assert s["recall_memory_off"] <= 0.15, s
    assert s["forgotten"] >= 0.75 and s["forget_slot_removed"] >= 0.75, s
    assert (tmp_path / "recall.md").exists()
