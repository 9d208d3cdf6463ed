"""The `memsvc` command line.

Each command parses its options here and imports the module that does the work only
when it runs, so `memsvc --help` stays fast and one broken extra never takes the
whole CLI down. Failures end as one line on stderr and exit status 1 (set
``MEMSVC_DEBUG=1`` for the traceback).

    memsvc serve | migrate | reindex | tenant create|list|revoke | ingest | chat | mcp
    memsvc convert | train | distill | bench <name> | experiment <name> | version
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from memsvc.cli.lazy import BenchGroup, ExperimentGroup


class _App(typer.Typer):
    """A Typer app whose failures print one line instead of a traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if os.environ.get("MEMSVC_DEBUG"):
                raise
            typer.echo(f"error: {describe(exc)}", err=True)
            sys.exit(1)


def describe(exc: BaseException) -> str:
    """One line about ``exc``: its message, prefixed by the type for unexpected errors."""
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    if type(exc).__module__.startswith("sqlalchemy"):
        orig = getattr(exc, "orig", None)
        first = (str(orig).strip().splitlines() or [first])[0] if orig else first
        return f"database: {first}"
    from memsvc.errors import DomainError

    if isinstance(exc, DomainError):  # written for people already: the message alone
        return exc.message
    if type(exc).__name__ in {"MemsvcError", "ConvertError", "FileNotFoundError", "ValueError"}:
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


app = _App(
    name="memsvc",
    help="Persistent-memory chat and RAG service on a RetNet with a Retention Layer.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tenant_app = typer.Typer(help="Tenants and their API keys (works on the database directly).")
bench_app = typer.Typer(
    cls=BenchGroup,
    help="Benchmarks: each writes JSON, a Markdown table and a PNG plot.",
    no_args_is_help=True,
)
experiment_app = typer.Typer(
    cls=ExperimentGroup,
    help="Retention Layer experiments: each writes JSON, a Markdown table and a PNG.",
    no_args_is_help=True,
)
_VERBOSE = [False]  # set by the top-level --verbose


@app.callback()
def _main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="show libraries' INFO logs (Alembic, faiss)")
    ] = False,
) -> None:
    """Quiet by default: only warnings and errors of libraries reach stderr."""
    if verbose:
        import logging

        _VERBOSE[0] = True
        logging.basicConfig(level="INFO", format="%(levelname)s %(name)s: %(message)s")


app.add_typer(tenant_app, name="tenant")
app.add_typer(bench_app, name="bench")
app.add_typer(experiment_app, name="experiment")

Url = Annotated[
    str | None,
    typer.Option("--url", envvar="MEMSVC_BASE_URL", help="server URL [default: 127.0.0.1:8000]"),
]
Key = Annotated[
    str | None,
    typer.Option("--api-key", envvar="MEMSVC_API_KEY", help="tenant API key"),
]


# ------------------------------------------------------------------ service
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address [default: MEMSVC_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="port [default: MEMSVC_PORT or 8000]")] = None,
    model_dir: Annotated[
        str | None, typer.Option(help="checkpoint folder [default: MEMSVC_MODEL_DIR]")
    ] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error")] = "info",
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="also libraries' logs (Alembic, faiss)")
    ] = False,
) -> None:
    """Serve the HTTP API (REST, OpenAI-compatible, admin); settings from MEMSVC_* / .env.

    With nothing configured it runs on a SQLite file under ~/.local/share/memsvc, without
    Redis, on 127.0.0.1:8000. Pending database migrations are applied at start.
    """
    from memsvc.server import serve as run_server

    run_server(host, port, model_dir, log_level, verbose or _VERBOSE[0])


@app.command()
def migrate() -> None:
    """Apply pending database migrations to MEMSVC_DATABASE_URL (or the SQLite default)."""
    from memsvc.cli.tenants import run_migrations

    typer.echo(f"migrated {run_migrations()}")


