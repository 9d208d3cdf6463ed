"""``memsvc chat`` and ``memsvc ingest``: terminal clients of a running server (over HTTP)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from memsvc.client import MemsvcClient, MemsvcError

TEXT_SUFFIXES = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown"}


# ------------------------------------------------------------------ ingest
def collect_files(paths: Iterable[Path]) -> list[Path]:
    """Files named directly, plus every text/Markdown file under the folders named."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES)
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return list(dict.fromkeys(files))


def ingest(
    client: MemsvcClient,
    files: list[Path],
    scope: str = "tenant",
    user_id: str | None = None,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """POST each file to ``/v1/documents`` with a progress bar; returns the documents."""
    console = console or Console(stderr=True)
    done: list[dict[str, Any]] = []
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("ingesting", total=len(files))
        for path in files:
            progress.update(task, description=f"ingesting {path.name}")
            body = {
                "title": path.name,
                "format": TEXT_SUFFIXES.get(path.suffix.lower(), "text"),
                "scope": scope,
            }
            if user_id:
                body["user_id"] = user_id
            text = path.read_text(encoding="utf-8")
            if not text.strip():
                console.print(f"[yellow]skipped empty file {path}[/]")
            else:
                done.append({"path": str(path), **client.add_document(text, **body)})
            progress.advance(task)
        progress.update(task, description="ingested")
    return done


# ------------------------------------------------------------------ chat
HELP = "commands: /session (show the id), /history, /exit (or Ctrl-D)"


def open_session(client: MemsvcClient, session: str | None, user: str | None, system: str | None):
    """The session to talk in: the one named (checked), or a new one."""
    if session:
        return client.get_session(session)
    body = {k: v for k, v in {"user_id": user, "system_prompt": system}.items() if v}
    return client.create_session(**body)


def show_history(client: MemsvcClient, session_id: str, console: Console, last: int = 6) -> None:
    for m in client.messages(session_id)[-last:]:
        who = "you" if m["role"] == "user" else "bot"
        console.print(f"[dim]{who}> {m['content']}[/]")


def stream_reply(
    client: MemsvcClient, session_id: str, text: str, params: dict, write: Callable[[str], Any]
) -> dict:
    """Stream one reply through ``write``; returns the final turn body (with usage)."""
    final: dict = {}
    for event in client.stream_message(session_id, text, **params):
        if "text" in event:
            write(event["text"])
        elif "usage" in event:
            final = event
    return final


def chat_loop(
    client: MemsvcClient,
    session: dict,
    params: dict,
    console: Console,
    read: Callable[[str], str] = input,
) -> None:
    """Read a line, stream the reply, repeat until ``/exit`` or end of input."""
    sid = session["id"]
    console.print(f"session [bold]{sid}[/] (resume with: memsvc chat --session {sid})")
    console.print(f"[dim]{HELP}[/]")
    if session.get("message_count"):
        show_history(client, sid, console)
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            console.print()
            return
        if not line:
            continue
        if line in {"/exit", "/quit"}:
            return
        if line == "/session":
            console.print(sid)
            continue
        if line == "/history":
            show_history(client, sid, console, last=10_000)
            continue
        sys.stdout.write("bot> ")
        try:
            final = stream_reply(client, sid, line, params, _write)
        except MemsvcError as exc:
            console.print(f"\n[red]error: {exc}[/]")
            continue
        usage = final.get("usage", {})
        sys.stdout.write("\n")
        console.print(
            f"[dim]{usage.get('completion_tokens', 0)} tokens, "
            f"{usage.get('cached_tokens', 0)} from the saved state "
            f"({usage.get('state_source', '?')})[/]"
        )


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
