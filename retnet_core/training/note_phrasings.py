"""More ways to tell and ask a fact, for the memory-note examples.

The memory stage's :data:`~retnet_core.training.dialogues.ATTRIBUTES` give two phrasings
of each fact. A student trained on notes written only in those learned to match the
template, not to read: asked "What did we name our dog?" over the note line "Oh, my
dog's name is Rex, he's a goofball." it answered "I don't know your dog's name."
(``memsvc bench memory``, step 592: trained kinds recalled 0.55, fewer than the kinds it
never saw, 0.75). So the note examples draw from wider pools:

- :data:`EXTRA_STATES` / :data:`EXTRA_ASKS`: more sentences per attribute;
- :data:`STATE_OPENERS` / :data:`STATE_TAILS`: chatter around a statement;
- :data:`ASK_OPENERS`: chatter before a question;
- :data:`NOTE_ONLY_ATTRIBUTES`: kinds told only in note examples, so that reading is
  learned over more than ten attributes;
- :data:`ASIDES`: note lines about the user that hold no fact (the service keeps any
  first-person statement).

None of it is ``memsvc bench memory``'s: its sentences, questions and "other" kinds
(colour, food, instrument, cat, partner, street, car, bike lock) stay held out; a test
checks that.
"""

from __future__ import annotations

from retnet_core.training.dialogues import Attribute

EXTRA_STATES: dict[str, tuple[str, ...]] = {
    "name": ("Everyone calls me {v}.", "The name's {v}.", "You can call me {v}.",
             "My parents named me {v}.", "Just so you know, my first name is {v}."),
    "dog": ("Our dog {v} loves the park.", "{v} is the name of my dog.", "My dog {v} is three."),
    "sister": ("My little sister {v} just started school.", "{v} is my sister.",
               "My sister, {v}, lives nearby."),
    "friend": ("My closest friend is {v}.", "{v} is my best friend.",
               "I've known my best friend {v} forever.",
               "I'm having dinner with {v}, my best friend, tonight.",
               "Nobody knows me better than my best pal {v}."),
    "city": ("I'm living in {v} now.", "These days I live in {v}.", "My home is in {v}.",
             "I rent a small flat in {v}.", "I settled down in {v} after college."),
    "hometown": ("I was raised in {v}.", "My hometown is {v}.", "I come from {v}.",
                 "I was born and raised in {v}.", "Growing up in {v} was fun."),
    "locker": ("My locker combination is {v}.", "The locker opens with code {v}.",
               "Locker code: {v}."),
    "room": ("I'm in room {v}.", "Our room is number {v}.", "My room is {v}."),
    "band": ("{v} is my favorite band.", "I'm a huge fan of the band {v}.",
             "My favourite band is {v}."),
    "employer": ("I'm employed at {v}.", "My company is {v}.", "I started working at {v}."),
}  # fmt: skip

EXTRA_ASKS: dict[str, tuple[str, ...]] = {
    "name": ("What do people call me?", "Do you know what I'm called?",
             "Do you remember my name?"),
    "dog": ("What's our dog called?", "Do you remember my dog's name?"),
    "sister": ("What's my sister called?", "Do you know my sister's name?"),
    "friend": ("Who's my closest friend?", "Do you remember my best friend's name?",
               "Who did I say my best pal is?"),
    "city": ("Where am I living now?", "What city is my home?", "Where do I live?",
             "What town do I live in these days?"),
    "hometown": ("Which town was I raised in?", "What's my hometown?",
                 "Where was I born and raised?"),
    "locker": ("What opens my locker?", "Do you remember my locker combination?"),
    "room": ("What room am I in?", "Do you know my room number?"),
    "band": ("Who is my favourite band?", "What band am I a fan of?"),
    "employer": ("What company do I work at?", "Who is my employer?"),
}  # fmt: skip