@app.command()
def reindex(
    model_dir: Annotated[
        str | None, typer.Option(help="checkpoint folder [default: MEMSVC_MODEL_DIR]")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="only count the namespaces to re-encode")
    ] = False,
) -> None:
    """Re-encode memories that another model wrote, for this model (progress bar; JSON).

    Every live memory of a bank whose model fingerprint (or dims) differs gets new slots
    from its text; ids, collection/key and provenance stay. ``serve`` does it at start.
    """
    from memsvc.cli.reindex_cmd import run_reindex

    typer.echo(json.dumps(run_reindex(model_dir, dry_run)))


@tenant_app.command("create")
def tenant_create(
    name: Annotated[str, typer.Argument(help="a name for the tenant")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Create a tenant and print its API key (shown once; only its hash is stored)."""
    from memsvc.cli.tenants import tenant_create as create

    tenant_id, key = create(name)
    if as_json:
        typer.echo(json.dumps({"tenant_id": tenant_id, "api_key": key}))
    else:
        typer.echo(f"tenant {tenant_id} created; API key (shown once):\n{key}")


@tenant_app.command("list")
def tenant_list(as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False):
    """List tenants with the prefixes of their live keys (never the keys)."""
    from memsvc.cli.tenants import tenant_list as list_tenants

    rows = list_tenants()
    if as_json:
        typer.echo(json.dumps(rows, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("id", "name", "keys", "created")
    for row in rows:
        keys = ", ".join(f"{prefix}…" for prefix in row.get("keys") or [])
        table.add_row(str(row.get("id")), str(row.get("name")), keys, str(row.get("created_at")))
    Console().print(table)


@tenant_app.command("revoke")
def tenant_revoke(tenant_id: Annotated[str, typer.Argument(help="the tenant's id")]) -> None:
    """Revoke every API key of a tenant: its requests get 401 from now on (its data stays)."""
    from memsvc.cli.tenants import tenant_revoke as revoke

    count = revoke(tenant_id)
    typer.echo(f"revoked {count} key(s) of tenant {tenant_id}")
    if count == 0:
        raise typer.Exit(1)


# ------------------------------------------------------------------ clients
@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="files or folders (.txt, .md inside)")],
    url: Url = None,
    api_key: Key = None,
    scope: Annotated[str, typer.Option(help="tenant or user")] = "tenant",
    user_id: Annotated[str | None, typer.Option(help="owner of user-scoped documents")] = None,
) -> None:
    """Add documents to a running server for RAG (POST /v1/documents), with a progress bar."""
    from memsvc.cli.client_cmds import collect_files
    from memsvc.cli.client_cmds import ingest as run_ingest
    from memsvc.client import MemsvcClient

    files = collect_files(paths)
    if not files:
        raise FileNotFoundError("no .txt or .md files found in the given paths")
    with MemsvcClient(url, api_key) as client:
        docs = run_ingest(client, files, scope, user_id)
    passages = sum(d.get("passages", 0) for d in docs)
    typer.echo(f"ingested {len(docs)} document(s), {passages} passage(s)")


@app.command()
def chat(
    url: Url = None,
    api_key: Key = None,
    session: Annotated[str | None, typer.Option(help="resume this session id")] = None,
    user_id: Annotated[str | None, typer.Option(help="user id of a new session")] = None,
    system: Annotated[str | None, typer.Option(help="system prompt of a new session")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="reply length limit")] = None,
    temperature: Annotated[
        float | None, typer.Option(help="0 = greedy; unset: the model's own default")
    ] = None,
) -> None:
    """Chat with a running server in the terminal; replies stream as they are generated.

    The session id is printed first: `memsvc chat --session ID` resumes it later (from
    its saved state, without replaying the history).
    """
    from rich.console import Console

    from memsvc.cli.client_cmds import chat_loop, open_session
    from memsvc.client import MemsvcClient

    params: dict[str, Any] = {} if temperature is None else {"temperature": temperature}
    if max_tokens:
        params["max_tokens"] = max_tokens
    with MemsvcClient(url, api_key) as client:
        chat_loop(client, open_session(client, session, user_id, system), params, Console())


@app.command()
def mcp(url: Url = None, api_key: Key = None) -> None:
    """Serve memsvc's MCP tools (remember, recall, list_memories, forget, chat) on stdio.

    For MCP clients (assistants, IDEs) that start a server process; it talks to a
    running memsvc at MEMSVC_BASE_URL with the tenant key MEMSVC_API_KEY.
    """
    from memsvc.mcp.stdio import run_stdio

    run_stdio(url, api_key)


# ------------------------------------------------------------------ model
@app.command()
def convert(
    source_format: Annotated[str, typer.Argument(help="source: torchscale | llama | fla")],
    src: Annotated[
        Path,
        typer.Argument(
            help="torchscale: torch file (state dict or fairseq-style dict); "
            "llama: a .gguf file or a Hugging Face LlamaForCausalLM directory; "
            "fla: a Hugging Face directory of fla's RetNetForCausalLM (fla-hub/retnet-1.3B-100B)"
        ),
    ],
    dst: Annotated[Path, typer.Argument(help="checkpoint folder to write")],
    config: Annotated[
        Path | None, typer.Option(help="torchscale: JSON with torchscale RetNetConfig fields")
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option(help="torchscale: unpickle arbitrary objects in SRC (trusted only)")
    ] = False,
    mixer: Annotated[
        str, typer.Option(help="llama: retention | hybrid | softmax (the teacher)")
    ] = "retention",
) -> None:
    """Convert a model from another library into a memsvc checkpoint folder."""
    if source_format == "llama":
        from retnet_core.convert_llama import cli as run_llama

        raise typer.Exit(run_llama([str(src), str(dst), "--mixer", mixer]))
    if source_format == "fla":
        from retnet_core.convert_fla import cli as run_fla

        raise typer.Exit(run_fla([str(src), str(dst)]))
    from retnet_core.convert import cli as run_convert

    run_convert(source_format, src, dst, config, trust_pickle)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML or TOML training config")],
    out_dir: Annotated[Path | None, typer.Option(help="override the config's out_dir")] = None,
    max_steps: Annotated[int | None, typer.Option(help="override max_steps")] = None,
    max_time_s: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint")] = True,
) -> None:
    """Train a model from a config (run under `torchrun` for several GPUs / processes)."""
    if not config.is_file():
        raise FileNotFoundError(f"no such config file: {config}")
    from retnet_core.training.train import cli as run_train

    run_train(config, out_dir, max_steps, max_time_s, device, resume)


@app.command()
def distill(
    config: Annotated[Path, typer.Argument(help="YAML distillation config")],
    out_dir: Annotated[Path | None, typer.Option(help="override the config's out_dir")] = None,
    max_time_s: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda or auto")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint")] = True,
) -> None:
    """Distil a softmax teacher (GGUF or HF Llama) into a retention or hybrid student."""
    if not config.is_file():
        raise FileNotFoundError(f"no such config file: {config}")
    from retnet_core.training.distill import cli as run_distill

    run_distill(config, out_dir, max_time_s, device, resume)


@app.command("train-query-adapter")
def train_query_adapter(
    out: Annotated[Path, typer.Option(help="where to write the .safetensors file")],
    pairs: Annotated[int, typer.Option(help="question-statement pairs generated")] = 16000,
    steps: Annotated[int, typer.Option(help="optimizer steps (batch 256)")] = 1500,
    seed: Annotated[int, typer.Option(help="data and initialisation seed")] = 1,
) -> None:
    """Train the memory read's query adapter (memsvc.rag.query_adapter) on note training data."""
    from memsvc.rag.query_adapter import train_adapter

    adapter = train_adapter(out, pairs=pairs, seed=seed, steps=steps)
    typer.echo(f"wrote {out}: {adapter.trained}")


@app.command()
def version() -> None:
    """Print the installed memsvc version."""
    from importlib.metadata import version as _version

    typer.echo(_version("memsvc"))


if __name__ == "__main__":
    app()
