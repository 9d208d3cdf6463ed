"""The note check (memsvc.services.note_check): a question about the user whose note
holds several lines runs once per line but the best-scored one, with that line alone,
and a line whose reply refuses leaves the note.

The rules are checked as pure functions; the service's path over HTTP (Postgres +
Redis, the engine's scheduler) on a tiny random checkpoint: its replies are not
English, so the served refusal pattern (``MEMSVC_MEMORY_NOTE_REFUSAL``) is the exact
check reply computed in-process for one line and one question. The line leaves that
question's note (``usage.noted_memories``) and stays in another question's, whose
check reply differs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import make_backend
from pydantic import ValidationError
from server_util import Server, ask_in_new_session
from tiny_model import make_tiny_checkpoint

from memsvc.config import Settings
from memsvc.engine.runtime import ModelRuntime
from memsvc.services.memory_notes import NoteTurn
from memsvc.services.note_check import (
    CHECK_TOKENS,
    NoteLine,
    kept_after_check,
    lines_to_check,
    reads_as_correction,
    refusal_pattern,
    refuses,
)
from retnet_core.memory_note import note_text
from retnet_core.sampling import contrast_context
from scripts.note_chatter import greedy_from

DOG, CAT = "My dog is called Rex.", "My cat is called Tom."
LINES = [
    NoteLine("a", "My dog is called Rex.", 0.42),
    NoteLine("b", "My cat is called Tom.", 0.30),
    NoteLine("c", "Actually, the dog is called Max now.", 0.11),
    NoteLine("d", "I work at Lumatek.", 0.12),
]


def test_every_line_but_the_best_and_the_corrections_is_checked() -> None:
    assert lines_to_check(LINES, asks=True) == [1, 3]
    # the best is wherever it lies in the note's (oldest-first) order
    moved = [LINES[1], LINES[3], LINES[0]]
    assert lines_to_check(moved, asks=True) == [0, 1]
    # equal scores: the first is kept as the best
    tied = [NoteLine("x", "My dog is Rex.", 0.3), NoteLine("y", "My cat is Tom.", 0.3)]
    assert lines_to_check(tied, asks=True) == [1]


def test_no_check_for_one_line_or_a_message_that_asks_nothing_about_the_user() -> None:
    assert lines_to_check(LINES[:1], asks=True) == []
    assert lines_to_check(LINES, asks=False) == []
    assert lines_to_check([], asks=True) == []


@pytest.mark.parametrize(
    ("text", "corrects"),
    [
        ("Actually, I go by Vaigo these days.", True),
        ("I switched to the harp.", True),
        ("They moved me, I'm in room 2934 now.", True),
        ("Sorry, I misspoke earlier, my sister is Ann.", True),
        ("My cat is called Tom.", False),
        ("I play the bagpipes in a little band.", False),
        ("Nowhere beats Lisbon.", False),  # "now" only as a word
    ],
)
def test_corrections(text: str, corrects: bool) -> None:
    assert reads_as_correction(text) is corrects


@pytest.mark.parametrize(
    ("reply", "refused"),
    [
        ("I don't know your dog's name.", True),
        ("I do not know where you live", True),
        ("Sorry, I can't remember that.", True),
        ("Your dog is called Rex.", False),
        ("I know! Your dog is Rex.", False),
    ],
)
def test_refusals(reply: str, refused: bool) -> None:
    assert refuses(reply) is refused


def test_a_configured_refusal_pattern_replaces_the_default() -> None:
    custom = refusal_pattern(r"no\s+clue")
    assert refuses("No clue, sorry.", custom) and not refuses("I don't know.", custom)
    assert refusal_pattern(None).pattern == refuses.__defaults__[0].pattern


def test_a_refused_line_leaves_and_the_others_stay() -> None:
    asked: list[list[str]] = []

    async def replies_of(texts: list[str]) -> list[str]:
        asked.append(texts)
        return ["I don't know your dog's name.", "Your dog is called Rex."]

    kept, out = asyncio.run(kept_after_check(LINES, [1, 3], replies_of))
    assert asked == [[LINES[1].text, LINES[3].text]]  # only the checked lines are run
    assert out == [LINES[1]] and kept == [LINES[0], LINES[2], LINES[3]]


def test_nothing_to_check_runs_nothing() -> None:
    async def replies_of(texts: list[str]) -> list[str]:
        raise AssertionError("no line was to be checked")

    kept, out = asyncio.run(kept_after_check(LINES, [], replies_of))
    assert kept == LINES and out == []


def test_a_turn_without_a_line_rebuilds_its_note_and_reads() -> None:
    turn = NoteTurn(note_text([x.text for x in LINES]), tuple(x.memory_id for x in LINES),
                    lines=tuple(LINES))  # fmt: skip
    less = turn.without([LINES[1]])
    assert less.note == note_text([LINES[0].text, LINES[2].text, LINES[3].text])
    assert less.read == ("a", "c", "d") and less.lines == (LINES[0], LINES[2], LINES[3])


def test_a_broken_refusal_pattern_is_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="not a regular expression"):
        Settings(memory_note_refusal="(unclosed")
    assert Settings(memory_note_refusal="").memory_note_refusal is None  # blank: unset


# ---------------------------------------------------------------- over HTTP

ASKS = ("What is my dog called?", "What's my dog's name?", "Remind me of my dog's name?",
        "Do you know what my dog is called?", "Tell me my dog's name.")  # fmt: skip


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> Path:
    """A tiny random checkpoint without memory layers: its memories are notes."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("check") / "ckpt", seed=4,
                                memory_layers=())  # fmt: skip


