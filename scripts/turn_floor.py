"""No-history turn latency in process: the real app over ASGI, Postgres + Redis.

Each measured turn is the first turn of a brand-new session (no state to load), one
token, memory off, RAG off, the shipped model. Prints wall p50/p90 and the process's
CPU time per turn (session create + turn; CPU time moves less with machine load than
wall time does). Run it from two checkouts one after another to compare code:

    PYTHONPATH=$PWD python scripts/turn_floor.py --turns 30
    (cd /work/main && PYTHONPATH=$PWD python /work/wt/engine2/scripts/turn_floor.py)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path
from tempfile import mkdtemp

import httpx

from memsvc.app import create_app
from memsvc.bench.turn_cost import _drop_redis_prefix, scratch_postgres
from memsvc.config import Settings
from memsvc.services.container import Services

WARMUP = 3


async def _turns(app, key: str, n: int) -> list[float]:
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {key}"}
    times: list[float] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for i in range(n + WARMUP):
            r = await client.post("/v1/sessions", json={"memory_scope": "none"}, headers=headers)
            sid = r.json()["id"]
            body = {"content": "Hello there, how are you?", "max_tokens": 1}
            body["use_documents"] = False
            t = time.perf_counter()
            r = await client.post(f"/v1/sessions/{sid}/messages", json=body, headers=headers)
            r.raise_for_status()
            if i >= WARMUP:
                times.append((time.perf_counter() - t) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    with scratch_postgres() as url:
        settings = Settings(
            database_url=url,
            redis_url=args.redis_url,
            redis_prefix=f"turn-floor:{uuid.uuid4().hex[:8]}:",
            data_dir=Path(mkdtemp(prefix="turn-floor-")),
            device="cpu",
            rag_enabled=False,
        )
        services = Services.build(settings)
        services.start()
        try:
            _, key = services.store.create_tenant(f"floor-{uuid.uuid4().hex[:6]}")
            app = create_app(settings, services)
            cpu0 = time.process_time()
            times = sorted(asyncio.run(_turns(app, key, args.turns)))
            cpu = (time.process_time() - cpu0) * 1e3 / (args.turns + WARMUP)
        finally:
            services.stop()
            _drop_redis_prefix(args.redis_url, settings.redis_prefix)
    p90 = times[int(len(times) * 0.9)]
    print(
        f"turns {len(times)}  wall p50 {statistics.median(times):.1f} ms  p90 {p90:.1f} ms  "
        f"min {times[0]:.1f} ms  cpu/turn {cpu:.1f} ms  load {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
