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
  in ``same_kind_rate`` of recalls, updates and chains the other facts' values are of
  the asked one's kind (the partner and the best mate; a change beside another person),
  so the model must tell "changed" from "another" within one example;
- ``update`` (one attribute told, then changed with "Actually, ...", in the change's
  own words ("I've just moved to ...") or simply told again, among 0–2 other facts):
  the reply names the latest value (notes list memories oldest first);
- ``chain`` (one attribute changed twice, old → middle → latest, among 0–2 other
  facts): the reply names the latest. After a change the student still named the told
  value first (``memsvc bench memory``, stage 7: all 10 misses of the latest value named
  the old one), and a chain makes the first and middle lines both wrong answers, so only
  "the last telling wins" fits;
- ``alike`` (2–4 facts whose values are of one kind: people, places, codes or things;
  one asked, or in ``ALIKE_UNKNOWN_RATE`` of them another attribute of that kind never
  told): the reply names the asked one's value, or refuses. Stage 8's recall misses
  that named a value named another of the user's (asked for the best mate, it gave the
  partner), and its declines named another person;
- ``unknown`` (the asked attribute is not in the note, or in ``NOTHING_RATE`` of them
  the note says that nothing the user told answers, as the service writes it for a
  question about the user that no memory matches): "I don't know ...";
- ``nothing``: always that empty note. Weighting it above ``unknown`` keeps refusals
  while teaching fewer of them over lines that are there: the service's pick already
  leaves four in five never-told questions with the empty note, and a model taught to
  refuse over lines worded unlike its training refused over lines that answer;
- ``passage`` (drawn with probability ``passage_rate`` before the others): a retrieved
  passage turn, in ``PASSAGE_NOTE_RATE`` of them a note of unrelated facts after it (the
  order the service feeds them), then a question the passage answers: the reply is the
  passage's sentence. Without these, note training teaches refusals that reach passage
  questions ("You don't know where the ... bakery is." over the passage saying where).

Values come from the training pool only (``ValuePools.train``), phrasings from
:data:`retnet_core.training.dialogues.ATTRIBUTES`; ``memsvc bench memory`` asks with its
own phrasings, held-out values and kinds that appear nowhere here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from retnet_core.memory_note import note_text, nothing_note
from retnet_core.tokenizer import ChatTokenizer, Message
from retnet_core.training.dialogues import (
    ATTRIBUTES,
    UNKNOWN,
    Attribute,
    DialogueGenerator,
    ValuePools,
)
from retnet_core.training.note_phrasings import (
    ASIDES,
    ASK_OPENERS,
    EXTRA_ASKS,
    EXTRA_STATES,
    NOTE_ONLY_ATTRIBUTES,
    STATE_OPENERS,
    STATE_TAILS,
    UPDATE_OPENERS,
    UPDATE_STATES,
    framed_asks,
)
from retnet_core.training.note_wide_kinds import WIDE_ATTRIBUTES

# the default weights; the kinds added after stage 5 are 0: the default mix stays stages 3-5's
NOTE_KINDS = {
    "recall": 2.0, "update": 1.0, "unknown": 1.0, "nothing": 0.0, "chain": 0.0, "alike": 0.0
}  # fmt: skip
NOTE_ATTRIBUTES: dict[str, Attribute] = {**ATTRIBUTES, **NOTE_ONLY_ATTRIBUTES}
WIDE_NOTE_ATTRIBUTES: dict[str, Attribute] = {**NOTE_ATTRIBUTES, **WIDE_ATTRIBUTES}
VALUE_KINDS = sorted({a.value_kind for a in NOTE_ATTRIBUTES.values()})  # person, place, ...
ASIDE_RATE = 0.25  # notes holding one line with no fact
NOTHING_RATE = 0.3  # unknown examples whose note says nothing answers
PLAIN_UPDATE_RATE = 0.3  # updates told with no "Actually, ": the note's later line wins
SPECIFIC_UPDATE_RATE = 0.4  # of the others, told in the change's own words (UPDATE_STATES)
FRAMED_ASK_RATE = 0.2  # questions built from a frame around the attribute (framed_asks)
HARD_ASK_BOOST = 4.0  # a question always failed is drawn 5x as often as one always answered
ALIKE_UNKNOWN_RATE = 0.25  # alike examples asking an untold attribute of the told kind
PASSAGE_NOTE_RATE = 0.3  # passage examples with a note of unrelated facts before the question


