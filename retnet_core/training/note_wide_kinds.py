"""Many more fact kinds for the memory-note examples, built from a few frames.

The note examples' 21 handwritten attributes (``dialogues.ATTRIBUTES`` and
``note_phrasings.NOTE_ONLY_ATTRIBUTES``) leave the student reading *those* kinds. With
more adapter capacity it refused more over notes and questions worded unlike them
(stage 12, ``memsvc bench memory``: refusals among recall misses 15 → 23 on trained
kinds, 1 → 13 on kinds it never trained on). What should transfer is the reading
itself: find the line about the asked thing, copy its value. So this module builds
:data:`WIDE_ATTRIBUTES`, about a hundred kinds from four frames, each over a list of
nouns:

- :data:`PEOPLE` (value kind person): "My cousin is called {v}." / "Who is my cousin?"
  / "Your cousin is called {v}.";
- :data:`FAVOURITES` (thing): "My favourite podcast is {v}." / "Which podcast do I like
  best?" / "Your favourite podcast is {v}.";
- :data:`WHERE_THEY_LIVE` (place): "My aunt lives in {v}." / "Where does my aunt live?"
  / "Your aunt lives in {v}.";
- :data:`NUMBERS` (code): "My gym membership number is {v}." / "What's my gym membership
  number?" / "Your gym membership number is {v}.".

None of it names ``memsvc bench memory``'s held-out kinds (colour, food, instrument, cat,
partner, street, car, bike lock) or anything close to them (no dishes, pets, spouses,
roads or vehicles), and no frame is one of its sentences: a test checks both.
"""

from __future__ import annotations

from retnet_core.training.dialogues import Attribute

__all__ = ["FAVOURITES", "NUMBERS", "PEOPLE", "WHERE_THEY_LIVE", "WIDE_ATTRIBUTES"]

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


def _article(noun: str) -> str:
    return "an" if noun[0].lower() in "aeiou" else "a"


def person_attribute(role: str) -> Attribute:
    """Someone in the user's life, named: "my cousin", "my favourite author"."""
    return Attribute(
        "person",
        (f"My {role} is called {{v}}.", f"{{v}} is my {role}.", f"My {role}'s name is {{v}}.",
         f"I have {_article(role)} {role} named {{v}}.", f"You should meet my {role}, {{v}}."),
        (f"Who is my {role}?", f"What's my {role}'s name?", f"What is my {role} called?",
         f"Do you know who my {role} is?"),
        f"Your {role} is called {{v}}.",
        f"my {role}'s name",
        f"your {role}'s name",
    )  # fmt: skip


def favourite_attribute(thing: str) -> Attribute:
    """A favourite named thing: "my favourite podcast"."""
    return Attribute(
        "thing",
        (f"My favourite {thing} is {{v}}.", f"{{v}} is my favourite {thing}.",
         f"The {thing} I like best is {{v}}.",
         f"I can't get enough of {{v}}, my favourite {thing}.", f"No {thing} beats {{v}} for me."),
        (f"What's my favourite {thing}?", f"Which {thing} do I like best?",
         f"What {thing} do I love most?", f"Do you know my favourite {thing}?"),
        f"Your favourite {thing} is {{v}}.",
        f"my favourite {thing}",
        f"your favourite {thing}",
    )  # fmt: skip


def lives_in_attribute(relative: str) -> Attribute:
    """Where someone the user knows lives: "my aunt lives in ..."."""
    return Attribute(
        "place",
        (f"My {relative} lives in {{v}}.", f"My {relative} moved to {{v}} years ago.",
         f"I visit my {relative} in {{v}} every summer.", f"{{v}} is where my {relative} lives."),
        (f"Where does my {relative} live?", f"Which town is my {relative} in?",
         f"Where did my {relative} move to?"),
        f"Your {relative} lives in {{v}}.",
        f"where my {relative} lives",
        f"where your {relative} lives",
    )  # fmt: skip


def number_attribute(number: str) -> Attribute:
    """A code or number the user keeps: "my library card number"."""
    return Attribute(
        "code",
        (f"My {number} is {{v}}.", f"{{v}} is my {number}.", f"Note my {number}: {{v}}.",
         f"Just so I don't lose it, my {number} is {{v}}."),
        (f"What's my {number}?", f"Do you have my {number}?", f"Remind me of my {number}?",
         f"What was my {number} again?"),
        f"Your {number} is {{v}}.",
        f"my {number}",
        f"your {number}",
    )  # fmt: skip


def _wide() -> dict[str, Attribute]:
    out: dict[str, Attribute] = {}
    out.update({f"wide person {r}": person_attribute(r) for r in PEOPLE})
    out.update({f"wide favourite {t}": favourite_attribute(t) for t in FAVOURITES})
    out.update({f"wide lives {r}": lives_in_attribute(r) for r in WHERE_THEY_LIVE})
    out.update({f"wide number {n}": number_attribute(n) for n in NUMBERS})
    return out


# name -> Attribute; names start with "wide " so they never meet a handwritten one's
WIDE_ATTRIBUTES: dict[str, Attribute] = _wide()
