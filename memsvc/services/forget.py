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
