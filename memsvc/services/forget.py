"""Forget requests said in chat: "Please forget my dog's name." removes that memory.

A user who tells the assistant to forget something expects it gone from every later
session, not only a reply that says so. The feedback endpoint removes slots by message
or text; a request made in plain chat goes through :func:`parse_forget`, which
recognises it and says what it names:

- ``topic`` ("my dog's name"): the service removes the slot that the request's own
  last token reads most. The model is trained for exactly that pointer
  (``retnet_core.training.memory_train``), so the choice is the model's, made with the same
  read attention that answers "What's my dog called?";
- ``last`` ("forget that", "forget what I just said"): the newest slot;
- ``all`` ("forget everything"): every slot of the session's memory.

The request itself is not written as a memory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

# "forget", but not "don't forget" / "never forget" / "I forgot"
_VERB = re.compile(r"(?<!n't )(?<!not )(?<!never )\b(forget|erase)\b", re.IGNORECASE)
_ALL = re.compile(r"^(everything|all|all of (it|that)|all about me|everything about me)\b")
_LAST = re.compile(r"^(that|it|this|what i (just )?(said|told you))$")
_FILLER = re.compile(r"^(about|the fact that)\s+", re.IGNORECASE)


@dataclass(frozen=True)
class ForgetRequest:
    """What a forget request asks for: ``scope`` is topic, last or all."""

    scope: str
    topic: str = ""


def parse_forget(text: str) -> ForgetRequest | None:
    """The forget request in ``text``, or None when the message asks for none.

    >>> parse_forget("Please forget my dog's name.")
    ForgetRequest(scope='topic', topic="my dog's name")
    >>> parse_forget("Forget that!")
    ForgetRequest(scope='last', topic='')
    >>> parse_forget("Don't forget my dog's name.") is None
    True
    """
    match = _VERB.search(text)
    if match is None:
        return None
    rest = text[match.end() :].strip().rstrip(".!?").strip()
    rest = _FILLER.sub("", rest).strip()
    low = rest.lower()
    if not low or _LAST.match(low):
        return ForgetRequest("last")
    if _ALL.match(low):
        return ForgetRequest("all")
    return ForgetRequest("topic", rest)


# the user's words turned to the assistant's: "my dog's name" -> "your dog's name"
_TO_YOU = {"my": "your", "mine": "yours", "i": "you", "me": "you", "myself": "yourself",
           "i'm": "you're", "i've": "you've", "our": "your", "we": "you", "us": "you"}  # fmt: skip
_PERSON = re.compile(
    r"\b(" + "|".join(re.escape(w) for w in sorted(_TO_YOU, key=len, reverse=True)) + r")\b",
    re.IGNORECASE,
)
QUOTED_AT_MOST = 3  # memories quoted back in a confirmation
QUOTE_CHARS = 80


def _as_yours(topic: str) -> str:
    """The topic as the assistant says it back.

    >>> _as_yours("the instrument I play")
    'the instrument you play'
    >>> _as_yours("what I'm allergic to")
    "what you're allergic to"
    """
    return _PERSON.sub(lambda m: _TO_YOU[m.group(1).lower()], topic)


def _quoted(text: str) -> str:
    text = " ".join(text.split())
    return f'"{text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 3] + "..."}"'


def confirmation(request: ForgetRequest, removed: Sequence[str]) -> str:
    """The reply to a forget request: what was removed, quoted, or that nothing was.

    The service writes it, not the model: the user must learn exactly what went, and a
    small model asked to forget answers "I'm sorry for your loss." (``memsvc bench
    memory``, stage 8). ``removed``: the removed memories' texts, best match first.

    >>> confirmation(ForgetRequest("topic", "my dog's name"), ["My dog is called Rex."])
    'Done, I have forgotten it. Removed from my memory: "My dog is called Rex."'
    >>> confirmation(ForgetRequest("topic", "where I live"), [])
    'I have nothing stored about where you live, so there was nothing to forget.'
    >>> confirmation(ForgetRequest("all"), ["A.", "B."])
    'Done, I have forgotten everything you told me (2 memories).'
    """
    if not removed:
        about = _as_yours(request.topic) if request.scope == "topic" else "you"
        return f"I have nothing stored about {about}, so there was nothing to forget."
    if request.scope == "all":
        n = len(removed)
        return (
            f"Done, I have forgotten everything you told me ({n} memor{'y' if n == 1 else 'ies'})."
        )
    quotes = "; ".join(_quoted(t) for t in removed[:QUOTED_AT_MOST])
    more = len(removed) - QUOTED_AT_MOST
    tail = f" and {more} more" if more > 0 else ""
    if len(removed) == 1:
        return f"Done, I have forgotten it. Removed from my memory: {quotes}"
    return f"Done, I have forgotten it. Removed from my memory ({len(removed)}): {quotes}{tail}"
