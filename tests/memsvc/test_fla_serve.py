"""A converted fla RetNet serves: `memsvc convert fla` then `memsvc serve` with
MEMSVC_MODEL_DIR on the result, chatting through REST on the real Postgres and Redis.

The converted model is a base model with no Retention Layer. Sessions, resume (also
after a restart), RAG passages and their snapshots work; memory is off and says so:
``/readyz`` reports it, every turn's usage has ``memory_enabled: false``, and writing a
memory is a 409 ``memory_off`` that names the reason.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from conftest import make_backend
from server_util import Server
from service_testkit import Client
from test_chat import new_session, turn
from test_rag import FACT_DOC, QUESTION, add_doc

ROOT = Path(__file__).resolve().parents[2]
SERVE = ("-m", "memsvc.cli.main", "serve")


def _tiny_fla():
    """tests/retnet_core/tiny_fla.py, loaded by path (that folder has its own conftest)."""
    path = ROOT / "tests" / "retnet_core" / "tiny_fla.py"
    spec = importlib.util.spec_from_file_location("tiny_fla", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _convert(src: Path, dst: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "memsvc.cli.main", "convert", "fla", str(src), str(dst)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "memory features are off" in done.stdout


@contextmanager
def _serving(env: dict[str, str], workdir: Path) -> Iterator[httpx.Client]:
    """`memsvc serve` as users run it, and a client of it."""
    with (
        Server(env, workdir, module_args=SERVE) as srv,
        httpx.Client(base_url=srv.url, timeout=120) as http,
    ):
        yield http


def test_converted_fla_model_chats_with_memory_off(tmp_path: Path) -> None:
    src, _, _ = _tiny_fla().write_fla_dir(tmp_path / "fla-src", seed=5)
    dst = tmp_path / "fla-ckpt"
    _convert(src, dst)
    for backend in make_backend("postgres", tmp_path, dst):
        key = backend.new_tenant("fla")
        env = {**backend.env, "MEMSVC_MEMORY_NOTES": "false"}  # no text notes either
        with _serving(env, tmp_path) as http:
            api = Client(http, key)
            ready = http.get("/readyz")
            assert ready.status_code == 200, ready.text
            memory = ready.json()["checks"]["memory"]
            assert memory["enabled"] is False and "Retention Layer" in memory["reason"]

            sid = new_session(api, user_id="ada")
            first = turn(api, sid, "Hello there, how are you today?", max_tokens=6)
            assert 1 <= first["usage"]["completion_tokens"] <= 6
            assert first["usage"]["memory_enabled"] is False
            assert first["usage"]["memory_writes"] == 0
            count = api("GET", f"/v1/sessions/{sid}").json()["token_count"]
            second = turn(api, sid, "My name is Ada.", max_tokens=4)
            assert second["usage"]["cached_tokens"] == count  # resumed from its state

            r = api("POST", "/v1/users/ada/memories", json={"text": "I like tea."})
            assert r.status_code == 409, r.text
            err = r.json()["error"]
            assert err["code"] == "memory_off"
            assert "no Retention Layer" in err["message"] and "memsvc distill" in err["message"]

            add_doc(api, FACT_DOC)
            rag = turn(api, new_session(api, memory_scope="none"), QUESTION, max_tokens=3)
            fed = rag["passages"]
            assert fed and rag["usage"]["passage_tokens"] == sum(p["tokens"] for p in fed)
            again = turn(api, new_session(api, memory_scope="none"), QUESTION, max_tokens=3)
            assert again["usage"]["snapshot_hits"] == len(fed)
            count = api("GET", f"/v1/sessions/{sid}").json()["token_count"]
        with _serving(env, tmp_path) as http:  # a fresh process: resume from storage
            after = turn(Client(http, key), sid, "Still there?", max_tokens=3)
        assert after["usage"]["cached_tokens"] == count
        assert after["usage"]["state_source"] in ("redis", "sql")
