"""A memory read by its sentence that matters: facts told amid chatter stay findable.

People state facts inside longer messages ("Long day, the train was late again. Oh, my
dog's name is Rex, he's a goofball. What should I cook tonight?"), and the whole
message is the memory's text. Its one MiniLM vector averages the chatter in, and the
note line puts the fact far from the question. Replayed on ``memsvc bench memory``'s
plans (seed 13) with each telling between two chit-chat messages, the note held the
asked fact for 56 and 70 of 105 questions (trained / other kinds) and the student
recalled 0.46 / 0.56 (0.79 / 0.91 told plainly; ``scripts/note_chatter.py``).

So a memory of several sentences is scored by its sentence closest to the message:
with ``V_i`` (S_i, D) the unit vectors of memory i's sentences and ``q`` the message's,

    best_i = argmax_s V_i[s] · q,    row_i = V_i[best_i]

and the note shows that sentence alone when the text is longer than
:data:`LONG_MEMORY_CHARS` (a short memory keeps its own words, as the student was
trained). A memory of one sentence keeps its whole-text vector: nothing changes for it.
The forget path scores with the same rows (against the topic), so a fact told amid
chatter can be forgotten as well as read. On the same replay: the note held the fact
for 93 and 104 of 105, the student recalled 0.76 / 0.91, a forget removed the fact for
0.97 (0.81 before) and kept the others for 0.93 (0.90); told plainly, nothing moved
(recall 0.79 / 0.91 both ways; ``docs/bench/note-chatter``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memsvc.rag.feed import sentences

LONG_MEMORY_CHARS = 120  # longer memories show only their best sentence in a note


def memory_sentences(text: str) -> list[str]:
    """The sentences a memory is scored by (its whole text when it has one).

    >>> memory_sentences("Long day. Oh, my dog is Rex!  Anyway.")
    ['Long day.', 'Oh, my dog is Rex!', 'Anyway.']
    >>> memory_sentences("My dog is Rex")
    ['My dog is Rex']
    """
    parts = sentences(text)
    return parts if len(parts) > 1 else [text]


def focus(vectors: Sequence[np.ndarray], query: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """(rows (N, D), best sentence per memory): each memory's sentence vector closest to
    ``query`` (D,); ``vectors[i]`` is memory i's (S_i, D) unit sentence vectors.

    One matmul over all sentences, then the best of each memory's run (a turn scores
    every memory of the user: no Python loop over them)."""
    n = len(vectors)
    if not n:
        return np.zeros((0, query.shape[-1]), dtype=np.float32), []
    flat = np.concatenate(vectors)  # (ΣS_i, D)
    if len(flat) == n:  # one sentence each
        return flat, [0] * n
    lengths = np.fromiter((len(v) for v in vectors), dtype=np.int64, count=n)
    starts = np.zeros(n, dtype=np.int64)
    starts[1:] = np.cumsum(lengths)[:-1]
    owner = np.repeat(np.arange(n), lengths)
    order = np.lexsort((-(flat @ query), owner))  # by memory, its best sentence first
    first = order[starts]
    return flat[first], (first - starts).tolist()


def note_line(text: str, best: int) -> str:
    """What a note shows of a memory: its text, or its best sentence when long.

    >>> note_line("Short one. Still short.", 1)
    'Short one. Still short.'
    >>> note_line("x" * 130 + ". My dog is Rex.", 1)
    'My dog is Rex.'
    """
    if len(text) <= LONG_MEMORY_CHARS:
        return text
    return memory_sentences(text)[best]
