"""FAISS inner-product index over int64 ids, with deletes that can never come back.

Design (the same for both kinds):

- FAISS sees *labels* 0, 1, 2, ... in insertion order; ``_label_ids`` maps a label to its
  id. An update of an existing id adds the new vector under a new label.
- A delete (or the old label of an update) is a *tombstone*: every search passes FAISS an
  ``IDSelectorNot(IDSelectorBatch(dead labels))``, so a tombstoned label is never returned,
  whatever the index kind. HNSW cannot remove points, and even for the flat index this
  avoids O(N) ``remove_ids`` shifts.
- When tombstones pass ``compact_ratio`` of the live points the index is rebuilt from the
  live vectors (reconstructed from FAISS itself), which also keeps HNSW recall up.
- ``kind="auto"``: exact ``IndexFlatIP`` up to ``flat_max`` live points, HNSW above (the
  switch is a rebuild). HNSW (``IndexHNSWFlat``, inner product) was chosen over IVF: no
  training step, so it needs no representative sample before the first add. M=32,
  efConstruction=80, efSearch=128: on 1M real MiniLM keys recall@10 0.97 at 0.49 ms p50
  (docs/bench/slots.md).

Not thread-safe: :class:`storage.banks.BankIndex` serialises access.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np


@dataclass(frozen=True)
class IndexParams:
    """Knobs of :class:`VectorIndex`."""

    kind: str = "auto"  # auto | flat | hnsw
    flat_max: int = 20_000
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    compact_ratio: float = 0.2
    compact_min: int = 256


def as_matrix(x: object, dim: int) -> np.ndarray:
    """A C-contiguous float32 (n, dim) array from a tensor / array / list."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()  # type: ignore[union-attr]
    a = np.ascontiguousarray(np.asarray(x, dtype=np.float32).reshape(-1, dim))
    return a


