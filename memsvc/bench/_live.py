"""Shared pieces of the service benchmarks: a default-size checkpoint, a live server, SSE.

- :func:`default_size_checkpoint` writes (once, cached by shape) a **random-weight**
  checkpoint with the architecture of ``configs/default.yaml``'s ``model:`` section and a
  byte-level BPE (vocab 4096) trained on a few thousand chitchat utterances. Latency and
  throughput depend on the shapes, not on the weights.
- :class:`LiveServer` runs ``python -m memsvc.server`` as a subprocess on a free port of
  127.0.0.1 with ``MEMSVC_*`` settings, waits for ``/readyz`` and stops it (terminate,
  then kill) on exit.
- :func:`stream_turn` posts one streaming turn and times the first ``delta`` event.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
ADMIN_KEY = "bench-admin-key"


def work_root() -> Path:
    """Where checkpoints and server data of the benchmarks go (a temp folder)."""
    return Path(tempfile.gettempdir()) / "memsvc-bench"


def machine_info() -> dict[str, Any]:
    """CPU count, load average and versions, written next to every result."""
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_1_5_15": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


# ---- checkpoint ----------------------------------------------------------------------
def _chitchat_lines(limit: int) -> list[str]:
    """Up to ``limit`` utterances of the chitchat dataset (a fixed fallback without it)."""
    try:
        import chitchat_dataset

        raw = json.loads(Path(chitchat_dataset._PATH).read_text())
    except Exception:  # the package is optional: a small fixed corpus keeps this working
        base = [
            "Hello there, how are you today?",
            "I like tea and long walks in the park on sunny afternoons.",
            "What did you do over the weekend? I went hiking with friends.",
            "The weather has been strange lately, rain one day and sun the next.",
        ]
        return [f"{s} {i}" for i in range(limit // len(base)) for s in base]
    lines: list[str] = []
    for conv in raw.values():
        for msg in conv["messages"]:
            for utt in msg:
                lines.append(utt["text"])
                if len(lines) >= limit:
                    return lines
    return lines


def default_model_section(config: Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """The ``model:`` section and ``vocab_size`` of a training config (YAML)."""
    import yaml

    data = yaml.safe_load(config.read_text())
    return {"model": dict(data["model"]), "vocab_size": int(data.get("vocab_size", 4096))}


def default_size_checkpoint(
    root: Path | None = None, config: Path = DEFAULT_CONFIG, lines: int = 5000
) -> Path:
    """A random-weight checkpoint of the default model's size (cached under ``root``)."""
    import torch

    from retnet_core.checkpoint import save_pretrained
    from retnet_core.config import RetNetConfig
    from retnet_core.model import RetNetLM
    from retnet_core.tokenizer import ChatTokenizer

    section = default_model_section(config)
    tag = hashlib.sha256(json.dumps([section, lines], sort_keys=True).encode()).hexdigest()[:12]
    directory = (root or work_root()) / f"model-default-random-{tag}"
    if (directory / "config.json").exists() and (directory / "model.safetensors").exists():
        return directory
    tok = ChatTokenizer.train(_chitchat_lines(lines), vocab_size=section["vocab_size"])
    torch.manual_seed(0)
    cfg = RetNetConfig(**{**section["model"], "vocab_size": tok.vocab_size})
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    save_pretrained(RetNetLM(cfg), tmp, tokenizer=tok)
    tmp.rename(directory)
    return directory


def chitchat_text(n_chars: int, seed_lines: int = 20000) -> str:
    """Real conversational text of about ``n_chars`` characters (lines repeated if short)."""
    lines = _chitchat_lines(seed_lines)
    out: list[str] = []
    total = 0
    i = 0
    while total < n_chars:
        line = lines[i % len(lines)]
        out.append(line)
        total += len(line) + 1
        i += 1
    return " ".join(out)[:n_chars]


