"""Evict a memory slot over HTTP, restart the server on the same database and data dir:
the slot's saved FAISS index never hands it back.

Three processes: A writes the slots and saves the bank's index on shutdown (the file
holds the slot); B evicts it over the admin API; C, started after B, reads the bank in
a turn (the index loads from A's file and catches up with the change log) and saves it
again. The evicted slot is then in neither the admin API nor the saved index (whose
full search returns exactly the ids it holds).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
from server_util import ADMIN_KEY, Server
from service_testkit import Backend, Client
from sqlalchemy import create_engine, text

from storage.vector_index import VectorIndex


def _bank_files(backend: Backend, sid: str) -> list[Path]:
    """The saved index files of the session's slot banks."""
    engine = create_engine(backend.database_url)
    with engine.connect() as conn:
        ids = conn.execute(
            text("select id from vector_banks where namespace = :ns"), {"ns": f"session:{sid}"}
        ).scalars()
        paths = [Path(backend.env["MEMSVC_DATA_DIR"]) / "indexes" / f"slots-{i}.faiss" for i in ids]
    engine.dispose()
    assert paths, "the session has no slot bank"
    return paths


def _indexed(paths: list[Path]) -> set[int]:
    """Every id the saved indexes hold, and check a full search returns only those."""
    held: set[int] = set()
    for path in paths:
        index, _ = VectorIndex.load(path)
        ids = {int(i) for i in index.ids()}
        if ids:
            query = np.random.default_rng(0).standard_normal((1, index.dim)).astype(np.float32)
            _, found = index.search(query, len(ids) + 5)
            assert {int(i) for i in found.reshape(-1) if i >= 0} == ids
        held |= ids
    return held


def _serve(backend: Backend, workdir: Path):
    return Server(backend.env, workdir)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True, scope="session")
def test_an_evicted_slot_stays_out_of_the_saved_index_after_a_restart(
    backend: Backend, tmp_path: Path
) -> None:
    key = backend.new_tenant("evict")

    def clients(srv: Server) -> tuple[httpx.Client, Client, Client]:
        http = httpx.Client(base_url=srv.url, timeout=120)
        return http, Client(http, key), Client(http, ADMIN_KEY)

    def turn(api: Client, sid: str, content: str) -> dict:
        r = api("POST", f"/v1/sessions/{sid}/messages", json={"content": content})
        assert r.status_code == 200, r.text
        return r.json()

    def slot_ids(admin: Client, sid: str) -> set[str]:
        r = admin("GET", "/admin/memory/slots", params={"session_id": sid})
        return {s["id"] for s in r.json()["data"]}

    with _serve(backend, tmp_path / "a") as srv:
        http, api, admin = clients(srv)
        with http:
            sid = api("POST", "/v1/sessions", json={"memory_scope": "session"}).json()["id"]
            turn(api, sid, "The wifi password is hunter2")
            turn(api, sid, "The door code is 5150")
            written = slot_ids(admin, sid)
    assert len(written) == 2
    files = _bank_files(backend, sid)
    # A saved the index on shutdown (at its last catch-up: a later commit's slot may be
    # missing, the change log has it); the slot to evict is in the file
    in_file = _indexed(files)
    assert in_file and in_file <= {int(i) for i in written}

    with _serve(backend, tmp_path / "b") as srv:
        http, api, admin = clients(srv)
        with http:
            evicted = str(min(in_file))
            assert admin("DELETE", f"/admin/memory/slots/{evicted}").status_code == 204
            assert slot_ids(admin, sid) == written - {evicted}

    with _serve(backend, tmp_path / "c") as srv:  # the restart
        http, api, admin = clients(srv)
        with http:
            assert admin("GET", f"/admin/memory/slots/{evicted}").status_code == 404
            out = turn(api, sid, "Anything else?")  # reads the bank: loads and syncs its index
            assert out["usage"]["memory_writes"] >= 1
            live = slot_ids(admin, sid)
            assert evicted not in live and written - {evicted} <= live
            r = api(
                "POST", f"/v1/sessions/{sid}/feedback", json={"kind": "forget", "text": "hunter2"}
            )
            assert r.status_code == 200 and r.json()["slots_removed"] == []
    held = _indexed(files)  # what C saved after loading A's file and catching up
    assert int(evicted) not in held
    assert {int(i) for i in written - {evicted}} <= held <= {int(i) for i in live}
