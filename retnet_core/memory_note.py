"""The memory note: how memories reach a model that has no memory layers.

A model without a Retention Layer is handed its user's memories as text, in one system
turn before the user's message (``memsvc.services.memory_notes`` picks them). The
service renders the note with :func:`note_text` and training renders its examples the
same way (``retnet_core.training.note_dialogues``), so the student learns the exact
input it is served::

    What the user told you in earlier conversations:
    - I live in Lyon.
    - Actually, I moved to Porto.
"""

from __future__ import annotations

from collections.abc import Sequence

NOTE_HEADER = "What the user told you in earlier conversations:"
NOTHING = "(nothing about this)"


def note_text(texts: Sequence[str]) -> str:
    """The note listing ``texts`` oldest first (empty: no note).

    >>> note_text(["I live in Lyon."])
    'What the user told you in earlier conversations:\\n- I live in Lyon.'
    """
    if not texts:
        return ""
    return NOTE_HEADER + "\n" + "\n".join(f"- {t.strip()}" for t in texts)


def nothing_note() -> str:
    """The note for a question about the user that none of their memories answers.

    Without it such a question reaches the model with no note, and a chat model invents
    ("Your favourite colour is blue."); with it, the student was trained to say it does
    not know.

    >>> nothing_note()
    'What the user told you in earlier conversations:\\n- (nothing about this)'
    """
    return NOTE_HEADER + "\n- " + NOTHING
