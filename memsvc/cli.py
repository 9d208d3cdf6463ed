"""The `memsvc` command line.

Each command parses its options here and imports the module that does the work only
when it runs, so `memsvc --help` stays fast and one broken extra never takes the
whole CLI down.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="memsvc",
    help="Persistent-memory chat and RAG service on a RetNet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: each writes JSON, a Markdown table and a PNG plot.")
app.add_typer(bench_app, name="bench")


@app.command()
def version() -> None:
    """Print the installed memsvc version."""
    from importlib.metadata import version as _version

    typer.echo(_version("memsvc"))


if __name__ == "__main__":
    app()