def _check_reply(rt: ModelRuntime, line: str, asked: str, weight: float = 1.0) -> str:
    """What the service's check decodes for ``line`` alone before ``asked`` in a new
    session: the first token contrasted against no note, then greedy."""
    tok = rt.tokenizer
    user = tok.render_turn({"role": "user", "content": asked}) + tok.generation_prompt()
    noted = tok.render_turn({"role": "system", "content": note_text([line])}) + user
    first = rt.prefill(noted, None, [])
    plain = rt.prefill(user, None, []).logits
    text = greedy_from(rt, contrast_context(first.logits, plain, weight), first.state, CHECK_TOKENS)
    # as the engine sends it: NUL shown as U+FFFD, an unfinished character cut at the end
    return text.replace("\x00", "\ufffd").rstrip("\ufffd")


@pytest.fixture(scope="module")
def questions(plain_model: Path) -> tuple[str, str, str]:
    """(a question, another whose check reply for CAT differs, CAT's reply to the first)."""
    rt = ModelRuntime.load(plain_model, "cpu")
    replies = {a: _check_reply(rt, CAT, a).strip() for a in ASKS}
    first = next(a for a in ASKS if replies[a])
    other = next(a for a in ASKS if replies[a] and replies[a] != replies[first]
                 and re.search(re.escape(replies[first]), replies[a], re.I) is None)  # fmt: skip
    return first, other, replies[first]


@pytest.fixture(scope="module")
def served(tmp_path_factory, plain_model: Path, questions) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("check-srv")
    for backend in make_backend("postgres", root, plain_model):
        env = {**backend.env, "MEMSVC_MEMORY_NOTE_REFUSAL": re.escape(questions[2])}
        with Server(env, root / "srv") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
            yield backend, http


def test_a_line_the_model_refuses_alone_leaves_the_note(served, questions) -> None:
    backend, http = served
    first, other, _ = questions
    key = backend.new_tenant("check")
    ask_in_new_session(http, key, "ann", DOG)
    ask_in_new_session(http, key, "ann", CAT)
    listed = http.get("/v1/users/ann/memories", headers={"Authorization": f"Bearer {key}"})
    assert listed.status_code == 200, listed.text
    ids = {m["text"]: m["id"] for m in listed.json()["memories"]}
    # the cat's check reply to ``other`` is not a refusal: the note keeps both lines
    assert sorted(ask_in_new_session(http, key, "ann", other)["usage"]["noted_memories"]) == sorted(
        ids.values()
    )
    assert _checked(http) == {"kept": 1.0, "left_out": 0.0}
    # to ``first`` it is: the cat leaves the note, the dog (the best line) is never checked
    assert ask_in_new_session(http, key, "ann", first)["usage"]["noted_memories"] == [ids[DOG]]
    assert _checked(http) == {"kept": 1.0, "left_out": 1.0}


def _checked(http: httpx.Client) -> dict[str, float]:
    """memsvc_note_lines_checked_total by result, from /metrics."""
    found = re.findall(
        r'^memsvc_note_lines_checked_total\{result="(\w+)"\} (\S+)$',
        http.get("/metrics").text,
        re.M,
    )
    return {result: float(value) for result, value in found}
