"""The FAISS wrapper on its own: tombstones, compaction, kind switch, files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from storage.vector_index import IndexParams, VectorIndex


def data(n: int, d: int = 24, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_removed_ids_never_come_back(kind: str) -> None:
    x = data(2000)
    ix = VectorIndex(24, IndexParams(kind=kind, compact_min=10_000))
    ids = np.arange(2000, dtype=np.int64) * 7 + 3
    ix.upsert(ids, x)
    gone = ids[::2]
    ix.remove(gone)
    assert ix.dead == 1000 and len(ix) == 1000  # tombstoned, not yet compacted
    _, got = ix.search(x[:200], 20)
    assert not np.isin(got, gone).any()
    ix.compact()
    assert ix.dead == 0
    _, got = ix.search(x[:200], 20)
    assert not np.isin(got, gone).any()


def test_update_replaces_the_vector() -> None:
    x = data(100)
    ix = VectorIndex(24, IndexParams(kind="hnsw"))
    ix.upsert(np.arange(100), x)
    ix.upsert(np.array([5]), x[50])
    _, got = ix.search(x[5:6], 100)
    assert list(got[0]).count(5) == 1  # the old vector of 5 is gone
    assert np.allclose(ix.vectors(np.array([5])), x[50])


def test_auto_switches_to_hnsw_and_compacts() -> None:
    x = data(300)
    ix = VectorIndex(24, IndexParams(kind="auto", flat_max=200, compact_min=10))
    ix.upsert(np.arange(150), x[:150])
    assert ix.kind == "flat"
    ix.upsert(np.arange(150, 300), x[150:])
    assert ix.kind == "hnsw" and len(ix) == 300
    ix.remove(np.arange(120))
    assert ix.kind == "flat" and ix.dead == 0  # compacted back under flat_max
    _, got = ix.search(x[:5], 3)
    assert (got >= 120).all()


def test_save_and_load(tmp_path: Path) -> None:
    x = data(500)
    ix = VectorIndex(24, IndexParams(kind="hnsw", compact_min=10_000))
    ix.upsert(np.arange(500), x)
    ix.remove(np.arange(0, 500, 5))
    ix.save(tmp_path / "a.faiss", {"applied_seq": 42})
    back, meta = VectorIndex.load(tmp_path / "a.faiss", IndexParams(kind="hnsw"))
    assert meta == {"applied_seq": 42} and len(back) == 400 and back.kind == "hnsw"
    assert np.array_equal(back.search(x[:50], 10)[1], ix.search(x[:50], 10)[1])
