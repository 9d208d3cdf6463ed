"""The ``memsvc`` command line (typer): serve, tenants, chat, ingest, convert, train, bench."""