@dataclass(frozen=True)
class NoteExample:
    """The turns (the prompt's: system note and/or passage, then the user question;
    last the assistant reply), the value the reply must contain (``""``: a refusal) and,
    for a changed fact, the values it replaced, oldest first."""

    kind: str
    turns: tuple[Message, ...]
    answer: str
    superseded: tuple[str, ...] = ()


class NoteDialogues(DialogueGenerator):
    """Deterministic :class:`NoteExample` generator (same seeding as the parent);
    ``passage_rate``: the share of :meth:`note_example` draws that are passage questions;
    ``kinds``: the weights of the other kinds (default :data:`NOTE_KINDS`);
    ``same_kind_rate``: the share of recalls, updates and chains whose other facts share
    the asked attribute's value kind (0 draws nothing extra: earlier stages' streams stay);
    ``wide_rate``: the share of note examples (not passages) whose facts and question come
    from :data:`WIDE_NOTE_ATTRIBUTES`, the handwritten kinds plus about a hundred built
    ones (:mod:`~retnet_core.training.note_wide_kinds`; 0 draws nothing extra).;
    ``ask_rates``: attribute -> question -> how often the student answered it
    (``scripts/note_hard_asks.py``); a question is drawn with weight
    ``1 + HARD_ASK_BOOST · (1 − rate)`` (None: uniformly, the stream of earlier stages)"""

    def __init__(
        self,
        pools: ValuePools,
        split: str = "train",
        seed: int = 0,
        chitchat: Sequence[Sequence[Message]] = (),
        passage_rate: float = 0.0,
        kinds: Mapping[str, float] | None = None,
        same_kind_rate: float = 0.0,
        wide_rate: float = 0.0,
        ask_rates: Mapping[str, Mapping[str, float]] | None = None,
    ) -> None:
        super().__init__(pools, split, seed, chitchat)
        if not 0.0 <= passage_rate <= 1.0:
            raise ValueError("passage_rate must lie in [0, 1]")
        if not 0.0 <= same_kind_rate <= 1.0:
            raise ValueError("same_kind_rate must lie in [0, 1]")
        kinds = dict(NOTE_KINDS if kinds is None else kinds)
        weights = kinds.values()
        if set(kinds) - set(NOTE_KINDS) or min(weights, default=-1) < 0 or sum(weights) <= 0:
            raise ValueError(f"kinds: non-negative weights of {sorted(NOTE_KINDS)}, one positive")
        if not 0.0 <= wide_rate <= 1.0:
            raise ValueError("wide_rate must lie in [0, 1]")
        self.passage_rate = passage_rate
        self.kinds = kinds
        self.same_kind_rate = same_kind_rate
        self.wide_rate = wide_rate
        self.ask_rates = ask_rates
        self.attributes: Mapping[str, Attribute] = NOTE_ATTRIBUTES  # this example's pool

    def _facts(self, n: int) -> list[tuple[str, str]]:
        """``n`` (attribute, value) pairs with distinct attributes of this example's pool."""
        attrs = self.rng.sample(sorted(self.attributes), n)
        return [(a, self._value(self.attributes[a].value_kind)) for a in attrs]

    def _facts_around(self, low: int, high: int) -> list[tuple[str, str]]:
        """``low``–``high`` facts, the first to be asked or changed; in ``same_kind_rate``
        of draws 2–``high`` facts whose attributes share one value kind, values distinct."""
        if not (self.same_kind_rate and self.rng.random() < self.same_kind_rate):
            return self._facts(self.rng.randint(low, high))
        kind = self.rng.choice(VALUE_KINDS)
        same = _attributes_of(kind, self.attributes)
        attrs = self.rng.sample(same, min(len(same), self.rng.randint(max(low, 2), high)))
        return list(zip(attrs, self._distinct_values(kind, [], len(attrs)), strict=True))

    def _sentence(self, attr: str, value: str, after_opener: bool = False) -> str:
        """The bare statement of ``attr`` = ``value``, in any of its phrasings (its first
        word lowered when it follows an opener; a value is never lowered)."""
        phrasings = self.attributes[attr].states + EXTRA_STATES.get(attr, ())
        template = self.rng.choice(phrasings)
        return (_lower_first(template) if after_opener else template).format(v=value)

    def _statement(self, attr: str, value: str) -> str:
        """A note line: the statement with chatter around it, as users say it."""
        opener = self.rng.choice(STATE_OPENERS)
        sentence = self._sentence(attr, value, after_opener=bool(opener))
        return opener + sentence + self.rng.choice(STATE_TAILS)

    def ask_and_tell(self, attr: str) -> tuple[str, str]:
        """(a question about ``attr``, a statement of it with a fresh value), worded as
        this generator's note examples word them (the memory read's query adapter
        trains on such pairs: ``memsvc.rag.query_adapter``)."""
        value = self._value(self.attributes[attr].value_kind)
        return self._question(attr), self._statement(attr, value)

    def _question(self, attr: str) -> str:
        asks = self.attributes[attr].asks + EXTRA_ASKS.get(attr, ())
        if self.rng.random() < FRAMED_ASK_RATE:
            asks = framed_asks(self.attributes[attr])
        opener = self.rng.choice(ASK_OPENERS)
        rates = self.ask_rates.get(attr) if self.ask_rates else None
        if rates is None:
            ask = self.rng.choice(asks)
        else:  # a question the student failed is drawn more often
            weights = [1.0 + HARD_ASK_BOOST * (1.0 - rates.get(a, 1.0)) for a in asks]
            ask = self.rng.choices(asks, weights=weights)[0]
        return opener + (_lower_first(ask) if opener else ask)

    def _example(self, kind: str, lines: list[str], attr: str, value: str | None) -> NoteExample:
        a = self.attributes[attr]
        reply = a.answer.format(v=value) if value is not None else UNKNOWN.format(yours=a.yours)
        if lines and self.rng.random() < ASIDE_RATE:
            lines = list(lines)
            lines.insert(self.rng.randint(0, len(lines)), self.rng.choice(ASIDES))
        turns = (
            Message("system", note_text(lines) if lines else nothing_note()),
            Message("user", self._question(attr)),
            Message("assistant", reply),
        )
        return NoteExample(kind, turns, value or "")

    def note_recall(self) -> NoteExample:
        facts = self._facts_around(1, 4)
        attr, value = self.rng.choice(facts)
        lines = [self._statement(a, v) for a, v in facts]
        return self._example("recall", lines, attr, value)

    def note_alike(self) -> NoteExample:
        """2–4 facts of one value kind, distinct values; one asked, or an untold one."""
        kind = self.rng.choice(VALUE_KINDS)
        same = _attributes_of(kind, self.attributes)
        attrs = self.rng.sample(same, min(len(same), self.rng.randint(3, 5)))
        told, spare = attrs[:-1], attrs[-1]
        facts = list(zip(told, self._distinct_values(kind, [], len(told)), strict=True))
        lines = [self._statement(a, v) for a, v in facts]
        if self.rng.random() < ALIKE_UNKNOWN_RATE:
            return self._example("alike", lines, spare, None)
        attr, value = self.rng.choice(facts)
        return self._example("alike", lines, attr, value)

    def _distinct_values(self, kind: str, first: list[str], n: int) -> list[str]:
        """A new list: ``first`` extended to ``n`` distinct values of ``kind``."""
        values = list(first)
        while len(values) < n:
            value = self._value(kind)
            if value not in values:
                values.append(value)
        return values

    def note_update(self) -> NoteExample:
        return self._changed("update", changes=1)

    def note_chain(self) -> NoteExample:
        return self._changed("chain", changes=2)

    def _changed(self, kind: str, changes: int) -> NoteExample:
        """One attribute told, then changed ``changes`` times (each change after the
        telling it replaces), among 0–2 other facts; the reply names the last value."""
        facts = self._facts_around(1, 3)
        attr, first = facts[0]
        of = self.attributes[attr].value_kind
        # the changes' values differ from every told value of that kind, not only the first
        taken = [first, *(v for a, v in facts[1:] if self.attributes[a].value_kind == of)]
        values = [first, *self._distinct_values(of, taken, len(taken) + changes)[len(taken) :]]
        lines = [self._statement(a, v) for a, v in facts]
        at = 0  # where the latest telling of ``attr`` stands
        for value in values[1:]:
            at = self.rng.randint(at + 1, len(lines))
            lines.insert(at, self._change(attr, value))
        ex = self._example(kind, lines, attr, values[-1])
        return replace(ex, superseded=tuple(values[:-1]))

    def _change(self, attr: str, new: str) -> str:
        """A change of ``attr`` to ``new``: told again unmarked (the later wins), in the
        change's own words, or "Actually, " + a statement."""
        if self.rng.random() < PLAIN_UPDATE_RATE:
            return self._statement(attr, new)
        if attr in UPDATE_STATES and self.rng.random() < SPECIFIC_UPDATE_RATE:
            return self.rng.choice(UPDATE_STATES[attr]).format(v=new)
        return self.rng.choice(UPDATE_OPENERS) + self._sentence(attr, new, True)

    def note_unknown(self) -> NoteExample:
        """Asked what no line tells; in ``NOTHING_RATE`` of them the note says nothing
        answers (:func:`~retnet_core.memory_note.nothing_note`)."""
        if self.rng.random() < NOTHING_RATE:
            return self._over_the_empty_note("unknown")
        facts = self._facts(self.rng.randint(1, 3))
        told = {a for a, _ in facts}
        attr = self.rng.choice(sorted(set(self.attributes) - told))
        lines = [self._statement(a, v) for a, v in facts]
        return self._example("unknown", lines, attr, None)

    def note_nothing(self) -> NoteExample:
        return self._over_the_empty_note("nothing")

    def _over_the_empty_note(self, kind: str) -> NoteExample:
        """Asked anything over the note that says nothing the user told answers."""
        return self._example(kind, [], self.rng.choice(sorted(self.attributes)), None)

    def note_passage(self) -> NoteExample:
        """A passage question as the service feeds it: passage, [note], question."""
        ex = self.passage()
        passage, question, reply = ex.sessions[0]
        prompt: list[Message] = [passage]
        if self.rng.random() < PASSAGE_NOTE_RATE:
            lines = [self._statement(a, v) for a, v in self._facts(self.rng.randint(1, 3))]
            prompt.append(Message("system", note_text(lines)))
        return NoteExample("passage", (*prompt, question, reply), ex.answer)

    def note_example(self) -> NoteExample:
        if self.passage_rate and self.rng.random() < self.passage_rate:
            self.attributes = NOTE_ATTRIBUTES
            return self.note_passage()
        # no draw at wide_rate 0: earlier stages' streams stay as they were
        wide = bool(self.wide_rate) and self.rng.random() < self.wide_rate
        self.attributes = WIDE_NOTE_ATTRIBUTES if wide else NOTE_ATTRIBUTES
        names = sorted(self.kinds)
        kind = self.rng.choices(names, weights=[self.kinds[k] for k in names])[0]
        return getattr(self, f"note_{kind}")()


