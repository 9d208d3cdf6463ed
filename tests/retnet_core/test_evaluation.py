"""Evaluation arithmetic: bits per character and exact-answer rates, against oracles."""

from __future__ import annotations

import math

import pytest
import torch

from retnet_core.tokenizer import ChatTokenizer, Message
from retnet_core.training.data import Conversation, pack
from retnet_core.training.dialogues import DialogueGenerator, ValuePools
from retnet_core.training.evaluation import (
    answer_accuracy,
    answer_scores,
    evaluate_lm,
    render_supervised,
)


@pytest.fixture(scope="module")
def setup():
    pools = ValuePools.build(per_kind=200)
    gen = DialogueGenerator(pools, "heldout", seed=0)
    dialogues = [ex.flat() for ex in gen.sample(12, kinds=("in_context", "passage"))]
    texts = [m.content for d in dialogues for m in d]
    return ChatTokenizer.train(texts * 3, vocab_size=350), dialogues


def _oracle(tok: ChatTokenizer, dialogues, corrupt: set[int] = frozenset()):
    """logits_fn that predicts every next token right, except in dialogues ``corrupt``."""
    full = [tok.render_ids(d) for d in dialogues]

    def fn(x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*x.shape, tok.vocab_size)
        for b, row in enumerate(x.tolist()):
            i = next(i for i, ids in enumerate(full) if ids[:-1] == row[: len(ids) - 1])
            nxt = full[i][1:] + [tok.pad_id] * len(row)
            for t in range(len(row)):
                out[b, t, nxt[t]] = 1.0
            if i in corrupt:  # flip the last scored prediction to a wrong token
                t = len(full[i]) - 2
                out[b, t] = 0.0
                out[b, t, tok.pad_id] = 1.0
        return out

    return fn


def test_answer_accuracy_oracle(setup) -> None:
    tok, dialogues = setup
    assert answer_accuracy(_oracle(tok, dialogues), tok, dialogues, seq_len=512) == 1.0
    bad = answer_accuracy(_oracle(tok, dialogues, {0, 3, 5}), tok, dialogues, seq_len=512)
    assert bad == pytest.approx(9 / 12)
    scores = answer_scores(_oracle(tok, dialogues, {0, 3, 5}), tok, dialogues, seq_len=512)
    n_tokens = sum(len(tok.render_turn(d[-1])) - 1 for d in dialogues)
    assert scores["token"] == pytest.approx(1 - 3 / n_tokens)


def test_last_only_targets_the_final_turn(setup) -> None:
    tok, dialogues = setup
    ids, targets = render_supervised(tok, dialogues[0], last_only=True)
    last = tok.render_turn(dialogues[0][-1])
    assert ids[-len(last) :] == last
    assert targets == [False] * (len(ids) - len(last) + 1) + [True] * (len(last) - 1)


def test_uniform_model_bits_per_char() -> None:
    tok = ChatTokenizer.train(["abc def ghi"] * 5, vocab_size=300)
    convs = [
        Conversation(str(i), (Message("user", "abc def"), Message("assistant", "ghi")))
        for i in range(30)
    ]
    stream = pack(tok, convs)
    uniform = lambda x: torch.zeros(*x.shape, tok.vocab_size)  # noqa: E731
    out = evaluate_lm(uniform, stream, seq_len=16, batch_size=4)
    bits = math.log2(tok.vocab_size)
    assert out["bits_per_token"] == pytest.approx(bits)
    assert out["tokens"] == len(stream) - 1
    assert out["bits_per_char"] == pytest.approx(bits * (len(stream) - 1) / stream.n_chars)
