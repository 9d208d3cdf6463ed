"""How much the database grows for one long message written to memory.

Writes one user message of N characters the way a turn does: the message row, one
token slot per token (the shipped model's tokenizer, key/value widths and memory
layers; random unit keys), and its memory with each slot's own character span. Growth
is measured on SQLite (file size after a WAL checkpoint) and on PostgreSQL
(``pg_total_relation_size`` summed over the schema's tables), each on a fresh database.

    python -m memsvc.bench.storage_growth [--postgres URL] [--chars 3000 12000]

Issue 14's target: ≤ 4 MB for 12,000 characters, and ≤ 6× a 3,000-character message.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storage import Provenance, Storage
from storage.memories import NewMemory, new_memory_id

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "models" / "default"
WORDS = [
    "the",
    "a",
    "my",
    "dog",
    "cat",
    "sea",
    "river",
    "Rex",
    "likes",
    "swims",
    "every",
    "morning",
    "near",
    "old",
    "house",
    "blue",
]


@dataclass(frozen=True)
class Shape:
    """What one written token costs: slots per token and their vector widths."""

    layers: list[int]
    d_key: int
    d_value: int


def model_shape(model_dir: Path = DEFAULT_MODEL) -> Shape:
    cfg = json.loads((model_dir / "config.json").read_text())
    d_value = cfg["memory_d_value"] + int(bool(cfg.get("memory_copy", False)))
    return Shape(list(cfg["memory_layers"]), cfg["memory_d_key"], d_value)


def sentence_text(chars: int, seed: int = 0) -> str:
    """Plain English-like text of exactly ``chars`` characters."""
    rng = random.Random(seed)
    out: list[str] = []
    n = 0
    while n < chars:
        w = rng.choice(WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)[:chars]


def write_message(st: Storage, tenant: str, content: str, shape: Shape, spans) -> int:
    """One user message written to memory as a turn would; returns slots written."""
    session = st.sessions.create(tenant, meta={"user": "u1"})
    msg = st.messages.append(tenant, session.id, "user", content)
    rng = np.random.default_rng(0)
    mid, whole, slots = new_memory_id(), (0, len(content)), []
    for layer in shape.layers:
        bank = st.slots.bank(tenant, "user:u1", layer, d_key=shape.d_key, d_value=shape.d_value)
        n = len(spans)
        keys = rng.standard_normal((n, shape.d_key)).astype(np.float32)
        keys /= np.linalg.norm(keys, axis=1, keepdims=True)
        values = rng.standard_normal((n, shape.d_value)).astype(np.float32)
        prov = [Provenance(session.id, msg.id, span, mid) for span in spans]
        slots += bank.add_with_provenance(keys, values, np.full(n, 0.9), prov).tolist()
    new = NewMemory(mid, tenant, "user:u1", "u1", session.id, msg.id, whole)
    st.memories.record(new, slots, 0.9, "bench")
    return len(slots)


def db_bytes(url: str) -> int:
    """Bytes the database takes now (SQLite: the file after a checkpoint)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if url.startswith("sqlite"):
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                return Path(make_url(url).database).stat().st_size
            return int(
                conn.execute(
                    text(
                        "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
                        " JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                    )
                ).scalar()
            )
    finally:
        engine.dispose()


def growth(url: str, content: str, shape: Shape, spans) -> tuple[int, int]:
    """(bytes grown, slots) for one message on the (migrated, empty) database at ``url``."""
    st = Storage.from_urls(url, None, migrate=True)
    try:
        tenant = st.tenants.create(f"bench-{len(content)}").id  # tenant names are unique
        before = db_bytes(url)
        slots = write_message(st, tenant, content, shape, spans)
        return db_bytes(url) - before, slots
    finally:
        st.close()


def fresh_url(backend: str, postgres: str | None, tmp: Path):
    """A context yielding the URL of a fresh SQLite file or PostgreSQL database (dropped
    afterwards; ``postgres`` is the server's admin URL)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        if backend == "sqlite":
            yield f"sqlite:///{tmp / f'{uuid.uuid4().hex}.db'}"
            return
        admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
        name = f"memsvc_growth_{uuid.uuid4().hex[:10]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(postgres).set(database=name).render_as_string(False)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    return ctx()


def measure(chars: list[int], postgres: str | None, model_dir: Path = DEFAULT_MODEL) -> list:
    """Rows of (backend, chars, tokens, slots, bytes grown), each on a fresh database."""
    from retnet_core.tokenizer import ChatTokenizer

    tok = ChatTokenizer.load(model_dir)
    shape = model_shape(model_dir)
    backends = ["sqlite"] + (["postgres"] if postgres else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            for n in chars:
                content = sentence_text(n)
                spans = tok.char_spans(content)
                with fresh_url(backend, postgres, Path(tmp)) as url:
                    grown, slots = growth(url, content, shape, spans)
                rows.append((backend, n, len(spans), slots, grown))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--postgres", help="admin URL of a PostgreSQL server (a fresh DB is made)")
    ap.add_argument("--chars", type=int, nargs="+", default=[3000, 12000])
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL)
    args = ap.parse_args(argv)
    rows = measure(args.chars, args.postgres, args.model_dir)
    print("| backend | chars | tokens | slots | growth MB | × smallest |")
    print("|---|---|---|---|---|---|")
    base: dict[str, int] = {}
    for backend, n, tokens, slots, grown in rows:
        base.setdefault(backend, grown)
        ratio = grown / base[backend] if base[backend] else float("nan")
        print(f"| {backend} | {n} | {tokens} | {slots} | {grown / 2**20:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