def note_asks(attribute: Attribute, name: str) -> tuple[str, ...]:
    """Every question a note example may ask about ``attribute`` (before an opener)."""
    asks = attribute.asks + EXTRA_ASKS.get(name, ()) + framed_asks(attribute)
    return tuple(dict.fromkeys(asks))


def _attributes_of(kind: str, attributes: Mapping[str, Attribute]) -> list[str]:
    """The attributes whose values are of ``kind``, sorted (a stable draw order)."""
    return sorted(a for a, at in attributes.items() if at.value_kind == kind)


def _lower_first(text: str) -> str:
    """ "My dog ..." → "my dog ..." after an opener; "I ..." and a template that starts
    with its value ("{v} is ...") stay."""
    if text.startswith(("I ", "I'")) or not text[:1].isalpha():
        return text
    return text[:1].lower() + text[1:]


def note_row(tok: ChatTokenizer, ex: NoteExample) -> tuple[list[int], list[int]]:
    """(ids, answer): ``pad`` + the rendered turns, and the positions ``t`` whose next
    token ``ids[t + 1]`` belongs to the reply (its content and its ``<|end|>``)."""
    *prompt, reply = ex.turns
    head = [tok.pad_id, *tok.render_ids(prompt), *tok.generation_prompt()]
    whole = [tok.pad_id, *tok.render_ids([*prompt, reply])]
    if whole[: len(head)] != head:  # the reply must extend the prompt as served
        raise ValueError("the chat format does not render the reply after the prompt")
    return whole, list(range(len(head) - 1, len(whole) - 1))
