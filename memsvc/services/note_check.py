"""Note lines the model cannot answer from are left out: a check by the model's own read.

A memory note for a question about the user often holds, beside the line that answers
it, lines about other facts (MiniLM puts "My cat is called Sinthou." near "My dog's name
is Veslus."). The distilled student then sometimes names the other line's value ("Your
dog is called Sinthou."): on ``memsvc bench memory``'s seed 13, 6 of its 13 misses of
trained kinds. The pick's scores cannot tell such a line from an update worded unlike
its fact ("Actually, I go by Vaigo these days." scores 0.05–0.13 with the question,
like the distractors), but the student can: over a note of one unrelated line it says
it does not know (it declines 0.96 of never-told questions), while over the line that
answers it names the value.

So, for a question about the user (:func:`~memsvc.services.memory_notes.asks_about_user`)
whose note holds two lines or more, every line but the one the message scores highest
with is **checked**: the same turn is run with a note of that line alone, greedily, for
:data:`CHECK_TOKENS` tokens (its first token contrasted as the turn's is), and a line
whose reply refuses (:data:`REFUSAL`) leaves the note. The checks are ordinary
generate requests: the scheduler feeds them in one batched prefill and decodes them
together; nothing of them is kept.

A line that corrects an earlier one (:func:`reads_as_correction`: "Actually, ...",
"... now", "I switched to ...") is never checked: it means something only beside what
it corrects, and alone the student refuses "Actually, I go by Vaigo these days." for
"What's my name?" (on seed 21 that broke 5 of the latest and kept questions it had right).

The exemption was chosen on seed 21 (``scripts/note_check.py``,
``docs/bench/note-check/seed21``); through REST on seed 13 trained recall went 92 → 96 of
105 and kept 125 → 126 of 140 (``docs/bench/memory-hybrid``). A checked turn's first
token comes about 2.5× later (``scripts/note_check_cost.py``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

CHECK_TOKENS = 8  # "I don't know your name." is 7 tokens: enough to read a refusal

# what the student says when it does not know ("I don't know your dog's name.")
REFUSAL = re.compile(
    r"\b(i\s+(do\s+not|don'?t|dont)\s+know|no\s+idea|not\s+sure"
    r"|(don'?t|do\s+not|can'?t|cannot)\s+(remember|recall))\b",
    re.IGNORECASE,
)
# a statement that changes something said before: it needs what it corrects
_CORRECTION = re.compile(
    r"\b(actually|correction|scratch that|turns out|update|changed?|misspoke|mixed (it|them) up"
    r"|got it wrong|mistake|misremembered|anymore|no longer|instead|now|these days|renamed"
    r"|moved|switched|reset|new)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class NoteLine:
    """One line of a memory note: the memory it shows, its text and its cosine with
    the message (the pick's score)."""

    memory_id: str
    text: str
    similarity: float


def reads_as_correction(text: str) -> bool:
    """Whether a memory's text changes something said before.

    >>> reads_as_correction("Actually, I go by Vaigo these days.")
    True
    >>> reads_as_correction("My cat is called Sinthou.")
    False
    """
    return _CORRECTION.search(text) is not None


def refusal_pattern(pattern: str | None) -> re.Pattern:
    """The configured refusal pattern (``MEMSVC_MEMORY_NOTE_REFUSAL``), case-insensitive;
    None: :data:`REFUSAL`, the distilled student's."""
    return REFUSAL if pattern is None else re.compile(pattern, re.IGNORECASE)


def refuses(reply: str, refusal: re.Pattern = REFUSAL) -> bool:
    """Whether a reply says it does not know.

    >>> refuses("I don't know your dog's name.")
    True
    >>> refuses("Your dog is called Veslus.")
    False
    """
    return refusal.search(reply) is not None


def lines_to_check(lines: Sequence[NoteLine], asks: bool) -> list[int]:
    """Indices of the lines to check alone: for a question about the user (``asks``)
    with two lines or more, every line but the highest-scored one (the first of equals)
    and the corrections.

    >>> lines = [NoteLine("a", "My dog is Rex.", 0.4), NoteLine("b", "My cat is Tom.", 0.2),
    ...          NoteLine("c", "Actually, the dog is Max now.", 0.1)]
    >>> lines_to_check(lines, asks=True), lines_to_check(lines, asks=False)
    ([1], [])
    """
    if not asks or len(lines) < 2:
        return []
    best = max(range(len(lines)), key=lambda i: (lines[i].similarity, -i))
    return [i for i, line in enumerate(lines) if i != best and not reads_as_correction(line.text)]


async def kept_after_check(
    lines: Sequence[NoteLine], checked: Sequence[int], replies_of, refusal: re.Pattern = REFUSAL
) -> tuple[list[NoteLine], list[NoteLine]]:
    """(lines kept, lines left out): a checked line whose reply refuses is left out.

    ``replies_of(texts)`` is awaited once with the checked lines' texts and returns their
    replies in order (the engine's greedy decode of the turn with each as its note).
    """
    if not checked:
        return list(lines), []
    replies = await replies_of([lines[i].text for i in checked])
    out = {i for i, reply in zip(checked, replies, strict=True) if refuses(reply, refusal)}
    return (
        [line for i, line in enumerate(lines) if i not in out],
        [line for i, line in enumerate(lines) if i in out],
    )
