"""``memsvc reindex``: re-encode the memories another model wrote, with a progress bar.

Works on the configured database directly (MEMSVC_* / .env), with the model of
``--model-dir`` (default: the configured one); see :mod:`memsvc.services.reindex`.
Safe to run while no server writes memories; ``memsvc serve`` does the same at start.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def run_reindex(model_dir: str | None, dry_run: bool, console: Console | None = None) -> dict:
    """Build the services on the chosen model, re-encode the stale namespaces; the report."""
    from memsvc.config import Settings
    from memsvc.services.container import Services
    from memsvc.services.reindex import Reindexer

    settings = Settings(**({"model_dir": model_dir} if model_dir else {}))
    services = Services.build(settings)
    services.start()
    try:
        reindexer = Reindexer(services.store, services.memory)
        stale = reindexer.stale(adopt=not dry_run)
        if dry_run or not stale:
            return {
                "fingerprint": reindexer.fingerprint,
                "stale_namespaces": len(stale),
                "enabled": reindexer.enabled,
            }
        return asyncio.run(_with_bar(reindexer, stale, console or Console(stderr=True)))
    finally:
        services.stop()


async def _with_bar(reindexer: Any, stale: list, console: Console) -> dict:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("re-encoding memories", total=None)

        def tick(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        report = await reindexer.run(stale, progress=tick)
    return {"enabled": True, **asdict(report)}
