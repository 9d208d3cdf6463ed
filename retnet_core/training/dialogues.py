"""Generated dialogues that train and evaluate the memory.

An example is a list of *sessions*, each a list of turns. Between sessions the
recurrent state is reset and only the memory slots survive, so a fact stated in
session 1 and asked in session 2 can only be answered through memory.

Kinds
-----
``recall``      facts stated in one session, one of them asked in a later session.
``forget``      a fact stated, a later session asks to forget it, a third asks for
                it and the right answer is "I don't know ...".
``unknown``     a later session asks for something never stated: "I don't know ...".
``in_context``  stated and asked in the same session (learnable without memory).
``passage``     a ``passage`` turn holds the facts; the answer must come from it.
``document``    the same passage, fed and written in one session; the question comes in
                the next (the passage reaches the answer through memory alone).
``chitchat``    a real chit-chat conversation cut in two sessions: the second one's
                replies are trained while the first one's user turns sit in memory, so
                the copy head learns not to copy from slots that do not answer anything
                (drawn from the conversations the generator is given).

Values (names, places, codes) are invented, so a model cannot know them in advance.
Every value falls into the training pool or the held-out pool by a hash of its
text, so the two never overlap; values whose words occur in a given ``exclude`` set
(the chit-chat training words) never enter the held-out pool either. Evaluation
uses held-out values only.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from retnet_core.tokenizer import Message

KINDS = ("recall", "forget", "unknown", "in_context", "passage", "document")
CHITCHAT = "chitchat"
CHITCHAT_CHARS = 240  # per message: session 1 is never cut, so its turns are kept short


@dataclass(frozen=True)
class Attribute:
    """Something a user can tell about themselves, with every phrasing of it."""

    value_kind: str  # person | place | code | thing
    states: tuple[str, ...]  # user sentences with {v}
    asks: tuple[str, ...]  # user questions
    answer: str  # assistant answer with {v}
    mine: str  # "my dog's name" (used in forget requests)
    yours: str  # "your dog's name" (used in acks and refusals)


ATTRIBUTES: dict[str, Attribute] = {
    "name": Attribute(
        "person",
        ("My name is {v}.", "Call me {v}.", "I'm {v}, by the way."),
        ("What is my name?", "Do you remember my name?", "What's my name?"),
        "Your name is {v}.",
        "my name",
        "your name",
    ),
    "dog": Attribute(
        "person",
        ("My dog is called {v}.", "I have a dog named {v}."),
        ("What is my dog called?", "What's my dog's name?"),
        "Your dog is called {v}.",
        "my dog's name",
        "your dog's name",
    ),
    "sister": Attribute(
        "person",
        ("My sister's name is {v}.", "I have a sister called {v}."),
        ("What is my sister's name?", "Who is my sister?"),
        "Your sister's name is {v}.",
        "my sister's name",
        "your sister's name",
    ),
    "friend": Attribute(
        "person",
        ("My best friend is {v}.", "My best friend is called {v}."),
        ("Who is my best friend?", "What's my best friend's name?"),
        "Your best friend is {v}.",
        "my best friend",
        "your best friend",
    ),
    "city": Attribute(
        "place",
        ("I live in {v}.", "I moved to {v} last year."),
        ("Where do I live?", "Which town do I live in?"),
        "You live in {v}.",
        "where I live",
        "where you live",
    ),
    "hometown": Attribute(
        "place",
        ("I grew up in {v}.", "I was born in {v}."),
        ("Where did I grow up?", "Where is my hometown?"),
        "You grew up in {v}.",
        "where I grew up",
        "where you grew up",
    ),
    "locker": Attribute(
        "code",
        ("My locker code is {v}.", "The code for my locker is {v}."),
        ("What is my locker code?", "What's the code for my locker?"),
        "Your locker code is {v}.",
        "my locker code",
        "your locker code",
    ),
    "room": Attribute(
        "code",
        ("My room number is {v}.", "I'm staying in room {v}."),
        ("What is my room number?", "Which room am I in?"),
        "Your room number is {v}.",
        "my room number",
        "your room number",
    ),
    "band": Attribute(
        "thing",
        ("My favorite band is {v}.", "I love the band {v}."),
        ("What is my favorite band?", "Which band do I love?"),
        "Your favorite band is {v}.",
        "my favorite band",
        "your favorite band",
    ),
    "employer": Attribute(
        "thing",
        ("I work at {v}.", "I just got a job at {v}."),
        ("Where do I work?", "Which company do I work for?"),
        "You work at {v}.",
        "where I work",
        "where you work",
    ),
}

ACKS = ("Got it, I'll remember that.", "Okay, noted.", "Thanks for telling me!")
# Half the acknowledgements repeat the fact: a short-range copy right after the value,
# which small models learn long before the long-range copy an answer needs.
ECHO_ACKS = ("Got it. {answer}", "Okay, I'll remember that. {answer}")
FORGETS = ("Please forget {mine}.", "Forget {mine}.", "Can you forget {mine}?")
FORGET_ACK = "Okay, I've forgotten {yours}."
UNKNOWN = "I don't know {yours}."
SMALLTALK = (
    ("Hi there!", "Hello! How are you today?"),
    ("How's it going?", "Pretty good, thanks. How about you?"),
    ("I'm back.", "Welcome back! What's up?"),
    ("Good morning.", "Good morning! What can I do for you?"),
    ("Hey, quick question.", "Sure, go ahead."),
)

# Passage facts: sentence and question about an invented entity.
PASSAGE_RELATIONS = (
    ("place", "The {e} is located in {v}.", "Where is the {e} located?"),
    ("person", "The {e} was founded by {v}.", "Who founded the {e}?"),
    ("code", "The {e} opened in {v}.", "When did the {e} open?"),
    ("person", "The {e} is run by {v}.", "Who runs the {e}?"),
)  # (value kind, sentence = answer, question)
ENTITY_NOUNS = ("museum", "bakery", "library", "observatory", "theater", "harbor", "garden")

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "th")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "l", "s", "th")
_PLACE_SUFFIXES = ("ford", "ville", "burg", "haven", "port", "moor", "wick")
_THING_SUFFIXES = ("ix", "ora", "tron", "ly", "ex")


def _syllables() -> list[str]:
    return [o + v + c for o, v, c in itertools.product(_ONSETS, _VOWELS, _CODAS)]


def _hash01(text: str) -> float:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64


def is_heldout(value: str, heldout_frac: float = 0.2) -> bool:
    """Whether ``value`` belongs to the held-out pool (decided by its text alone)."""
    return _hash01("heldout:" + value) < heldout_frac


def candidate_values(kind: str, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct invented values of ``kind`` (person, place, code or thing)."""
    rng = random.Random(f"{kind}:{seed}")
    syl = _syllables()
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        if kind == "code":
            v = str(rng.randrange(1000, 10000))
        else:
            stem = "".join(rng.choice(syl) for _ in range(rng.choice((2, 2, 3))))
            if kind == "place":
                stem += rng.choice(_PLACE_SUFFIXES)
            elif kind == "thing":
                stem += rng.choice(_THING_SUFFIXES)
            v = stem.capitalize()
        if v not in seen:
            seen.add(v)
            out.append(v)
    return out