NOTE_ONLY_ATTRIBUTES: dict[str, Attribute] = {
    "brother": Attribute(
        "person",
        ("My brother is called {v}.", "My big brother {v} is visiting.", "{v} is my brother."),
        ("What's my brother's name?", "Who is my brother?", "What is my brother called?"),
        "Your brother is called {v}.",
        "my brother's name",
        "your brother's name",
    ),
    "boss": Attribute(
        "person",
        ("My boss is {v}.", "My manager, {v}, is strict.", "I report to {v} at work."),
        ("Who is my boss?", "What's my manager's name?", "Who do I report to?"),
        "Your boss is {v}.",
        "my boss",
        "your boss",
    ),
    "neighbour": Attribute(
        "person",
        ("My neighbour is called {v}.", "{v} lives next door to me.", "Our neighbour {v} is nice."),
        ("Who is my neighbour?", "What's my neighbour called?", "Who lives next door to me?"),
        "Your neighbour is {v}.",
        "my neighbour",
        "your neighbour",
    ),
    "teacher": Attribute(
        "person",
        ("My piano teacher is {v}.", "I take lessons from {v}.", "{v} teaches my class."),
        ("Who is my teacher?", "Who do I take lessons from?", "What's my teacher's name?"),
        "Your teacher is {v}.",
        "my teacher",
        "your teacher",
    ),
    "holiday": Attribute(
        "place",
        ("I'm going on holiday to {v}.", "Next month I travel to {v}.", "My trip is to {v}."),
        ("Where am I going on holiday?", "Where is my trip to?", "Where do I travel next month?"),
        "You're going to {v}.",
        "my holiday plans",
        "your holiday plans",
    ),
    "school": Attribute(
        "place",
        ("I went to school in {v}.", "I studied in {v}.", "My university was in {v}."),
        ("Where did I go to school?", "Where did I study?", "Where was my university?"),
        "You studied in {v}.",
        "where I studied",
        "where you studied",
    ),
    "wifi": Attribute(
        "code",
        ("My wifi password is {v}.", "The wifi code at home is {v}.", "Home wifi: {v}."),
        ("What's my wifi password?", "What is the wifi code at home?", "Remind me the wifi?"),
        "Your wifi password is {v}.",
        "my wifi password",
        "your wifi password",
    ),
    "flight": Attribute(
        "code",
        ("My flight number is {v}.", "I'm booked on flight {v}.", "I fly out on flight {v}."),
        ("What's my flight number?", "Which flight am I on?", "What flight did I book?"),
        "Your flight number is {v}.",
        "my flight number",
        "your flight number",
    ),
    "movie": Attribute(
        "thing",
        ("My favourite movie is {v}.", "I've watched {v} ten times.", "{v} is the best film."),
        ("What's my favourite movie?", "Which film do I love?", "What movie do I rewatch?"),
        "Your favourite movie is {v}.",
        "my favourite movie",
        "your favourite movie",
    ),
    "team": Attribute(
        "thing",
        ("I support {v}.", "My football team is {v}.", "I'm a big fan of the team {v}."),
        ("Which team do I support?", "What's my football team?", "Who do I cheer for?"),
        "You support {v}.",
        "my team",
        "your team",
    ),
    "game": Attribute(
        "thing",
        ("I've been playing {v} every night.", "My favourite game is {v}.", "I'm hooked on {v}."),
        ("What game am I playing?", "What's my favourite game?", "What am I hooked on?"),
        "You're playing {v}.",
        "my favourite game",
        "your favourite game",
    ),
}

STATE_OPENERS = ("", "", "", "Oh, ", "By the way, ", "So, ", "Just so you know, ", "Also, ")
STATE_TAILS = ("", "", "", " It's a long story.", " Just thought I'd say.", " Anyway.",
               " I'm pretty happy about it.", " Don't ask why.")  # fmt: skip
ASK_OPENERS = ("", "", "", "Quick question: ", "Hey, ", "Hmm, ", "Sorry, ")
ASIDES = (
    "I had a really long day today.",
    "I'm trying to drink more water.",
    "I think I'll go for a walk later.",
    "I'm a bit tired this week.",
    "I love rainy Sunday mornings.",
    "I need to clean my kitchen.",
)
UPDATE_OPENERS = ("Actually, ", "Update: ", "Oh, and things changed: ", "Correction: ",
                  "Small change: ", "Turns out ", "Scratch that, ")  # fmt: skip
