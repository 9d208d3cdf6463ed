"""Context-aware decoding of a noted turn: the engine feeds the turn without its note
beside it and chooses the first token from both (retnet_core.sampling.contrast_context).

Checked on a tiny random checkpoint against the same numbers computed by hand: the
batched prefill and a prefill fed alone give the contrasted first token, only the first,
and the turn's state stays the one with the note; and over HTTP (Postgres + Redis), a
noted turn's reply starts with the contrasted token, at the setting's weight.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from conftest import make_backend
from server_util import Server, ask_in_new_session
from tiny_model import make_tiny_checkpoint

from memsvc.engine.requests import DoneEvent, GenerateRequest, PrefillRequest, Segment
from memsvc.engine.runtime import ModelRuntime
from memsvc.engine.scheduler import CONTRAST_OWN_CALL, Scheduler
from memsvc.metrics import Metrics
from memsvc.services.memory_notes import asks_about_user
from retnet_core.memory_note import note_text
from retnet_core.sampling import SamplingParams, contrast_context

WEIGHT = 4.0


@pytest.fixture(scope="module")
def runtime(checkpoint: Path) -> ModelRuntime:
    return ModelRuntime.load(checkpoint, "cpu")


def _turns(rt: ModelRuntime) -> list[tuple[list[int], list[int]]]:
    """(prompt with a note, the same prompt without it) for a few user turns."""
    tok = rt.tokenizer
    note = tok.render_turn({"role": "system", "content": "The user said: my dog is Rex."})
    asks = ["What is my dog called?", "Who am I?", "Tell me about my pets", "Hi"]
    return [
        (note + tok.render_turn({"role": "user", "content": a}) + tok.generation_prompt(),
         tok.render_turn({"role": "user", "content": a}) + tok.generation_prompt())
        for a in asks
    ]  # fmt: skip


def _expected(
    rt: ModelRuntime, turn: tuple[list[int], list[int]], state, weight: float = WEIGHT
) -> tuple[int, int]:
    """(greedy first token with the contrast, without it), computed directly."""
    noted = rt.prefill(turn[0], state, []).logits.clone()
    plain = rt.prefill(turn[1], state, []).logits.clone()
    moved = contrast_context(noted, plain, weight)
    for logits in (moved, noted):  # as the engine samples: padding is never chosen
        logits[rt.tokenizer.pad_id] = float("-inf")
    return int(moved.argmax()), int(noted.argmax())


def _decode(rt: ModelRuntime, requests: list[GenerateRequest]) -> list[DoneEvent]:
    sched = Scheduler(rt, Metrics())
    for r in requests:  # all queued before the loop starts: one round
        sched.submit(r)
    sched.start()
    try:
        done = []
        for r in requests:
            while not isinstance(e := r.sink.get(timeout=60), DoneEvent):
                pass
            done.append(e)
        return done
    finally:
        sched.stop()


def test_contrast_context_equation() -> None:
    with_ctx = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    without = torch.tensor([[3.0, -1.0, 0.5, -1.0]], dtype=torch.float64)
    assert torch.equal(contrast_context(with_ctx, without, 0.0), with_ctx)
    w = 1.5
    got = contrast_context(with_ctx, without, w).softmax(-1)
    p, p0 = with_ctx.softmax(-1), without.softmax(-1)
    want = p ** (1 + w) / p0**w
    torch.testing.assert_close(got, want / want.sum(), rtol=1e-6, atol=0)
    # a logit offset of either input changes nothing; what the context adds wins
    torch.testing.assert_close(
        contrast_context(with_ctx + 7, without - 3, w).softmax(-1), got, rtol=1e-6, atol=0
    )
    assert int(with_ctx.argmax()) == 0 and int(got.argmax()) == 1


@pytest.mark.parametrize("alone", [False, True], ids=["batched", "fed-alone"])
def test_first_token_is_chosen_against_the_turn_without_its_note(
    runtime: ModelRuntime, alone: bool
) -> None:
    rt, turns = runtime, _turns(runtime)
    old = rt.prefill(rt.tokenizer.render_turn({"role": "user", "content": "old"}), None, [])
    starts = [None, old.state, None, old.state]
    expected = [_expected(rt, t, s) for t, s in zip(turns, starts, strict=True)]
    # the contrast must matter somewhere, or this test could not fail
    assert any(moved != plain for moved, plain in expected)
    greedy = SamplingParams(temperature=0.0)
    requests = [
        GenerateRequest(
            PrefillRequest([Segment(t[0], alone=alone)], s), greedy, 3, queue.Queue(),
            contrast=t[1], contrast_weight=WEIGHT,
        )
        for t, s in zip(turns, starts, strict=True)
    ]  # fmt: skip
    plain = [
        GenerateRequest(PrefillRequest([Segment(t[0], alone=alone)], s), greedy, 3, queue.Queue())
        for t, s in zip(turns, starts, strict=True)
    ]
    done, done_plain = _decode(rt, requests), _decode(rt, plain)
    for (moved, first), got, ref in zip(expected, done, done_plain, strict=True):
        assert ref.token_ids[0] == first and got.token_ids[0] == moved
        if moved == first:  # only the first token is contrasted: the rest is the same
            assert got.token_ids == ref.token_ids
    for got, turn, start in zip(done, turns, starts, strict=True):
        # the state is the noted prompt's, then the reply and <|end|>
        fed = turn[0] + got.token_ids + [rt.tokenizer.end_id]
        want = rt.prefill(fed, start, []).state
        for x, y in zip(got.state.S, want.S, strict=True):
            torch.testing.assert_close(x.float(), y.float(), rtol=0, atol=1e-4)


def test_weight_zero_or_a_forced_reply_feeds_no_contrast(runtime: ModelRuntime) -> None:
    rt, turns = runtime, _turns(runtime)
    greedy, calls = SamplingParams(temperature=0.0), []
    said = tuple(rt.tokenizer.encode("Done."))
    real = rt.prefill_rows

    def counted(rows, states):
        calls.append(len(rows))
        return real(rows, states)

    rt.prefill_rows = counted
    try:
        forced = GenerateRequest(
            PrefillRequest([Segment(turns[0][0])]), greedy, 3, queue.Queue(),
            forced=said, contrast=turns[0][1], contrast_weight=WEIGHT,
        )  # fmt: skip
        off = GenerateRequest(
            PrefillRequest([Segment(turns[1][0])]), greedy, 3, queue.Queue(),
            contrast=turns[1][1], contrast_weight=0.0,
        )  # fmt: skip
        on = GenerateRequest(
            PrefillRequest([Segment(turns[2][0])]), greedy, 3, queue.Queue(),
            contrast=turns[2][1], contrast_weight=WEIGHT,
        )  # fmt: skip
        done = _decode(rt, [forced, off, on])
    finally:
        del rt.prefill_rows
    assert calls == [4]  # three prompts and one contrast, in one call
    assert done[0].token_ids == list(said[:3])  # max_new still applies
    assert done[1].token_ids[0] == _expected(rt, turns[1], None)[1]
    assert done[2].token_ids[0] == _expected(rt, turns[2], None)[0]


def test_many_contrasts_get_their_own_call(runtime: ModelRuntime) -> None:
    """From CONTRAST_OWN_CALL contrasted turns in a round, the short contrast rows are
    fed in a second call (not padded to the noted rows' width); same first tokens."""
    rt, turns = runtime, _turns(runtime)
    assert len(turns) >= CONTRAST_OWN_CALL
    greedy, calls = SamplingParams(temperature=0.0), []
    real = rt.prefill_rows

    def counted(rows, states):
        calls.append([len(r) for r in rows])
        return real(rows, states)

    rt.prefill_rows = counted
    try:
        done = _decode(rt, [
            GenerateRequest(PrefillRequest([Segment(t[0])]), greedy, 2, queue.Queue(),
                            contrast=t[1], contrast_weight=WEIGHT)
            for t in turns
        ])  # fmt: skip
    finally:
        del rt.prefill_rows
    assert calls == [[len(t[0]) for t in turns], [len(t[1]) for t in turns]]
    for got, turn in zip(done, turns, strict=True):
        assert got.token_ids[0] == _expected(rt, turn, None)[0]


# ---- over HTTP ------------------------------------------------------------------------
TOLD = "My dog is called Rex."
ASKS = ("What is my dog called?", "What's my dog's name?", "Remind me of my dog's name?",
        "Do you know what my dog is called?", "Tell me my dog's name.")  # fmt: skip
SERVED_WEIGHT = 3.0


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> Path:
    """A tiny random checkpoint without memory layers: its memories are notes."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("contrast") / "ckpt", seed=4,
                                memory_layers=())  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory, plain_model: Path) -> Iterator[tuple]:
    root = tmp_path_factory.mktemp("contrast-srv")
    for backend in make_backend("postgres", root, plain_model):
        env = {**backend.env, "MEMSVC_MEMORY_NOTE_CONTRAST": str(SERVED_WEIGHT)}
        with Server(env, root / "srv") as srv, httpx.Client(base_url=srv.url, timeout=60) as http:
            yield backend, http


@pytest.fixture(scope="module")
def first_tokens(plain_model: Path):
    """asked -> (first token's text with the contrast, without it), after the note of
    TOLD, computed in-process on the served checkpoint."""
    rt = ModelRuntime.load(plain_model, "cpu")
    tok = rt.tokenizer
    note = tok.render_turn({"role": "system", "content": note_text([TOLD])})

    def first(asked: str) -> tuple[str, str]:
        user = tok.render_turn({"role": "user", "content": asked}) + tok.generation_prompt()
        tokens = _expected(rt, (note + user, user), None, SERVED_WEIGHT)
        return tok.decode([tokens[0]]).strip(), tok.decode([tokens[1]]).strip()

    return first


def test_a_noted_question_starts_with_the_contrasted_token(served, first_tokens) -> None:
    backend, http = served
    # a question whose first token the contrast changes, or this test could not fail
    asked, (moved, plain) = next((a, t) for a in ASKS if (t := first_tokens(a))[0] != t[1] and t[0])
    key = backend.new_tenant("contrast")
    ask_in_new_session(http, key, "ann", TOLD)
    reply = ask_in_new_session(http, key, "ann", asked)
    assert len(reply["usage"]["noted_memories"]) == 1  # the note held the dog
    assert reply["message"]["content"].strip() == moved != plain


SMALL_TALK = (
    "Should I walk the dog today?",
    "What should I feed a dog?",
    "Dogs are lovely.",
    "Could you suggest a dog toy?",
    "Do dogs like rain?",
    "Can dogs eat rice?",
)


def test_small_talk_beside_a_note_is_not_contrasted(served, first_tokens) -> None:
    """Only a question about the user is contrasted: a noted message that asks nothing
    about them starts with the model's own first token."""
    backend, http = served
    key = backend.new_tenant("contrast-chat")
    ask_in_new_session(http, key, "ann", TOLD)
    checked = 0
    for text in SMALL_TALK:
        assert not asks_about_user(text)
        moved, plain = first_tokens(text)
        if moved == plain or not plain:
            continue  # the contrast would not show here
        reply = ask_in_new_session(http, key, "ann", text)
        if reply["usage"]["noted_memories"]:
            assert reply["message"]["content"].strip() == plain
            checked += 1
    assert checked  # at least one noted message whose contrast would have changed it
