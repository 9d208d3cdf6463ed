"""How the memory note's read grows with a user's memories (a model without memory layers).

Each chat turn of such a model scores the user's live text memories against the message
(``memsvc.services.memory_notes.NoteMemory.read``). The memories are held in-process and
a turn asks the database only for their version; this measures, side by side in one run
for users holding N memories: the full SQL load (what every turn did before), the
version query, the similarity pick, and the whole read. The memories' embeddings are
put in the in-process cache first (random unit vectors: what is measured is the read,
not MiniLM's one-off encoding of each memory); the message is embedded by MiniLM, as in
the service.

    PYTHONPATH=. python scripts/note_read_scale.py --out docs/bench/note-read \\
        --database-url postgresql+psycopg://postgres@127.0.0.1:5432/note_read_scale
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from memsvc.config import Settings
from memsvc.rag.feed import Embedder
from memsvc.services.container import migrate, open_store
from memsvc.services.memories import EmbeddingCache
from memsvc.services.memory_focus import focus
from memsvc.services.memory_notes import NoteMemory, pick
from memsvc.store import PendingMemory, SessionRec, TextMemories, new_memory_id

MESSAGE = "What is my sister called?"


def _fresh_database(url: str) -> None:
    """Drop and create the database ``url`` names (on the same server's ``postgres``)."""
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{target.database}"'))
        conn.execute(text(f'CREATE DATABASE "{target.database}"'))
    admin.dispose()


def _fill(store, tenant_id: str, user: str, n: int, batch: int = 500) -> None:
    """``n`` text memories of ``user:<user>``, committed ``batch`` at a time."""
    for start in range(0, n, batch):
        new = tuple(
            (
                PendingMemory(
                    id=new_memory_id(),
                    tenant_id=tenant_id,
                    namespace=f"user:{user}",
                    user_id=user,
                    span=(0, 40),
                    text=f"Fact {i}: my item number {i} is called Thing{i}.",
                ),
                "bench",
            )
            for i in range(start, min(n, start + batch))
        )
        store.commit_text_memories(TextMemories(tenant_id, new))


def _pick(embeddings: EmbeddingCache, live: list, query: np.ndarray) -> list:
    """The pick as a turn runs it: each memory by its sentence closest to the message."""
    rows, _ = focus(embeddings.sentence_vectors(live), query)
    return pick(live, rows, query)


def _time(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--database-url", required=True, help="a database this script recreates")
    ap.add_argument("--sizes", default="10,100,1000,5000")
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    _fresh_database(args.database_url)
    settings = Settings(database_url=args.database_url, data_dir=args.out / ".data")
    migrate(settings)
    store = open_store(settings)
    tenant_id, _key = store.create_tenant(f"note-read-{uuid.uuid4().hex[:6]}")
    embeddings = EmbeddingCache(Embedder())
    notes = NoteMemory(store, embeddings)
    rng = np.random.default_rng(0)
    query = embeddings.embedder.embed([MESSAGE])[0]
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        user = f"u{n}"
        _fill(store, tenant_id, user, n)
        session = SessionRec(f"s-{user}", tenant_id, user, None, "user", None, None, 0, 0, 0)
        live = notes._live(session)
        vecs = rng.standard_normal((len(live), 384)).astype(np.float32)
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        with embeddings._lock:  # the cache warm, as after the first turn
            embeddings._cache.update({m.id: v for m, v in zip(live, vecs, strict=True)})
        ns = f"user:{user}"
        load = _time(lambda u=ns: store.namespace_memories(tenant_id, u), args.repeats)
        version = _time(lambda u=ns: store.namespace_version(tenant_id, u), args.repeats)
        scored = _time(lambda m=live: _pick(embeddings, m, query), args.repeats)
        whole = _time(lambda s=session: notes.read(s, MESSAGE), args.repeats)
        rows.append((n, load, version, scored, whole))
        print(
            f"{n:>6} memories: load {load:7.1f} ms  version {version:5.1f} ms  "
            f"pick {scored:6.1f} ms  read {whole:7.1f} ms"
        )
    store.close()
    lines = [
        "# The memory note's read against a user's memory count",
        "",
        f"Command: `PYTHONPATH=. python scripts/note_read_scale.py --out {args.out} "
        f"--database-url <a scratch PostgreSQL database> --sizes {args.sizes} "
        f"--repeats {args.repeats}`  ",
        "Median of the repeats after one warm-up; PostgreSQL 15 on 127.0.0.1, no Redis, "
        "2 shared CPU cores. *load*: the SQL read of the user's live memories with their "
        "text (what every turn did before the memories were held in-process); *version*: "
        "what a turn asks now (one indexed query); *pick*: the cached vectors stacked "
        "(each memory by its sentence closest to the message) "
        "and scored; *read*: `NoteMemory.read` as a turn runs it, memories held (the "
        "version query, the message embedded by MiniLM, the pick).",
        "",
        "| memories | load (ms) | version (ms) | pick (ms) | read, held (ms) | load ÷ version |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {n} | {ld:.1f} | {v:.1f} | {p:.1f} | {w:.1f} | {ld / v:.0f}× |"
        for n, ld, v, p, w in rows
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "note-read.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