class VectorIndex:
    """Top-k inner-product search over (id, vector) pairs; see the module docstring."""

    def __init__(self, dim: int, params: IndexParams | None = None) -> None:
        self.dim = dim
        self.params = params or IndexParams()
        self.kind = "flat" if self.params.kind in ("auto", "flat") else "hnsw"
        self._index = self._new_index(self.kind)
        self._label_ids = np.empty(0, dtype=np.int64)
        self._id_label: dict[int, int] = {}
        self._dead: set[int] = set()
        self._sel: object | None = None  # cached selector (kept alive for FAISS)

    def _new_index(self, kind: str) -> faiss.Index:
        if kind == "flat":
            return faiss.IndexFlatIP(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.params.ef_construction
        index.hnsw.efSearch = self.params.ef_search
        return index

    def __len__(self) -> int:
        return len(self._id_label)

    def __contains__(self, item_id: int) -> bool:
        return int(item_id) in self._id_label

    def ids(self) -> np.ndarray:
        """Live ids, ascending."""
        return np.array(sorted(self._id_label), dtype=np.int64)

    @property
    def dead(self) -> int:
        """Tombstoned labels still inside FAISS."""
        return len(self._dead)

    # ---- writes --------------------------------------------------------------------
    def upsert(self, ids: np.ndarray, vectors: object) -> None:
        """Add (or replace) vectors under ``ids``."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0:
            return
        vecs = as_matrix(vectors, self.dim)
        if np.unique(ids).size != ids.size:  # keep the last vector of a repeated id
            _, last = np.unique(ids[::-1], return_index=True)
            keep = np.sort(ids.size - 1 - last)
            ids, vecs = ids[keep], vecs[keep]
        self._tombstone([self._id_label[i] for i in ids.tolist() if i in self._id_label])
        start = self._index.ntotal
        self._index.add(vecs)
        self._label_ids = np.concatenate([self._label_ids, ids])
        for offset, item in enumerate(ids.tolist()):
            self._id_label[item] = start + offset
        self._maybe_rebuild()

    def remove(self, ids: np.ndarray) -> None:
        """Remove ``ids`` (unknown ids are ignored); they are never returned again."""
        labels = []
        for item in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            label = self._id_label.pop(item, None)
            if label is not None:
                labels.append(label)
        self._tombstone(labels)
        self._maybe_rebuild()

    def _tombstone(self, labels: list[int]) -> None:
        if labels:
            for label in labels:
                self._id_label.pop(int(self._label_ids[label]), None)
            self._dead.update(labels)
            self._sel = None

    # ---- reads ---------------------------------------------------------------------
    def search(self, queries: object, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (n, dim) -> scores (n, k) float32, ids (n, k) int64; pad -inf / -1."""
        q = as_matrix(queries, self.dim)
        n = q.shape[0]
        scores = np.full((n, k), -np.inf, dtype=np.float32)
        out = np.full((n, k), -1, dtype=np.int64)
        if len(self) == 0 or k <= 0 or n == 0:
            return scores, out
        kk = min(k, len(self))
        d, labels = self._index.search(q, kk, params=self._search_params())
        found = labels >= 0
        out[:, :kk] = np.where(found, self._label_ids[np.where(found, labels, 0)], -1)
        scores[:, :kk] = np.where(found, d, -np.inf)
        return scores, out

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (KeyError for unknown ids)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        missing = [i for i in ids.tolist() if i not in self._id_label]
        if missing:
            raise KeyError(f"unknown ids: {missing}")
        out = np.empty((ids.size, self.dim), dtype=np.float32)
        for row, item in enumerate(ids.tolist()):
            out[row] = self._index.reconstruct(self._id_label[item])
        return out

    def _search_params(self) -> faiss.SearchParameters | None:
        if not self._dead and self.kind == "flat":
            return None
        if self._dead and self._sel is None:
            dead = np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))
            batch = faiss.IDSelectorBatch(dead)
            self._sel = (batch, faiss.IDSelectorNot(batch))
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = self.params.ef_search
        else:
            params = faiss.SearchParameters()
        if self._dead:
            params.sel = self._sel[1]  # type: ignore[index]
        self._params_keepalive = params
        return params

    # ---- maintenance ---------------------------------------------------------------
    def _maybe_rebuild(self) -> None:
        p = self.params
        want = self.kind
        if p.kind == "auto":
            want = "hnsw" if len(self) > p.flat_max else "flat"
        crowded = len(self._dead) > max(p.compact_min, p.compact_ratio * len(self))
        if want != self.kind or crowded:
            self.compact(want)

    def compact(self, kind: str | None = None) -> None:
        """Rebuild from the live vectors, dropping tombstones (optionally changing kind)."""
        ids = self.ids()
        vecs = self.vectors(ids) if ids.size else np.empty((0, self.dim), np.float32)
        self.kind = kind or self.kind
        self._index = self._new_index(self.kind)
        self._label_ids = np.empty(0, dtype=np.int64)
        self._id_label, self._dead, self._sel = {}, set(), None
        if ids.size:
            self._index.add(vecs)
            self._label_ids = ids.copy()
            self._id_label = {item: label for label, item in enumerate(ids.tolist())}

    def memory_bytes(self) -> int:
        """Approximate bytes held: the serialised FAISS index plus the id maps."""
        return int(faiss.serialize_index(self._index).nbytes) + self._label_ids.nbytes * 3

    # ---- persistence ---------------------------------------------------------------
    def save(self, path: Path, meta: dict[str, int]) -> None:
        """Write index and label maps to ``path`` (+ ``.npz``) atomically; meta: ints."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        faiss.write_index(self._index, str(tmp))
        dead = np.fromiter(self._dead, dtype=np.int64, count=len(self._dead))
        with open(tmp.with_suffix(".npz.tmp"), "wb") as fh:
            np.savez(
                fh,
                label_ids=self._label_ids,
                dead=dead,
                dim=self.dim,
                kind=np.array(self.kind),
                **{k: np.int64(v) for k, v in meta.items()},
            )
        tmp.with_suffix(".npz.tmp").replace(path.with_suffix(".npz"))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, params: IndexParams | None = None) -> tuple[VectorIndex, dict]:
        """Inverse of :meth:`save`: the index and its meta dict."""
        with np.load(path.with_suffix(".npz")) as z:
            data = {k: z[k] for k in z.files}
        self = cls(int(data.pop("dim")), params)
        self.kind = str(data.pop("kind"))
        self._index = faiss.read_index(str(path))
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = self.params.ef_search
        self._label_ids = data.pop("label_ids").astype(np.int64)
        self._dead = set(data.pop("dead").tolist())
        self._id_label = {
            int(item): label
            for label, item in enumerate(self._label_ids.tolist())
            if label not in self._dead
        }
        return self, {k: int(v) for k, v in data.items()}