@dataclass
class ValuePools:
    """Disjoint training and held-out values per kind."""

    train: dict[str, list[str]] = field(default_factory=dict)
    heldout: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, per_kind: int = 4000, exclude: Iterable[str] = (), heldout_frac: float = 0.2
    ) -> ValuePools:
        """Split invented values by :func:`is_heldout`; excluded words are never held out."""
        banned = {w.lower() for w in exclude}
        pools = cls()
        for kind in ("person", "place", "code", "thing"):
            train, held = [], []
            for v in candidate_values(kind, per_kind):
                if is_heldout(v, heldout_frac):
                    # a held-out value the corpus already contains would not be unseen
                    if v.lower() not in banned:
                        held.append(v)
                else:
                    train.append(v)
            pools.train[kind], pools.heldout[kind] = train, held
        return pools

    def all_heldout(self) -> set[str]:
        """Every held-out value of every kind."""
        return {v for vs in self.heldout.values() for v in vs}


@dataclass(frozen=True)
class MemoryExample:
    """Sessions separated by state resets; the last assistant turn is the scored answer.

    ``answer`` is the exact value the final reply must contain, or ``""`` when the
    right reply is a refusal ("I don't know ..."). ``forgotten`` is the value a
    ``forget`` example asks to drop (its slot must be gone before the last session).
    """

    kind: str
    sessions: tuple[tuple[Message, ...], ...]
    answer: str
    forgotten: str = ""

    def flat(self) -> tuple[Message, ...]:
        """All turns in one session (what a model without state resets would see)."""
        return tuple(m for s in self.sessions for m in s)


