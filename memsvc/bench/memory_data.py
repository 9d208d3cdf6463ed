"""Fact kinds, everyday phrasings and per-user plans of ``memsvc bench memory``.

Two families of fact kinds:

- **trained**: the kinds of :data:`retnet_core.training.dialogues.ATTRIBUTES`, the only
  ones the memory stage saw (``recall``, ``forget``, ``unknown``, ``document`` sessions).
  The bench keeps their values' pools but never their phrasings: every telling, question,
  update and forget request below is written for the bench and differs from training's;
- **other**: kinds absent from memory training ("my favourite colour is teal").

Values are held out too: trained kinds and invented-name kinds draw from
``ValuePools.heldout`` (split by a hash of the value, never seen in training); the
everyday kinds (colours, dishes, instruments) use plain words that no memory training
example contains. Within one run every value is used once where the pool allows, so a
reply naming another user's value is a leak, not a coincidence.

A :class:`UserPlan` is everything one user says, fixed by the seed and the user's index.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from retnet_core.training.dialogues import ATTRIBUTES


@dataclass(frozen=True)
class Kind:
    """A fact kind: how people tell it, ask for it, change it and name it in a forget."""

    name: str
    trained: bool  # one of the memory stage's training kinds
    values: str  # a ValuePools kind (person, place, code, thing) or a key of WORDS
    tells: tuple[str, ...]  # with {v}
    asks: tuple[str, ...]
    updates: tuple[str, ...]  # the new value {v} replaces the old one
    mine: str  # "my dog's name", as a forget request names it


def _k(name: str, trained: bool, values: str, tells, asks, updates, mine: str) -> Kind:
    return Kind(name, trained, values, tuple(tells), tuple(asks), tuple(updates), mine)


TRAINED = {
    k.name: k
    for k in (
        _k("name", True, "person",
           ["Hey! I'm {v}, nice to meet you.", "People usually call me {v}."],
           ["Sorry, remind me what my name is?", "Who am I again?"],
           ["Actually, I go by {v} these days."], "my name"),
        _k("dog", True, "person",
           ["Oh, my dog's name is {v}, he's a goofball.", "We got a puppy, we named him {v}."],
           ["Remind me, what did we name our dog?", "What was my dog's name again?"],
           ["Actually, we renamed the dog, he's {v} now."], "my dog's name"),
        _k("sister", True, "person",
           ["My older sister {v} visits next week.", "You'd like my sister, she's called {v}."],
           ["What did I say my sister is called?", "Remind me of my sister's name?"],
           ["Sorry, I misspoke earlier, my sister is actually called {v}."], "my sister's name"),
        _k("friend", True, "person",
           ["{v} has been my best friend since school.", "Me and my best mate {v} go way back."],
           ["Do you know who my best friend is?", "What's the name of my best mate?"],
           ["These days {v} is my best friend."], "my best friend"),
        _k("city", True, "place",
           ["I've been living in {v} for a few years now.", "Home for me is {v} these days."],
           ["Which city am I living in?", "Remind me where I'm based?"],
           ["Actually, I moved to {v} last month."], "where I live"),
        _k("hometown", True, "place",
           ["I'm originally from {v}.", "Fun fact: I spent my childhood in {v}."],
           ["Where am I originally from?", "In which town did I spend my childhood?"],
           ["Correction: I actually grew up in {v}."], "where I grew up"),
        _k("locker", True, "code",
           ["Note for later: the locker combination is {v}.", "My gym locker opens with {v}."],
           ["What's the combination for my locker?", "What number opens my locker?"],
           ["I reset my locker, the new combination is {v}."], "my locker code"),
        _k("room", True, "code",
           ["They put me in room {v} at the hotel.", "My hotel room is number {v}."],
           ["Which hotel room am I staying in?", "What's my hotel room number?"],
           ["They moved me, I'm in room {v} now."], "my room number"),
        _k("band", True, "thing",
           ["Lately I can't stop listening to {v}, they're my favourite band.",
            "Honestly {v} is the best band ever."],
           ["Which band am I obsessed with?", "What's the band I like most?"],
           ["Actually, my favourite band is {v} now."], "my favorite band"),
        _k("employer", True, "thing",
           ["I've got a job over at {v}.", "These days I'm working for {v}."],
           ["Which company am I working for?", "Where did I say I have a job?"],
           ["Actually, I switched jobs, I'm at {v} now."], "where I work"),
    )
}  # fmt: skip

OTHER = {
    k.name: k
    for k in (
        _k("colour", False, "colour",
           ["My favourite colour is {v}.", "I love anything in {v}, it's my colour."],
           ["What's my favourite colour?", "Which colour do I like best?"],
           ["Actually, my favourite colour is {v} now."], "my favourite colour"),
        _k("food", False, "food",
           ["Nothing beats {v}, it's my favourite food.", "My favourite dish is {v}."],
           ["What's my favourite food?", "Which dish do I love most?"],
           ["Actually, these days my favourite dish is {v}."], "my favourite food"),
        _k("instrument", False, "instrument",
           ["I play the {v} in a little band.", "I've been learning the {v} for a year."],
           ["Which instrument do I play?", "What instrument am I learning?"],
           ["Actually, I switched to the {v}."], "the instrument I play"),
        _k("cat", False, "person",
           ["My cat is called {v}, she sleeps all day.", "Our cat {v} just knocked over my tea."],
           ["What's my cat called?", "What's the name of my cat?"],
           ["Actually, we renamed the cat, she's {v} now."], "my cat's name"),
        _k("partner", False, "person",
           ["My partner {v} says hi.", "I'm married to a lovely person called {v}."],
           ["What's my partner's name?", "Who am I married to?"],
           ["Actually, my partner's name is {v}, I mixed it up."], "my partner's name"),
        _k("street", False, "place",
           ["Our flat is on {v} Road.", "I live on {v} Road, near the park."],
           ["Which road is my flat on?", "What road do I live on?"],
           ["Actually, we moved to {v} Road."], "my street"),
        _k("car", False, "thing",
           ["I drive a {v}, it's old but reliable.", "My car is a {v}."],
           ["What car do I drive?", "What kind of car do I have?"],
           ["Actually, I sold the old one and bought a {v}."], "my car"),
        _k("pin", False, "code",
           ["My bike lock code is {v}.", "The code on my bike lock is {v}."],
           ["What's the code on my bike lock?", "What's my bike lock code?"],
           ["I changed my bike lock code to {v}."], "my bike lock code"),
    )
}  # fmt: skip

KINDS = {**TRAINED, **OTHER}

WORDS = {
    "colour": ("teal", "maroon", "lavender", "turquoise", "crimson", "amber", "indigo",
               "magenta", "olive", "ochre", "cobalt", "coral", "mustard", "burgundy",
               "chartreuse", "periwinkle", "mauve", "saffron", "vermilion", "cerulean"),
    "food": ("lasagna", "ramen", "paella", "dumplings", "falafel", "risotto", "goulash",
             "pierogi", "moussaka", "gnocchi", "biryani", "tiramisu", "ceviche", "kimchi",
             "shakshuka", "tagine", "enchiladas", "croissants", "pho", "gumbo"),
    "instrument": ("cello", "banjo", "oboe", "ukulele", "trombone", "harp", "clarinet",
                   "accordion", "saxophone", "mandolin", "bassoon", "tuba", "xylophone",
                   "harmonica", "bagpipes", "sitar", "didgeridoo", "piccolo", "marimba"),
}  # fmt: skip

FORGETS = (
    "Please forget {mine}.",
    "I'd like you to forget {mine}.",
    "Could you please forget {mine}?",
    "Please erase {mine}.",
)


@dataclass(frozen=True)
class Fact:
    """One fact a user tells: its kind, value and the sentence that tells it."""

    kind: str
    value: str
    tell: str


@dataclass(frozen=True)
class UserPlan:
    """What one user says over the protocol (see :mod:`memsvc.bench.memory`).

    ``facts`` are told over two sessions (``facts[:2]``, then ``facts[2]``) and each is
    asked in a new session; ``never`` is a kind never told, asked once; ``facts[update]``
    changes to ``new_value``; ``facts[forget]`` (never the updated one) is forgotten.
    """

    index: int
    facts: tuple[Fact, ...]
    never: str
    update: int
    new_value: str
    update_text: str
    forget: int
    forget_text: str
    seed: int

    def ask(self, kind: str, turn: int) -> str:
        """A question for ``kind``, varied by ``turn`` (deterministic)."""
        asks = KINDS[kind].asks
        return asks[(self.seed + self.index + turn) % len(asks)]

    def current(self, i: int) -> str:
        """The value of ``facts[i]`` after the update."""
        return self.new_value if i == self.update else self.facts[i].value


class Values:
    """Held-out values drawn without replacement (cycling once a pool runs out)."""

    def __init__(self, pools: dict[str, list[str]], rng: random.Random) -> None:
        self.pools = {k: list(v) for k, v in {**pools, **WORDS}.items()}
        for v in self.pools.values():
            rng.shuffle(v)
        self.next = dict.fromkeys(self.pools, 0)

    def draw(self, kind: str, avoid: str = "") -> str:
        pool = self.pools[kind]
        while True:
            value = pool[self.next[kind] % len(pool)]
            self.next[kind] += 1
            if value != avoid:
                return value


def make_plans(users: int, seed: int, heldout: dict[str, list[str]]) -> list[UserPlan]:
    """``users`` plans: even users tell 2 trained + 1 other kind, odd ones 1 + 2.

    ``heldout`` maps a ValuePools kind to its held-out values. The never-told kind
    alternates between trained and other kinds (every second pair of users).
    """
    rng = random.Random(f"memory-bench:{seed}")
    values = Values(heldout, rng)
    trained, other = sorted(TRAINED), sorted(OTHER)
    plans = []
    for i in range(users):
        n_trained = 2 if i % 2 == 0 else 1
        kinds = rng.sample(trained, n_trained) + rng.sample(other, 3 - n_trained)
        rng.shuffle(kinds)
        facts = []
        for k in kinds:
            value = values.draw(KINDS[k].values)
            facts.append(Fact(k, value, rng.choice(KINDS[k].tells).format(v=value)))
        rest = [k for k in (trained if (i // 2) % 2 == 0 else other) if k not in kinds]
        never = rng.choice(rest)
        update = rng.randrange(3)
        forget = rng.choice([j for j in range(3) if j != update])
        kind = KINDS[facts[update].kind]
        new_value = values.draw(kind.values, avoid=facts[update].value)
        plans.append(
            UserPlan(
                index=i,
                facts=tuple(facts),
                never=never,
                update=update,
                new_value=new_value,
                update_text=rng.choice(kind.updates).format(v=new_value),
                forget=forget,
                forget_text=rng.choice(FORGETS).format(mine=KINDS[facts[forget].kind].mine),
                seed=seed,
            )
        )
    return plans


def training_phrasings() -> set[str]:
    """Every telling and question template of the memory training (for the held-out check)."""
    return {s for a in ATTRIBUTES.values() for s in (*a.states, *a.asks)}


# ---- facts told amid chatter (``--chatter``) ------------------------------------------
def chatter_lines(lo: int = 30, hi: int = 90) -> list[str]:
    """Chit-chat messages of the held-out test split that read as one remark."""
    from retnet_core.training.data import load_chitchat, split_conversations

    test = split_conversations(load_chitchat())["test"]
    said = (m.content.strip() for c in test for m in c.messages)
    return [t for t in said if lo <= len(t) <= hi and t[-1:] in ".!"]


def buried(plan: UserPlan, chatter: list[str]) -> UserPlan:
    """``plan`` with every telling and the update between two chit-chat messages, as
    people mention facts inside longer messages (deterministic per user)."""
    rng = random.Random(plan.index)

    def wrap(text: str) -> str:
        return f"{rng.choice(chatter)} {text} {rng.choice(chatter)}"

    facts = tuple(replace(f, tell=wrap(f.tell)) for f in plan.facts)
    return replace(plan, facts=facts, update_text=wrap(plan.update_text))
