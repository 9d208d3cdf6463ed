"""A synthetic LongMemEval-format set (``memsvc bench longmemeval --generate N``).

Every instance is one user. Its facts are invented held-out values (never in the
shipped model's training data) told in *evidence* sessions, which sit among chit-chat
*filler* sessions; the filler count grows linearly from ``0`` (first instance) to
``max_filler`` (last), so the ``full`` variant has histories of increasing length. The
question types cycle in this order:

- ``single-session-user``: one evidence session tells one fact; the question asks it.
- ``knowledge-update``: one session tells a fact, a later one a new value of it; the
  answer is the new value (both sessions are evidence).
- ``multi-session``: two or three sessions each tell a different fact; the question
  asks one of them (all are evidence, so the oracle variant keeps the distractors).
  LongMemEval's own multi-session questions aggregate across sessions ("how many ...");
  these only need the right one of several sessions.
- ``single-session-user`` with a ``_abs`` id: the question asks something never told;
  the right answer declines.

Deterministic: the same ``(n, seed)`` gives the same file.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from memsvc.bench.longmemeval_data import format_date

KINDS = ("single-session-user", "knowledge-update", "multi-session", "abstention")
START = datetime(2023, 5, 1, 9, 0, tzinfo=UTC)
FILLER_TURNS = 6  # messages per filler session
FILLER_CHARS = 300  # characters per filler message


def _values_and_chitchat(seed: int) -> tuple[dict[str, list[str]], list[list[tuple[str, str]]]]:
    """Held-out values per kind, and filler conversations from the held-out chit-chat split."""
    from retnet_core.training.data import load_chitchat, split_conversations, words_of
    from retnet_core.training.dialogues import ValuePools

    splits = split_conversations(load_chitchat())
    train_words = words_of(m.content for c in splits["train"] for m in c.messages)
    values = ValuePools.build(exclude=train_words).heldout
    filler = []
    for conv in splits["test"]:
        turns = [(m.role, m.content[:FILLER_CHARS]) for m in conv.messages[:FILLER_TURNS]]
        if len(turns) >= 2 and turns[0][0] == "user":
            filler.append(turns)
    random.Random(seed).shuffle(filler)
    return values, filler


def _turns(pairs: list[tuple[str, str]], answer_at: set[int] = frozenset()) -> list[dict]:
    """[(user, assistant)] → LongMemEval turns; user turns in ``answer_at`` get has_answer."""
    out: list[dict[str, Any]] = []
    for k, (user, reply) in enumerate(pairs):
        u: dict[str, Any] = {"role": "user", "content": user}
        if k in answer_at:
            u["has_answer"] = True
        out += [u, {"role": "assistant", "content": reply}]
    return out


class _Builder:
    """Evidence sessions, questions and answers of one instance (one rng)."""

    def __init__(self, rng: random.Random, values: dict[str, list[str]]) -> None:
        from retnet_core.training import dialogues as d

        self.rng, self.values, self.d = rng, values, d

    def value(self, attr: str) -> str:
        return self.rng.choice(self.values[self.d.ATTRIBUTES[attr].value_kind])

    def tell(self, attr: str, value: str, update: bool = False) -> list[dict]:
        """A session telling one fact (maybe after small talk), acknowledged."""
        a = self.d.ATTRIBUTES[attr]
        pairs = []
        if self.rng.random() < 0.5:
            pairs.append(self.rng.choice(self.d.SMALLTALK))
        said = self.rng.choice(a.states).format(v=value)
        said = f"Some news: {said}" if update else said
        pairs.append((said, self.rng.choice(self.d.ACKS)))
        return _turns(pairs, {len(pairs) - 1})

    def ask(self, attr: str) -> str:
        return self.rng.choice(self.d.ATTRIBUTES[attr].asks)

    def build(self, kind: str) -> tuple[list[list[dict]], str, str, str]:
        """(evidence sessions in order, question, answer, question_type) of ``kind``."""
        attrs = self.rng.sample(sorted(self.d.ATTRIBUTES), 3)
        if kind == "single-session-user":
            v = self.value(attrs[0])
            return [self.tell(attrs[0], v)], self.ask(attrs[0]), v, kind
        if kind == "knowledge-update":
            old, new = self.value(attrs[0]), self.value(attrs[0])
            while new == old:
                new = self.value(attrs[0])
            told = [self.tell(attrs[0], old), self.tell(attrs[0], new, update=True)]
            return told, self.ask(attrs[0]), new, kind
        if kind == "multi-session":
            k = self.rng.randint(2, 3)
            vals = [self.value(a) for a in attrs[:k]]
            pick = self.rng.randrange(k)
            told = [self.tell(a, v) for a, v in zip(attrs[:k], vals, strict=True)]
            return told, self.ask(attrs[pick]), vals[pick], kind
        if kind == "abstention":  # told one thing, asked another
            v = self.value(attrs[0])
            yours = self.d.ATTRIBUTES[attrs[1]].yours
            answer = f"You did not mention {yours}."
            return [self.tell(attrs[0], v)], self.ask(attrs[1]), answer, "single-session-user"
        raise ValueError(f"unknown kind {kind!r}")


def _place(rng: random.Random, evidence: int, filler: int) -> list[int]:
    """Order of sessions: evidence indices 0..e-1 keep their order among filler (-1)."""
    slots = sorted(rng.sample(range(evidence + filler), evidence))
    order = [-1] * (evidence + filler)
    for k, pos in enumerate(slots):
        order[pos] = k
    return order


def generate(n: int, seed: int = 0, max_filler: int = 8) -> list[dict[str, Any]]:
    """``n`` instances in LongMemEval's format (see module doc)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    values, filler = _values_and_chitchat(seed)
    out = []
    next_filler = 0
    for i in range(n):
        rng = random.Random(f"lme:{seed}:{i}")
        kind = KINDS[i % len(KINDS)]
        qid = f"synth_{seed}_{i:04d}" + ("_abs" if kind == "abstention" else "")
        told, question, answer, qtype = _Builder(rng, values).build(kind)
        n_filler = (i * max_filler) // max(n - 1, 1)
        ids, dates, sessions, answer_ids = [], [], [], []
        when = START + timedelta(days=i)
        for k in _place(rng, len(told), n_filler):
            when += timedelta(hours=rng.randint(1, 30), minutes=rng.randint(0, 59))
            if k >= 0:
                sid = f"answer_{qid}_{k + 1}"
                answer_ids.append(sid)
                sessions.append(told[k])
            else:
                sid = f"filler_{qid}_{len(ids) + 1}"
                pairs = filler[next_filler % len(filler)] if filler else []
                next_filler += 1
                sessions.append([{"role": r, "content": c} for r, c in pairs])
            ids.append(sid)
            dates.append(format_date(when))
        out.append(
            {
                "question_id": qid,
                "question_type": qtype,
                "question": question,
                "answer": answer,
                "question_date": format_date(when + timedelta(hours=2)),
                "haystack_session_ids": ids,
                "haystack_dates": dates,
                "haystack_sessions": sessions,
                "answer_session_ids": answer_ids,
            }
        )
    return out