# ---- live server ---------------------------------------------------------------------
def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit, so ``finally`` blocks stop servers and clean up."""
    import signal

    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)


def free_port() -> int:
    """A TCP port nothing listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """``python -m memsvc.server`` on 127.0.0.1:<free port>; a context manager."""

    env: dict[str, str]
    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    # what follows the interpreter: `memsvc.server`, or ("-m", "memsvc.cli.main", "serve") to start
    # it exactly as users do
    module_args: tuple[str, ...] = ("-m", "memsvc.server")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / f"server-{self.port}.log"

    def launch(self) -> LiveServer:
        """Start the process (returns at once; :meth:`wait_ready` waits for /readyz)."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("MEMSVC_")}
        env = {
            **inherited,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            **self.env,
            "MEMSVC_HOST": "127.0.0.1",
            "MEMSVC_PORT": str(self.port),
        }
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, *self.module_args, "--log-level", "warning"],
                env=env,
                cwd=self.workdir,  # no stray .env
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout_s: float = 240.0) -> LiveServer:
        """Poll /readyz until 200; stops the server and raises when it dies or times out."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready in {timeout_s}s:\n{self.log.read_text()[-3000:]}")

    def start(self, timeout_s: float = 240.0) -> LiveServer:
        return self.launch().wait_ready(timeout_s)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def play_on_live_server(
    name: str,
    model_dir: Path,
    database_url: str | None,
    redis_url: str | None,
    extra_env: dict[str, str] | None,
    play: Callable[[str, str], Awaitable[Any]],
) -> Any:
    """Start a server on ``model_dir`` in a fresh work folder, create a tenant, run
    ``play(url, tenant_key)`` to completion, then stop the server and remove the folder.
    Returns what ``play`` returned."""
    work = work_root() / f"{name}-{time.monotonic_ns()}"
    env = server_env(model_dir, work / "data", database_url, redis_url, **(extra_env or {}))
    try:
        with LiveServer(env, work) as server:
            return asyncio.run(play(server.url, new_tenant_key(env)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def server_env(
    model_dir: Path, data_dir: Path, database_url: str | None, redis_url: str | None, **extra: str
) -> dict[str, str]:
    """``MEMSVC_*`` settings of a benchmark server (CPU, admin key, optional PG/Redis)."""
    env = {
        "MEMSVC_MODEL_DIR": str(model_dir),
        "MEMSVC_DATA_DIR": str(data_dir),
        "MEMSVC_ADMIN_KEY": ADMIN_KEY,
        "MEMSVC_DEVICE": "cpu",
        **extra,
    }
    if database_url:
        env["MEMSVC_DATABASE_URL"] = database_url
    if redis_url:
        env["MEMSVC_REDIS_URL"] = redis_url
    return env


def new_tenant_key(env: dict[str, str]) -> str:
    """A new tenant's API key, created on the server's database (the CLI's code path)."""
    from memsvc.cli.tenants import tenant_create
    from memsvc.config import Settings

    settings = Settings(
        database_url=env.get("MEMSVC_DATABASE_URL"),
        redis_url=env.get("MEMSVC_REDIS_URL"),
        redis_prefix=env.get("MEMSVC_REDIS_PREFIX", "memsvc:"),
        data_dir=Path(env["MEMSVC_DATA_DIR"]),
        model_dir=Path(env["MEMSVC_MODEL_DIR"]),
    )
    return tenant_create(f"bench-{os.getpid()}-{time.monotonic_ns()}", settings)[1]


# ---- one streamed turn ---------------------------------------------------------------
@dataclass
class TurnTiming:
    """Client-side timings of one streamed turn (seconds from sending the request)."""

    ttft_s: float
    total_s: float
    completion_tokens: int
    usage: dict[str, Any]
    sent_at: float
    first_at: float
    last_delta_at: float
    done_at: float


async def stream_turn(
    client: httpx.AsyncClient,
    key: str,
    session_id: str,
    content: str,
    max_tokens: int,
    **extra: Any,
) -> TurnTiming:
    """POST one ``stream: true`` turn; time to the first ``delta`` and to ``done``."""
    body = {"content": content, "stream": True, "max_tokens": max_tokens, **extra}
    headers = {"Authorization": f"Bearer {key}"}
    sent = time.perf_counter()
    first: float | None = None
    last: float | None = None
    done: dict[str, Any] | None = None
    async with client.stream(
        "POST", f"/v1/sessions/{session_id}/messages", json=body, headers=headers
    ) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode(errors="replace")
            raise RuntimeError(f"turn failed: {resp.status_code} {text[:300]}")
        event = "message"
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                event = line[len("event: ") :]
            elif line.startswith("data: "):
                if event == "delta":
                    last = time.perf_counter()
                    first = last if first is None else first
                elif event == "done":
                    done = json.loads(line[len("data: ") :])
                elif event == "error":
                    raise RuntimeError(f"turn failed: {line}")
    end = time.perf_counter()
    if done is None:
        raise RuntimeError("stream ended without a done event")
    if first is None:  # an empty reply: the done event is the first thing the client sees
        first = end
    usage = done.get("usage", {})
    return TurnTiming(
        ttft_s=first - sent,
        total_s=end - sent,
        completion_tokens=int(usage.get("completion_tokens", 0)),
        usage=usage,
        sent_at=sent,
        first_at=first,
        last_delta_at=last if last is not None else first,
        done_at=end,
    )


async def create_session(client: httpx.AsyncClient, key: str, **body: Any) -> str:
    """POST /v1/sessions; the new session's id."""
    r = await client.post("/v1/sessions", json=body, headers={"Authorization": f"Bearer {key}"})
    if r.status_code not in (200, 201):
        raise RuntimeError(f"session create failed: {r.status_code} {r.text[:300]}")
    return str(r.json()["id"])


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