class DialogueGenerator:
    """Deterministic generator of :class:`MemoryExample` from a seed and a value pool."""

    def __init__(
        self,
        pools: ValuePools,
        split: str = "train",
        seed: int = 0,
        chitchat: Sequence[Sequence[Message]] = (),
    ) -> None:
        if split not in ("train", "heldout"):
            raise ValueError("split must be 'train' or 'heldout'")
        self.values = pools.train if split == "train" else pools.heldout
        self.rng = random.Random(f"{split}:{seed}")
        self.conversations = [c for c in chitchat if len(c) >= 4]

    def _value(self, kind: str) -> str:
        return self.rng.choice(self.values[kind])

    def _facts(self, n: int) -> list[tuple[str, str]]:
        """``n`` (attribute, value) pairs with distinct attributes."""
        attrs = self.rng.sample(sorted(ATTRIBUTES), n)
        return [(a, self._value(ATTRIBUTES[a].value_kind)) for a in attrs]

    def _tell(self, facts: list[tuple[str, str]]) -> list[Message]:
        """A session opening, then each fact stated and acknowledged."""
        turns: list[Message] = []
        if self.rng.random() < 0.3:
            u, a = self.rng.choice(SMALLTALK)
            turns += [Message("user", u), Message("assistant", a)]
        for attr, value in facts:
            a = ATTRIBUTES[attr]
            text = self.rng.choice(a.states).format(v=value)
            if self.rng.random() < 0.5:
                ack = self.rng.choice(ECHO_ACKS).format(answer=a.answer.format(v=value))
            else:
                ack = self.rng.choice(ACKS)
            turns += [Message("user", text), Message("assistant", ack)]
        return turns

    def _ask(self, attr: str, value: str | None) -> list[Message]:
        """Ask for ``attr``; answer with ``value``, or refuse when it is None."""
        a = ATTRIBUTES[attr]
        reply = a.answer.format(v=value) if value is not None else UNKNOWN.format(yours=a.yours)
        return [Message("user", self.rng.choice(a.asks)), Message("assistant", reply)]

    def recall(self) -> MemoryExample:
        facts = self._facts(self.rng.randint(1, 3))
        attr, value = self.rng.choice(facts)
        return MemoryExample(
            "recall", (tuple(self._tell(facts)), tuple(self._ask(attr, value))), value
        )

    def in_context(self) -> MemoryExample:
        facts = self._facts(self.rng.randint(1, 3))
        attr, value = self.rng.choice(facts)
        return MemoryExample(
            "in_context", (tuple(self._tell(facts) + self._ask(attr, value)),), value
        )

    def forget(self) -> MemoryExample:
        facts = self._facts(self.rng.randint(1, 2))
        attr, value = self.rng.choice(facts)
        a = ATTRIBUTES[attr]
        drop = (
            Message("user", self.rng.choice(FORGETS).format(mine=a.mine)),
            Message("assistant", FORGET_ACK.format(yours=a.yours)),
        )
        sessions = (tuple(self._tell(facts)), drop, tuple(self._ask(attr, None)))
        return MemoryExample("forget", sessions, "", forgotten=value)

    def unknown(self) -> MemoryExample:
        facts = self._facts(self.rng.randint(1, 2))
        told = {a for a, _ in facts}
        attr = self.rng.choice(sorted(set(ATTRIBUTES) - told))
        return MemoryExample(
            "unknown", (tuple(self._tell(facts)), tuple(self._ask(attr, None))), ""
        )

    def passage(self) -> MemoryExample:
        entity = f"{self._value('thing')} {self.rng.choice(ENTITY_NOUNS)}"
        rels = self.rng.sample(PASSAGE_RELATIONS, self.rng.randint(2, 3))
        values = [self._value(kind) for kind, *_ in rels]
        sentences = [s.format(e=entity, v=v) for (_, s, _), v in zip(rels, values, strict=True)]
        text = " ".join(sentences)
        i = self.rng.randrange(len(rels))
        question = rels[i][2]
        turns = (
            Message("passage", text),
            Message("user", question.format(e=entity)),
            Message("assistant", sentences[i]),
        )
        return MemoryExample("passage", (turns,), values[i])

    def document(self) -> MemoryExample:
        ex = self.passage()
        passage, *asked = ex.sessions[0]
        return MemoryExample("document", ((passage,), tuple(asked)), ex.answer)

    def chitchat(self) -> MemoryExample:
        """A conversation cut at a message boundary: 2–4 messages, then up to 4 more."""
        if not self.conversations:
            raise ValueError("the chitchat kind needs conversations (DialogueGenerator(chitchat=))")
        conv = [
            Message(m.role, m.content[:CHITCHAT_CHARS]) for m in self.rng.choice(self.conversations)
        ]
        cut = self.rng.randint(2, min(4, len(conv) - 2))
        return MemoryExample(CHITCHAT, (tuple(conv[:cut]), tuple(conv[cut : cut + 4])), "")

    def example(self, kind: str) -> MemoryExample:
        """One example of ``kind`` (one of :data:`KINDS`, or ``chitchat``)."""
        if kind == CHITCHAT:
            return self.chitchat()
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        return getattr(self, kind)()

    def sample(self, n: int, kinds: Iterable[str] = KINDS) -> list[MemoryExample]:
        """``n`` examples cycling through ``kinds`` in order."""
        cycle = itertools.cycle(tuple(kinds))
        return [self.example(next(cycle)) for _ in range(n)]


def example_texts(examples: Iterable[MemoryExample]) -> Iterable[str]:
    """Every turn's content (for leak checks and tokenizer training)."""
    for ex in examples:
        for session in ex.sessions:
            for m in session:
                yield m.content
