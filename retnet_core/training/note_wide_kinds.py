"""Many more fact kinds for the memory-note examples, built from a few frames.

The note examples' 21 handwritten attributes (``dialogues.ATTRIBUTES`` and
``note_phrasings.NOTE_ONLY_ATTRIBUTES``) leave the student reading *those* kinds. With
more adapter capacity it refused more over notes and questions worded unlike them
(stage 12, ``memsvc bench memory``: refusals among recall misses 15 → 23 on trained
kinds, 1 → 13 on kinds it never trained on). What should transfer is the reading
itself: find the line about the asked thing, copy its value. So this module builds
:data:`WIDE_ATTRIBUTES`: 94 kinds, each a :class:`Frame` around a noun:

- :data:`PERSON` over :data:`PEOPLE`: "My cousin is called {v}." / "Who is my cousin?"
  / "Your cousin is called {v}.";
- :data:`FAVOURITE` over :data:`FAVOURITES`: "My favourite podcast is {v}." / "Which
  podcast do I like best?" / "Your favourite podcast is {v}.";
- :data:`LIVES_IN` over :data:`WHERE_THEY_LIVE`: "My aunt lives in {v}." / "Where does my
  aunt live?" / "Your aunt lives in {v}.";
- :data:`NUMBER` over :data:`NUMBERS`: "My library card number is {v}." / "What's my
  library card number?" / "Your library card number is {v}.".

Stage 13 drew them in half its note examples and moved every memory rate by under a
standard error (``docs/bench/memory-hybrid/stage13``): the bench's misses are wordings
of the trained kinds ("Who am I again?"), which more kinds do not teach.

None of it names ``memsvc bench memory``'s held-out kinds (colour, food, instrument, cat,
partner, street, car, bike lock) or anything close to them (no dishes, pets, spouses,
roads or vehicles), and no frame is one of its sentences: a test checks both.
"""

from __future__ import annotations

from dataclasses import dataclass

from retnet_core.training.dialogues import Attribute

__all__ = ["FAVOURITES", "NUMBERS", "PEOPLE", "WHERE_THEY_LIVE", "WIDE_ATTRIBUTES", "Frame"]

# one noun per kind; none is an existing attribute's (brother, boss, neighbour, teacher,
# sister, friend, band, movie, team, game, locker, room, flight, wifi ...)
PEOPLE = (
    "cousin", "uncle", "aunt", "grandmother", "grandfather", "nephew", "niece", "roommate",
    "flatmate", "colleague", "coach", "doctor", "dentist", "landlord", "mentor", "tutor",
    "hairdresser", "babysitter", "godmother", "godfather", "son", "daughter", "lawyer",
    "accountant", "personal trainer", "pen pal", "stepbrother", "stepsister",
    "favourite author", "favourite singer", "favourite actor", "favourite painter",
    "favourite poet", "childhood hero",
)  # fmt: skip
FAVOURITES = (
    "podcast", "TV show", "board game", "book", "app", "magazine", "radio station",
    "comic", "cartoon", "perfume", "brand of trainers", "cafe", "bookshop", "gym", "club",
    "song", "album", "video channel", "musical", "play", "novel series", "sports brand",
    "card game", "puzzle game", "website", "newsletter", "watch brand", "festival",
)  # fmt: skip
WHERE_THEY_LIVE = (
    "aunt", "uncle", "cousin", "grandmother", "grandfather", "godmother", "stepbrother",
    "oldest friend", "mentor", "pen pal", "niece", "nephew",
)  # fmt: skip
NUMBERS = (
    "gym membership number", "library card number", "parking space", "seat number",
    "order number", "ticket number", "desk number", "phone extension", "student ID",
    "badge number", "booking reference", "customer number", "membership code",
    "safe combination", "alarm code", "door code", "garage code", "postbox number",
    "passport number", "loyalty card number",
)  # fmt: skip


@dataclass(frozen=True)
class Frame:
    """An :class:`Attribute` with a hole for a noun: ``{n}`` is the noun, ``{a}`` its
    article ("a"/"an"), ``{v}`` stays for the value."""

    value_kind: str
    states: tuple[str, ...]
    asks: tuple[str, ...]
    answer: str
    mine: str
    yours: str

    def attribute(self, noun: str) -> Attribute:
        """The frame around ``noun``: "my {n}'s name" -> "my cousin's name"."""
        article = "an" if noun[0].lower() in "aeiou" else "a"

        def fill(text: str) -> str:
            return text.replace("{n}", noun).replace("{a}", article)

        return Attribute(
            self.value_kind,
            tuple(map(fill, self.states)),
            tuple(map(fill, self.asks)),
            fill(self.answer),
            fill(self.mine),
            fill(self.yours),
        )


# someone in the user's life, named: "my cousin", "my favourite author"
PERSON = Frame(
    "person",
    ("My {n} is called {v}.", "{v} is my {n}.", "My {n}'s name is {v}.",
     "I have {a} {n} named {v}.", "You should meet my {n}, {v}."),
    ("Who is my {n}?", "What's my {n}'s name?", "What is my {n} called?",
     "Do you know who my {n} is?"),
    "Your {n} is called {v}.",
    "my {n}'s name",
    "your {n}'s name",
)  # fmt: skip
# a favourite named thing: "my favourite podcast"
FAVOURITE = Frame(
    "thing",
    ("My favourite {n} is {v}.", "{v} is my favourite {n}.", "The {n} I like best is {v}.",
     "I can't get enough of {v}, my favourite {n}.", "No {n} beats {v} for me."),
    ("What's my favourite {n}?", "Which {n} do I like best?", "What {n} do I love most?",
     "Do you know my favourite {n}?"),
    "Your favourite {n} is {v}.",
    "my favourite {n}",
    "your favourite {n}",
)  # fmt: skip
# where someone the user knows lives: "my aunt lives in ..."
LIVES_IN = Frame(
    "place",
    ("My {n} lives in {v}.", "My {n} moved to {v} years ago.",
     "I visit my {n} in {v} every summer.", "{v} is where my {n} lives."),
    ("Where does my {n} live?", "Which town is my {n} in?", "Where did my {n} move to?"),
    "Your {n} lives in {v}.",
    "where my {n} lives",
    "where your {n} lives",
)  # fmt: skip
# a code or number the user keeps: "my library card number"
NUMBER = Frame(
    "code",
    ("My {n} is {v}.", "{v} is my {n}.", "Note my {n}: {v}.",
     "Just so I don't lose it, my {n} is {v}."),
    ("What's my {n}?", "Do you have my {n}?", "Remind me of my {n}?",
     "What was my {n} again?"),
    "Your {n} is {v}.",
    "my {n}",
    "your {n}",
)  # fmt: skip


def _wide() -> dict[str, Attribute]:
    frames = (("person", PERSON, PEOPLE), ("favourite", FAVOURITE, FAVOURITES),
              ("lives", LIVES_IN, WHERE_THEY_LIVE), ("number", NUMBER, NUMBERS))  # fmt: skip
    return {f"wide {tag} {noun}": frame.attribute(noun) for tag, frame, nouns in frames
            for noun in nouns}  # fmt: skip


# name -> Attribute; names start with "wide " so they never meet a handwritten one's
WIDE_ATTRIBUTES: dict[str, Attribute] = _wide()
