"""Blocking work off the event loop, on anyio's worker threads (the same pool FastAPI uses)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from anyio import to_thread

T = TypeVar("T")


async def run_in_threadpool(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``await fn(*args, **kwargs)`` on a worker thread; the loop keeps serving meanwhile."""
    return await to_thread.run_sync(functools.partial(fn, *args, **kwargs))
