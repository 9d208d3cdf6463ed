"""Examples that teach a model without memory layers to answer from its memory note.

The service hands such a model the memories a message is about as one system turn
(:mod:`retnet_core.memory_note`). Each example here is exactly that input, then the
reply to learn::

    <system> What the user told you in earlier conversations:
             - My dog is called Rex.
             - I live in Lyon.
    <user> What's my dog's name?
    <assistant> Your dog is called Rex.

Kinds, drawn by :meth:`NoteDialogues.example`:

- ``recall`` (1–4 facts of distinct attributes, one asked): the reply names its value;
- ``update`` (one attribute told, then changed with "Actually, ...", among 0–2 other
  facts): the reply names the latest value;
- ``unknown`` (the asked attribute is not in the note): "I don't know ...".

Values come from the training pool only (``ValuePools.train``), phrasings from
:data:`retnet_core.training.dialogues.ATTRIBUTES`; ``memsvc bench memory`` asks with its
own phrasings, held-out values and kinds that appear nowhere here.
"""

from __future__ import annotations

from dataclasses import dataclass

from retnet_core.memory_note import note_text
from retnet_core.tokenizer import ChatTokenizer, Message
from retnet_core.training.dialogues import ATTRIBUTES, UNKNOWN, DialogueGenerator

NOTE_KINDS = ("recall", "recall", "update", "unknown")  # drawn uniformly: half recall
UPDATE_OPENERS = ("Actually, ", "Update: ", "Oh, and things changed: ", "Correction: ")


@dataclass(frozen=True)
class NoteExample:
    """The turns (system note, user question, assistant reply) and the value the reply
    must contain (``""``: a refusal)."""

    kind: str
    turns: tuple[Message, Message, Message]
    answer: str


class NoteDialogues(DialogueGenerator):
    """Deterministic :class:`NoteExample` generator (same seeding as the parent)."""

    def _statement(self, attr: str, value: str) -> str:
        return self.rng.choice(ATTRIBUTES[attr].states).format(v=value)

    def _example(self, kind: str, lines: list[str], attr: str, value: str | None) -> NoteExample:
        a = ATTRIBUTES[attr]
        reply = a.answer.format(v=value) if value is not None else UNKNOWN.format(yours=a.yours)
        turns = (
            Message("system", note_text(lines)),
            Message("user", self.rng.choice(a.asks)),
            Message("assistant", reply),
        )
        return NoteExample(kind, turns, value or "")

    def note_recall(self) -> NoteExample:
        facts = self._facts(self.rng.randint(1, 4))
        attr, value = self.rng.choice(facts)
        lines = [self._statement(a, v) for a, v in facts]
        return self._example("recall", lines, attr, value)

    def note_update(self) -> NoteExample:
        facts = self._facts(self.rng.randint(1, 3))
        attr, old = facts[0]
        new = self._value(ATTRIBUTES[attr].value_kind)
        while new == old:
            new = self._value(ATTRIBUTES[attr].value_kind)
        lines = [self._statement(a, v) for a, v in facts]
        change = self.rng.choice(UPDATE_OPENERS) + _lower_first(self._statement(attr, new))
        lines.insert(self.rng.randint(1, len(lines)), change)  # after the old telling
        return self._example("update", lines, attr, new)

    def note_unknown(self) -> NoteExample:
        facts = self._facts(self.rng.randint(1, 3))
        told = {a for a, _ in facts}
        attr = self.rng.choice(sorted(set(ATTRIBUTES) - told))
        lines = [self._statement(a, v) for a, v in facts]
        return self._example("unknown", lines, attr, None)

    def note_example(self) -> NoteExample:
        kind = self.rng.choice(NOTE_KINDS)
        return getattr(self, f"note_{kind}")()


def _lower_first(text: str) -> str:
    """ "My dog ..." → "my dog ..." after an opener; "I ..." stays."""
    if text.startswith(("I ", "I'")):
        return text
    return text[:1].lower() + text[1:]


def note_row(tok: ChatTokenizer, ex: NoteExample) -> tuple[list[int], list[int]]:
    """(ids, answer): ``pad`` + the rendered turns, and the positions ``t`` whose next
    token ``ids[t + 1]`` belongs to the reply (its content and its ``<|end|>``)."""
    system, user, reply = ex.turns
    head = [tok.pad_id, *tok.render_ids([system, user]), *tok.generation_prompt()]
    whole = [tok.pad_id, *tok.render_ids([system, user, reply])]
    if whole[: len(head)] != head:  # the reply must extend the prompt as served
        raise ValueError("the chat format does not render the reply after the prompt")
    return whole, list(range(len(head) - 1, len(whole) - 1))
