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
- :data:`ASK_FRAMES`: questions built around any attribute's own words;
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
             "My parents named me {v}.", "Just so you know, my first name is {v}.",
             "Hi, {v} here.", "Most folks know me as {v}.", "My friends just say {v}.",
             "I introduce myself as {v}.",
             "{v} is my name.", "My name? It's {v}.", "I'm called {v}.",
             "This is {v} speaking.", "I signed up as {v}.",
             "{v}'s the name.", "Put me down as {v}.", "My mates know me as {v}.",
             "Around here they know me as {v}."),
    "dog": ("Our dog {v} loves the park.", "{v} is the name of my dog.", "My dog {v} is three.",
            "We adopted a dog and called him {v}.", "{v}, my dog, chewed my shoes again.",
            "Walking {v}, our dog, is the best part of my day."),
    "sister": ("My little sister {v} just started school.", "{v} is my sister.",
               "My sister, {v}, lives nearby.",
               "I'm visiting my sister {v} this weekend.", "{v}, my older sister, is a nurse.",
               "I share a flat with my sister {v}."),
    "friend": ("My closest friend is {v}.", "{v} is my best friend.",
               "I've known my best friend {v} forever.",
               "I'm having dinner with {v}, my best friend, tonight.",
               "Nobody knows me better than my best pal {v}.",
               "{v} and I have been friends for twenty years.", "My oldest friend is {v}.",
               "I tell {v}, my best friend, everything.",
               "My buddy {v} and I go way back.", "My best friend {v} always makes me laugh.",
               "I'd trust {v}, my best friend, with anything."),
    "city": ("I'm living in {v} now.", "These days I live in {v}.", "My home is in {v}.",
             "I rent a small flat in {v}.", "I settled down in {v} after college.",
             "I'm based in {v}.", "I've been in {v} for two years now.",
             "Right now I'm living in {v}.", "Our family lives in {v}.",
             "I just signed a lease in {v}.", "My apartment is in {v}.",
             "I live over in {v} now.", "My current address is in {v}."),
    "hometown": ("I was raised in {v}.", "My hometown is {v}.", "I come from {v}.",
                 "I was born and raised in {v}.", "Growing up in {v} was fun.",
                 "I'm from {v} originally.", "{v} is where I grew up.", "As a kid I lived in {v}.",
                 "My roots are in {v}.", "{v} is where I was born.",
                 "I was a little kid in {v}.", "My parents raised me in {v}."),
    "locker": ("My locker combination is {v}.", "The locker opens with code {v}.",
               "Locker code: {v}.",
               "I keep my stuff in a locker, code {v}.", "{v} is my locker code.",
               "The combination for my locker is {v}."),
    "room": ("I'm in room {v}.", "Our room is number {v}.", "My room is {v}.",
             "They gave me room {v}.", "{v} is my room number.",
             "I'm sleeping in room {v} tonight.",
             "Room {v} is mine for the week.", "I checked into room {v}."),
    "band": ("{v} is my favorite band.", "I'm a huge fan of the band {v}.",
             "My favourite band is {v}.",
             "I've seen {v} live five times.", "{v} are my favourite band by far.",
             "Nobody beats {v}, my favourite band.",
             "I listen to {v} all the time.", "The band I play most is {v}."),
    "employer": ("I'm employed at {v}.", "My company is {v}.", "I started working at {v}.",
                 "I've been at {v} for three years.", "My job is at {v}.", "I got hired by {v}.",
                 "I'm on the team at {v}.", "I do my nine-to-five at {v}.",
                 "{v} pays my salary.", "I've got a job with {v}."),
}  # fmt: skip

