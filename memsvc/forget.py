"""Forget requests said in chat: "Please forget my dog's name." evicts that memory.

A user who tells the assistant to forget something expects it gone from every later
session, not only that the reply says so. The feedback endpoint already removes slots
by message or text; this module does the same for a request made in plain chat:

1. :func:`parse_forget` recognises the request and extracts its topic ("my dog's
   name"), or ``everything`` / the last thing said ("forget that");
2. :func:`pick_forgotten` chooses the slots: for a topic, the slot whose provenance
   text is nearest to the request in sentence-embedding space (all-MiniLM-L6-v2, the
   embedder RAG already loads), if it is near enough; for "that", the newest slot.

The turn then runs on the bank without those slots, so the model's own reply already
reads a memory that no longer holds them, and nothing of the request is written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# "forget", but not "don't forget" / "never forget" / "I forgot"
_VERB = re.compile(r"(?<!n't )(?<!not )(?<!never )\b(forget|erase|delete)\b", re.IGNORECASE)
_ALL = re.compile(r"^(everything|all|all of (it|that)|all (my|about me)|everything about me)\b")
_LAST = re.compile(r"^(that|it|this|what i (just )?(said|told you))$")
_FILLER = re.compile(r"^(about|the fact that|that)\s+", re.IGNORECASE)

#: A topic matches a slot only above this cosine (MiniLM); below it nothing is removed.
MIN_SIMILARITY = 0.2


@dataclass(frozen=True)
class ForgetRequest:
    """What a forget request asks for: ``scope`` is topic, last or all."""

    scope: str
    topic: str = ""


def parse_forget(text: str) -> ForgetRequest | None:
    """The forget request in ``text``, or None when the message asks for none.

    >>> parse_forget("Please forget my dog's name.")
    ForgetRequest(scope='topic', topic="my dog's name")
    >>> parse_forget("Don't forget my dog's name.") is None
    True
    """
    match = _VERB.search(text)
    if match is None:
        return None
    rest = text[match.end() :].strip().rstrip(".!?").strip()
    rest = _FILLER.sub("", rest).strip()
    low = rest.lower()
    if not low or _LAST.match(low):
        return ForgetRequest("last")
    if _ALL.match(low):
        return ForgetRequest("all")
    return ForgetRequest("topic", rest)


def pick_forgotten(
    request: ForgetRequest,
    records: Sequence[Any],
    embed: Callable[[Sequence[str]], np.ndarray] | None,
    min_similarity: float = MIN_SIMILARITY,
) -> list[Any]:
    """The slot records ``request`` removes, out of ``records`` (with ``.text``).

    topic: the one nearest slot by cosine of MiniLM embeddings, and any slot with the
    same text (a fact said twice is one memory); last: the newest slot; all: every one.
    """
    if not records:
        return []
    if request.scope == "all":
        return list(records)
    if request.scope == "last":
        return [max(records, key=lambda r: r.created_tick)]
    texts = [r.text or "" for r in records]
    if embed is None or not any(texts):
        return []
    vectors = np.asarray(embed([request.topic, *texts]), dtype=np.float32)
    sims = vectors[1:] @ vectors[0]  # the embedder's vectors are unit length
    best = int(np.argmax(sims))
    if sims[best] < min_similarity:
        return []
    return [r for r in records if (r.text or "") == texts[best]]
