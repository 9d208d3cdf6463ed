"""Which memories a chat forget request names: their own text first, the model's read second.

"Please forget my dog's name." must remove the memories of that fact and nothing else,
whatever a small model's attention happens to do. Each candidate memory (one with slots
in the session's banks) is scored on two signals:

- ``similarity``: the cosine of the request's topic ("my dog's name") and the memory's
  own text, both embedded by the service's sentence embedder (MiniLM). This is the
  provenance: what the user actually said, kept with every memory.
- ``read``: the share of the request's memory read (its ``<|end|>`` token, the read the
  model was trained to point at the fact to forget) that lands on the memory's slots.

Questions the user asked are memories too, but state no fact: they are not candidates.

``score = similarity + READ_WEIGHT · read``. The best-scoring memory names the fact; it
and every memory with ``score ≥ MIN_SCORE`` whose similarity is within ``MARGIN`` of
the best one's are removed: a fact told twice, or told then updated ("my dog is Rex",
"actually he's called Max"), goes entirely; an unrelated memory, well below, stays.
The thresholds were chosen on ``memsvc bench memory``'s forget requests (everyday
phrasings, invented values, which MiniLM embeds poorly: "my car" against "I drive a
Zirnirly, it's old but reliable.") and checked on three other seeds of it (210
requests): the named fact removed in 200 (0.95); 24 requests also took one other fact
(of 420 others: 0.94 kept). ``MIN_SCORE`` 0.35 removed the named fact in only 172.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

READ_WEIGHT = 0.25
MIN_SCORE = 0.25
MARGIN = 0.15


@dataclass(frozen=True)
class Candidate:
    """One memory that could be meant: its id, text and the two signals."""

    memory_id: str
    text: str
    similarity: float
    read: float

    @property
    def score(self) -> float:
        return self.similarity + READ_WEIGHT * self.read


def read_shares(memory_ids: Sequence[str | None], probs: Iterable[float]) -> dict[str, float]:
    """Read probability per memory: the sum over its slots (slots without one skipped).

    ``memory_ids[i]`` is slot i's memory and ``probs[i]`` the read's weight on slot i.
    """
    shares: dict[str, float] = {}
    for memory_id, p in zip(memory_ids, probs, strict=True):
        if memory_id is not None:
            shares[memory_id] = shares.get(memory_id, 0.0) + float(p)
    return shares


def states_a_fact(text: str) -> bool:
    """False for a question ("What instrument am I learning?"): asking about a fact holds
    no value of it, and a question scores closest to a forget topic that words the same
    fact ("the instrument I'm learning"), so it would be chosen instead of the memory
    that told the value (measured: 28 of 70 forgets in ``memsvc bench memory``)."""
    return not text.rstrip().endswith("?")


def candidates(
    texts: Mapping[str, str],
    topic_vector: np.ndarray,
    text_vectors: np.ndarray,
    shares: Mapping[str, float],
) -> list[Candidate]:
    """Score every memory of ``texts`` (id -> text, in the order of ``text_vectors``' rows).

    Vectors are unit-norm: ``topic_vector`` (D,), ``text_vectors`` (N, D).
    """
    sims = text_vectors @ topic_vector
    return [
        Candidate(memory_id, text, float(sim), shares.get(memory_id, 0.0))
        for (memory_id, text), sim in zip(texts.items(), sims, strict=True)
        if states_a_fact(text)
    ]


def chosen(
    scored: Sequence[Candidate], min_score: float = MIN_SCORE, margin: float = MARGIN
) -> list[Candidate]:
    """The candidates a forget removes, best first (see the module docstring).

    The best-scoring candidate names the fact; every candidate that scores at least
    ``min_score`` and whose text is within ``margin`` of the best one's similarity is the
    same fact told again (the read may favour one telling; the text decides "same").
    """
    if not scored:
        return []
    best = max(scored, key=lambda c: c.score)
    if best.score < min_score:
        return []
    keep = [c for c in scored if c.score >= min_score and c.similarity >= best.similarity - margin]
    return sorted(keep, key=lambda c: -c.score)