EXTRA_ASKS: dict[str, tuple[str, ...]] = {
    "name": ("What do people call me?", "Do you know what I'm called?",
             "Do you remember my name?",
             "What's my name again?", "Do you know who I am?", "What name did I give you?",
             "How should you address me?",
             "Can you say my name?", "What should you call me?",
             "Any idea who I am?", "Who is chatting with you right now?",
             "Say my name, please.", "Do you recall who you're talking to?"),
    "dog": ("What's our dog called?", "Do you remember my dog's name?",
            "What's the dog's name?", "What do we call our dog?",
            "Remind me what my dog is called?"),
    "sister": ("What's my sister called?", "Do you know my sister's name?",
               "What did I say my sister's name was?", "Who is my sister again?"),
    "friend": ("Who's my closest friend?", "Do you remember my best friend's name?",
               "Who did I say my best pal is?",
               "Which friend am I closest to?", "Who's my oldest friend?",
               "Remind me who my best friend is?",
               "Who's my buddy?", "Which friend do I trust most?"),
    "city": ("Where am I living now?", "What city is my home?", "Where do I live?",
             "What town do I live in these days?",
             "Where am I based?", "What city is home for me?", "Remind me where I live?",
             "What's my current city?", "Where's my apartment?"),
    "hometown": ("Which town was I raised in?", "What's my hometown?",
                 "Where was I born and raised?",
                 "Where am I from?", "What town did I grow up in?",
                 "Where did I spend my early years?",
                 "Where are my roots?", "What place did I grow up in?"),
    "locker": ("What opens my locker?", "Do you remember my locker combination?",
               "Can you tell me my locker code?", "Remind me of my locker code?"),
    "room": ("What room am I in?", "Do you know my room number?",
             "What's the number of my room?", "Which room did they give me?",
             "Which room is mine?"),
    "band": ("Who is my favourite band?", "What band am I a fan of?",
             "Which band do I like best?", "What band do I listen to most?",
             "Which band do I play all the time?"),
    "employer": ("What company do I work at?", "Who is my employer?",
                 "Who do I work for?", "Where's my job?",
                 "Which company pays me?", "Where am I employed?"),
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
# a change told in its own words, not "Actually, " + a statement: "I've just moved to
# {v}." (``note_dialogues.SPECIFIC_UPDATE_RATE`` of the updates of these attributes)
UPDATE_STATES: dict[str, tuple[str, ...]] = {
    "name": (
        "I've changed my name to {v}.",
        "From now on, call me {v}.",
        "I use the name {v} now.",
        "New name: {v}. Please use it.",
    ),
    "dog": (
        "Our new puppy is called {v}.",
        "We renamed the dog {v}.",
        "The dog answers to {v} now.",
    ),
    "sister": ("I got it wrong, my sister is called {v}.", "My sister goes by {v} now."),
    "friend": ("My best friend now is {v}.", "{v} has become my best friend."),
    "city": ("We relocated to {v} last month.", "I've just moved to {v}."),
    "hometown": ("My mistake, I grew up in {v}.", "I misremembered: my hometown is {v}."),
    "locker": ("They reset my locker code to {v}.", "My new locker code is {v}."),
    "room": ("I switched rooms, I'm in {v} now.", "My new room is {v}."),
    "band": ("My favourite band these days is {v}.", "I've gone off them; {v} is my band now."),
    "employer": ("I changed jobs, I'm at {v} now.", "I left my old job and joined {v}."),
    "brother": ("Oops, my brother is called {v}.",),
    "boss": ("I have a new boss, {v}.",),
    "holiday": ("Change of plans: my holiday is in {v} now.",),
    "wifi": ("I changed the wifi password to {v}.",),
}
# questions built around an attribute's own words (``Attribute.mine``: "my dog's name",
# "where I live"), so that every attribute, the note-only ones too, is asked in more
# than its few handwritten ways
ASK_FRAMES = ("Do you remember {mine}?", "Can you tell me {mine}?", "Do you know {mine}?",
              "What did I tell you about {mine}?", "Tell me {mine}, please.",
              "I forgot {mine}. Do you know it?")  # fmt: skip


def framed_asks(attribute: Attribute) -> tuple[str, ...]:
    """Every :data:`ASK_FRAMES` question about ``attribute``."""
    return tuple(frame.format(mine=attribute.mine) for frame in ASK_FRAMES)


UPDATE_OPENERS = ("Actually, ", "Update: ", "Oh, and things changed: ", "Correction: ",
                  "Small change: ", "Turns out ", "Scratch that, ")  # fmt: skip
