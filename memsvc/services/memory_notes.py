"""Memory for a model without a Retention Layer: memories kept as text, read as a note.

A model without memory layers (the distilled ``smollm2-hybrid``) has no slots to read,
but its users still expect what they said last week to be there. So, for such a model:

- **write**: a chat turn that states something about the user ("My sister is called
  Ann.") is kept as a memory whose text is the user message (its provenance, as for a
  slot memory), with no slots, in the turn's own commit. Questions, forget requests and
  messages that say nothing about the user are not kept (:func:`worth_keeping`);
- **read**: before the user turn is fed, the memories of the session's namespace that
  the message is about are picked by their text (MiniLM cosine with the message, the
  same embedder the forget path uses, the message moved by the query adapter of
  :mod:`memsvc.rag.query_adapter`; :func:`pick`) and fed as one system turn::

      <|system|>What the user told you in earlier conversations:
      - I live in Lyon.
      - Actually, I moved to Porto.<|end|>

  Oldest first, so an update sits nearest the question. Memories of the session itself
  are already in its state and are not repeated. A session's first message that asks
  for a fact about the user (:func:`asks_about_user`) and matches no memory gets the
  note "(nothing about this)", so the model says it does not know instead of inventing;
- **forget**: "Please forget my dog's name." retires the memories whose text the topic
  names, in the turn's commit; ``usage.forgotten_memories`` lists them. There is no
  model read to help, so the topic is asked as the question a note read would answer
  ("What is my dog's name?": a question finds its statement far better than a bare
  noun phrase does); the best match names the fact, and it goes with the memories that
  tell it again or update it (:func:`forget_ids`: close to the topic and to the best
  match's own text), not with other facts that merely score as close to the topic.

The note becomes part of the session's state, like a fed passage; the stored messages
do not hold it, so a state rebuilt from them (model switch) lacks old notes, and the
next turn reads them again.

Thresholds were chosen on ``memsvc bench memory``'s plans of seeds 7 and 21 (the bench
reports seed 13). Reads: a question's own fact scores 0.27 at the 5th percentile,
another fact of the same user 0.23 at the 90th, and the fact is the top one in 120 of
120. Forgets (70 requests each): the named fact removed in 0.97 and 0.99, the others
kept in 0.93 and 0.95; a request naming the updated fact removed both its tellings in
0.94 and 0.79 (the topic's margin alone: 0.99 and 0.99, 0.95 and 0.99, but 0.59 and
0.54; ``scripts/forget_precision.py``, ``docs/bench/forget``). Followers (:func:`pick`)
at cosine ≥ 0.2 with a picked memory held the update for 1.00 and 1.00 of the "latest
value" questions (none: 0.90 and 0.81), but most followers were other facts (MiniLM puts
"These days I work for X." near "Lately I love the band Y."): the note held the asked
fact alone for only 0.70 and 0.74 of the questions, and a common misread of the student
is a distractor's value ("Your best friend is Dolbrul." beside "My cat is called
Dolbrul."). A follower must now also score ≥ 0.15 with the message, and kept memories
lie within 0.1 of the best: updates held for 1.00 and 0.99, kept facts 0.98 and 0.99
(unchanged), the fact alone 0.81 and 0.86 (``scripts/note_pick_coverage.py``,
``docs/bench/note-pick``). Through REST on stage 8, misses naming another told value went
18 → 14 (seed 13, no rate fell) and 12 → 6 (seed 21; ``docs/bench/memory-hybrid``).

Those thresholds are stock MiniLM's (``MEMSVC_MEMORY_QUERY_ADAPTER=none``). As served, the
read moves the message by the query adapter (:mod:`memsvc.rag.query_adapter`) and uses
the floors it carries (0.12; followers ≥ 0.05 to the message): on seeds 7 and 21 the
note held the asked fact for 0.986 and 0.995 of the questions (stock: 0.957 both), alone
for 0.890 and 0.912, and was empty for a never-told kind for 0.843 and 0.829 and for a
chit-chat message for 0.994 and 0.983 (stock: 0.923 and 0.914).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from memsvc.services.forget import ForgetRequest, parse_forget
from memsvc.services.forget_match import Candidate, candidates, chosen
from memsvc.services.memory import MemoryManager
from memsvc.services.memory_focus import focus, note_line
from memsvc.services.note_check import NoteLine
from memsvc.store import (
    TURN_USER_MESSAGE,
    MemoryRec,
    PendingMemory,
    SessionRec,
    TextMemories,
    new_memory_id,
)
from retnet_core.memory_note import note_text, nothing_note

TOP_K = 4  # memories in one note
MIN_SIMILARITY = 0.25  # below: not what the message is about
MARGIN = 0.1  # kept: within this of the best memory's similarity
FOLLOW_SIMILARITY = 0.2  # a later memory this close to a picked one joins it (an update)
FOLLOW_QUERY_SIMILARITY = 0.15  # ... when at least this close to the message too
FORGET_QUESTION = "What is {topic}?"
FORGET_MIN_SIMILARITY = 0.15
FORGET_MARGIN = 0.1
# a forget takes, with its best match, the memories whose text is this close to the
# best one's: LINKED when within FORGET_MARGIN of it on the topic, RETOLD when within
# FORGET_RETOLD_MARGIN (the same fact told again or updated in other words)
FORGET_LINKED = 0.2
FORGET_RETOLD = 0.3
FORGET_RETOLD_MARGIN = 0.2

_FIRST_PERSON = re.compile(r"\b(i|i'm|i've|i'd|i'll|me|my|mine|myself|we|our|us)\b", re.I)
# "Note for later: ...", "Remember that ...": asked to be kept, in any person
_KEEP_ASKED = re.compile(r"\b(note|remember|keep in mind|for later|don't forget)\b", re.I)
# "Honestly Leslalex is the best band ever.": a taste stated without "I" or "my" is still
# the user's (``memsvc bench memory`` lost every fact told so: never kept)
_TASTE = re.compile(
    r"\b(best|worst|favou?rite|love|hate|prefer|adore|obsessed|can't stand)\b", re.I
)
_ASKS = re.compile(
    r"^\s*(what|who|where|when|which|why|how|do you|did i|do i|can you|could you|"
    r"remind me|tell me|have i|am i|is my|are my)\b",
    re.I,
)

# "What's my cat called?", "Sorry, remind me where I live?", "Who am I again?": a question
# for a fact about the user. Advice and requests ("What should I cook?", "Can you help me
# with my essay?") are not: a "nothing about this" note must not make the model refuse them
_FACT_QUESTION = re.compile(
    r"^\s*(?:\w+[,:]\s+)?(?:(?:in|at|on|from|for|to|with) )?"
    r"(?:what|who|where|which|when|do you (?:know|remember)|remind me|"
    r"did i|do i|am i|have i|is my|are my)\b[^?]*\b(?:i|me|my|mine|we|our|us)\b",
    re.I,
)
_ADVICE = re.compile(
    r"\b(should|could|would|shall|can|might|need|have to|recommend|suggest|think|help)\b",
    re.I,
)


def asks_about_user(text: str) -> bool:
    """Whether a message asks for a fact about the user (then, when no memory answers
    it, the model is told so rather than left to invent one).

    >>> asks_about_user("What's my favourite colour?"), asks_about_user("Who am I again?")
    (True, True)
    >>> asks_about_user("Sorry, remind me what my name is?")
    True
    >>> asks_about_user("What should I cook tonight?"), asks_about_user("My cat is Tom.")
    (False, False)
    >>> asks_about_user("What is the capital of France?")
    False
    """
    stripped = text.strip()
    asked = stripped.endswith("?") or stripped.lower().startswith("remind me")
    return asked and bool(_FACT_QUESTION.match(text)) and not _ADVICE.search(text)


def worth_keeping(text: str) -> bool:
    """Whether a user message is kept as a memory: a statement about the user.

    >>> worth_keeping("My sister is called Ann.")
    True
    >>> worth_keeping("What is my sister called?"), worth_keeping("Remind me where I live")
    (False, False)
    >>> worth_keeping("Please forget my dog's name."), worth_keeping("The sky is blue.")
    (False, False)
    >>> worth_keeping("Note for later: the gate code is 4471.")
    True
    >>> worth_keeping("Honestly Leslalex is the best band ever.")
    True
    """
    words = text.split()
    if len(words) < 3 or text.rstrip().endswith("?") or _ASKS.match(text):
        return False
    about_user = _FIRST_PERSON.search(text) or _KEEP_ASKED.search(text) or _TASTE.search(text)
    return parse_forget(text) is None and about_user is not None


def _opens(session: SessionRec) -> bool:
    """A session's first turn with memory on: there the "nothing about this" note may
    be fed. Later turns have the conversation in their state, and a fact told there
    need not have been kept as a memory ("Hi, I am Ada." then "What is my name?")."""
    return session.message_count == 0 and MemoryManager.namespace(session) is not None


@dataclass(frozen=True)
class Scored:
    """A memory, its cosine with the message and what a note shows of it (its text, or
    its sentence closest to the message when long: :mod:`memsvc.services.memory_focus`)."""

    memory: MemoryRec
    similarity: float
    line: str = ""

    @property
    def note_line(self) -> str:
        return self.line or self.memory.text


def pick(
    memories: Sequence[MemoryRec],
    vectors: np.ndarray,
    query: np.ndarray,
    k: int = TOP_K,
    min_similarity: float = MIN_SIMILARITY,
    margin: float = MARGIN,
    follow: float | None = FOLLOW_SIMILARITY,
    follow_query: float = FOLLOW_QUERY_SIMILARITY,
) -> list[Scored]:
    """The memories a message is about, oldest first.

    ``vectors`` (N, D) and ``query`` (D,) are unit-norm; ``memories`` are in the rows'
    order; ``sim = vectors · query``. Kept: the ``k`` most similar with
    ``sim ≥ max(min_similarity, best − margin)``; then their **followers**: for each kept
    memory ``i``, every memory ``j`` written after it with ``vectors[j] · vectors[i] ≥ follow``
    and ``sim[j] ≥ follow_query`` (at most ``k`` of them, the closest to a kept one first;
    ``follow=None``: none).

    Why followers: an update is often worded unlike the question it answers ("Actually,
    I go by Thothku these days." scores 0.18 with "Sorry, remind me what my name is?",
    under the floor) but like the memory it changes (0.39 with "People usually
    call me Vunfithkan."). Without it the note holds the old value alone, and the model
    answers with it. Why the second floor: MiniLM also puts unrelated later facts near a
    kept one ("Lately I've been working for Lumatek." 0.28 from "Lately I keep playing
    Kestrel Drive, my favourite band."), and the student may read a distractor's value as
    the answer. On the bench's seeds 7 and 21, 101 of 210 such followers scored under
    0.15 with the message, and 4 of 46 updates.
    A follower's ``similarity`` is its cosine with the message.
    """
    if not memories:
        return []
    sims = vectors @ query
    floor = max(min_similarity, float(sims.max()) - margin)
    kept = [int(i) for i in np.argsort(-sims, kind="stable")[:k] if sims[i] >= floor]
    if kept and follow is not None:
        kept += _followers(memories, vectors, kept, follow, k, sims >= follow_query)
    chosen = [Scored(memories[i], float(sims[i])) for i in kept]
    return sorted(chosen, key=lambda s: (s.memory.created_at, s.memory.id))


def _followers(
    memories: Sequence[MemoryRec],
    vectors: np.ndarray,
    kept: list[int],
    follow: float,
    k: int,
    eligible: np.ndarray,
) -> list[int]:
    """Rows of ``eligible`` (N,) memories written after a kept one with cosine ≥
    ``follow`` to it, not kept already: at most ``k``, the closest first."""
    when = sorted(range(len(memories)), key=lambda i: (memories[i].created_at, memories[i].id))
    rank = np.empty(len(memories), dtype=np.int64)
    rank[when] = np.arange(len(memories))
    close = vectors @ vectors[kept].T  # (N, len(kept)): each row against each kept one
    later = rank[:, None] > rank[kept][None, :]
    linked = later & (close >= follow) & eligible[:, None]
    best = np.where(linked, close, -np.inf).max(axis=1)
    best[kept] = -np.inf
    return [int(j) for j in np.argsort(-best, kind="stable")[:k] if np.isfinite(best[j])]


def forget_ids(
    texts: Mapping[str, str],
    vectors: np.ndarray,
    topic: np.ndarray,
    linked: float = FORGET_LINKED,
    retold: float = FORGET_RETOLD,
    retold_margin: float = FORGET_RETOLD_MARGIN,
) -> list[str]:
    """Ids of the memories a topic forget removes, best match first.

    ``texts``: id -> text, in the order of the unit-norm rows of ``vectors`` (N, D);
    ``topic`` (D,): the topic asked as a question. The best match names the fact
    (:func:`~memsvc.services.forget_match.chosen`). With ``link(m) = cos(m, best)`` on
    the memories' own text, a memory ``m`` at similarity ``≥ FORGET_MIN_SIMILARITY`` to
    the topic goes with it when

    - it is within ``FORGET_MARGIN`` of the best on the topic and ``link(m) ≥ linked``:
      not another fact that merely scores as close ("Please forget my name." took
      "...my sister, she's called X" when the topic alone decided), or
    - it is within ``retold_margin`` of the best on the topic and ``link(m) ≥ retold``:
      the same fact told again or updated in other words ("I live in Lyon.", "Actually,
      we moved to Porto."), which the topic alone left behind in two forgets of an
      updated fact out of five (``scripts/forget_precision.py``).
    """
    scored = candidates(texts, topic, vectors, {})
    near = chosen(scored, FORGET_MIN_SIMILARITY, FORGET_MARGIN)
    if not near:
        return []
    row = {memory_id: i for i, memory_id in enumerate(texts)}
    best, top = vectors[row[near[0].memory_id]], near[0].similarity
    near_ids = {c.memory_id for c in near}

    def goes(c: Candidate) -> bool:
        link = float(vectors[row[c.memory_id]] @ best)
        if c.similarity < FORGET_MIN_SIMILARITY:
            return False
        return (c.memory_id in near_ids and link >= linked) or (
            c.similarity >= top - retold_margin and link >= retold
        )

    first = near[0].memory_id
    gone = sorted((c for c in scored if goes(c)), key=lambda c: (c.memory_id != first, -c.score))
    return [c.memory_id for c in gone]


def _age(m: MemoryRec) -> tuple:
    return (m.created_at, m.id)


def _quoted_line(text: str, best: int) -> str:
    """A removed memory as its receipt quotes it: its text, or its sentence about the
    topic when long ("... my dog is called Rex. ...")."""
    line = note_line(text, best)
    return line if line == text else f"... {line} ..."


@dataclass(frozen=True)
class NoteTurn:
    """What memory does in one turn: the note to feed (``""``: none), the memories it
    holds, the ones a forget request names and the memory the message makes."""

    note: str = ""
    read: tuple[str, ...] = ()
    forgotten: tuple[str, ...] = ()
    new: PendingMemory | None = None
    forgotten_lines: tuple[str, ...] = ()  # what the forget's reply quotes of each
    lines: tuple[NoteLine, ...] = ()  # the note's lines, in its order (read, with scores)

    def without(self, out: Sequence[NoteLine]) -> NoteTurn:
        """The same turn with the lines ``out`` left out of its note (and of ``read``)."""
        gone = {line.memory_id for line in out}
        lines = tuple(line for line in self.lines if line.memory_id not in gone)
        return replace(
            self,
            note=note_text([line.text for line in lines]),
            read=tuple(line.memory_id for line in lines),
            lines=lines,
        )

    def changes(self, tenant_id: str) -> TextMemories | None:
        """The turn's commit of them (None: nothing to write)."""
        if self.new is None and not self.forgotten:
            return None
        new = () if self.new is None else ((self.new, "chat turn"),)
        return TextMemories(tenant_id, new, tuple((m, "forget") for m in self.forgotten))


class NoteMemory:
    """Text memories of a model without memory layers (see the module docstring).

    Every method runs on the thread pool: SQL reads and the embedder, no model.
    """

    def __init__(
        self, store: Any, embeddings: Any, cached_namespaces: int = 1024, adapter: Any = None
    ) -> None:
        self.store = store
        self.embeddings = embeddings  # memsvc.services.memories.EmbeddingCache
        # memsvc.rag.query_adapter.QueryAdapter: moves a read's message toward the
        # statements that answer it, with the pick thresholds of its scale (None: stock)
        self.adapter = adapter
        # (tenant, namespace) -> (version, its live memories): a turn asks the database
        # only for the version (one indexed query) and reloads the memories when it moved
        self._held: OrderedDict[tuple[str, str], tuple[tuple, list[MemoryRec]]] = OrderedDict()
        self._held_max = cached_namespaces
        self._lock = threading.Lock()

    @staticmethod
    def namespace(session: SessionRec) -> str | None:
        """``scope:id`` of the session's memory (as slot memories), None for ``none``."""
        ns = MemoryManager.namespace(session)
        return None if ns is None else f"{ns[0]}:{ns[1]}"

    def _live(self, session: SessionRec) -> list[MemoryRec]:
        """The namespace's live memories with text, oldest first: held in-process and
        reloaded only when :meth:`Store.namespace_version` moved (another replica's
        writes and forgets included)."""
        ns = self.namespace(session)
        if ns is None:
            return []
        key = (session.tenant_id, ns)
        version = self.store.namespace_version(*key)
        with self._lock:
            held = self._held.get(key)
            if held is not None and held[0] == version:
                self._held.move_to_end(key)
                return held[1]
        live = [m for m in self.store.namespace_memories(*key) if m.text]
        with self._lock:
            self._held[key] = (version, live)
            self._held.move_to_end(key)
            while len(self._held) > self._held_max:
                self._held.popitem(last=False)
        return live

    def read(self, session: SessionRec, content: str) -> tuple[list[Scored], bool]:
        """(the memories ``content`` is about from other sessions of the namespace,
        whether any memory at all, the session's own included, is about it)."""
        live = self._live(session)
        if not live:
            return [], False
        query = self.embeddings.embedder.embed([content])[0]
        settings: dict[str, float] = {}
        if self.adapter is not None:
            query, settings = self.adapter.apply(query), self.adapter.pick_settings()
        rows, best = focus(self.embeddings.sentence_vectors(live), query)
        about = pick(live, rows, query, **settings)
        at = {m.id: b for m, b in zip(live, best, strict=True)}
        # the session's own memories are in its state already: matched, not repeated
        noted = [s for s in about if s.memory.session_id != session.id]
        # only the picked memories are split again for their line, not every live one
        return [replace(s, line=note_line(s.memory.text, at[s.memory.id])) for s in noted], bool(
            about
        )

    def forget(self, session: SessionRec, request: ForgetRequest) -> tuple[list[str], list[str]]:
        """(ids, what to quote of each) of the memories a forget request names (topic: by
        their text; last: the newest; all: every one). A long memory is quoted by its
        sentence closest to the topic, between ellipses."""
        live = self._live(session)
        if not live:
            return [], []
        if request.scope in ("all", "last"):
            gone = live if request.scope == "all" else [max(live, key=_age)]
            return [m.id for m in gone], [m.text for m in gone]
        asked = FORGET_QUESTION.format(topic=request.topic)
        topic = self.embeddings.embedder.embed([asked])[0]
        rows, best = focus(self.embeddings.sentence_vectors(live), topic)
        ids = forget_ids({m.id: m.text for m in live}, rows, topic)
        at = {m.id: (m.text, b) for m, b in zip(live, best, strict=True)}
        return ids, [_quoted_line(*at[i]) for i in ids]

    def turn(self, session: SessionRec, content: str, may_write: bool) -> NoteTurn:
        """A chat turn's memory: a forget request retires what it names and reads
        nothing; any other message reads its note and, when ``may_write`` and it is
        worth keeping, becomes a memory."""
        request = parse_forget(content)
        if request is not None:
            ids, lines = self.forget(session, request)
            return NoteTurn(forgotten=tuple(ids), forgotten_lines=tuple(lines))
        read, matched = self.read(session, content)
        new = self.pending(session, content) if may_write else None
        note = note_text([s.note_line for s in read])
        if not matched and _opens(session) and asks_about_user(content):
            note = nothing_note()
        lines = tuple(NoteLine(s.memory.id, s.note_line, s.similarity) for s in read)
        return NoteTurn(note, tuple(s.memory.id for s in read), (), new, lines=lines)

    def write(self, tenant_id: str, user_id: str, text: str, fields: dict[str, Any]) -> tuple:
        """An explicit write (API) of ``text`` as a memory of ``user:<user_id>``:
        (``stored`` or ``merged``, the memory). The same live text is not kept twice."""
        namespace = f"user:{user_id}"
        dup = self.store.find_memory_text(tenant_id, namespace, text)
        if dup is not None:
            return "merged", self.store.memory_merged(tenant_id, dup, "api write: same text")
        new = PendingMemory(
            id=new_memory_id(),
            tenant_id=tenant_id,
            namespace=namespace,
            user_id=user_id,
            span=(0, len(text)),
            text=text,
            collection=fields.get("collection"),
            key=fields.get("key"),
        )
        self.store.commit_text_memories(TextMemories(tenant_id, ((new, "api write"),)))
        return "stored", self.store.get_memory(tenant_id, new.id)

    def pending(self, session: SessionRec, content: str) -> PendingMemory | None:
        """The memory a turn's user message makes, or None (not worth keeping)."""
        ns = self.namespace(session)
        if ns is None or not worth_keeping(content):
            return None
        return PendingMemory(
            id=new_memory_id(),
            tenant_id=session.tenant_id,
            namespace=ns,
            user_id=ns[len("user:") :] if ns.startswith("user:") else None,
            session_id=session.id,
            message_id=TURN_USER_MESSAGE,
            span=(0, len(content)),
        )
