"""Chit-chat split, packing and generated memory dialogues."""

from __future__ import annotations

import pytest
import torch

from retnet_core.tokenizer import ChatTokenizer, Message
from retnet_core.training.data import (
    IGNORE_INDEX,
    Conversation,
    eval_windows,
    load_chitchat,
    pack,
    pad_examples,
    parse_chitchat,
    sample_windows,
    split_conversations,
    split_of,
    words_of,
)
from retnet_core.training.dialogues import (
    ATTRIBUTES,
    KINDS,
    DialogueGenerator,
    ValuePools,
    example_texts,
    is_heldout,
)


@pytest.fixture(scope="module")
def chitchat() -> list[Conversation]:
    return load_chitchat()


@pytest.fixture(scope="module")
def splits(chitchat) -> dict[str, list[Conversation]]:
    return split_conversations(chitchat)


def test_chitchat_loads_two_sided_conversations(chitchat) -> None:
    # 7,168 conversations, 3,150 of them a single unanswered message
    assert 7168 - 3150 - 5 <= len(chitchat) <= 7168 - 3150
    assert all(len(c.messages) >= 2 for c in chitchat)
    assert chitchat[0].messages[0].role == "user"
    assert {m.role for m in chitchat[0].messages} == {"user", "assistant"}


def test_parse_merges_utterances_and_maps_speakers() -> None:
    raw = {
        "b": {
            "messages": [
                [{"text": "hi", "sender": "x"}, {"text": "you?", "sender": "x"}],
                [{"text": "yo", "sender": "y"}],
            ]
        },
        "a": {"messages": [[{"text": "alone", "sender": "x"}]]},
    }
    convs = parse_chitchat(raw)
    assert [c.id for c in convs] == ["b"]
    assert convs[0].messages == (Message("user", "hi\nyou?"), Message("assistant", "yo"))


def test_split_is_deterministic_and_disjoint(chitchat, splits) -> None:
    again = split_conversations(load_chitchat())
    assert {k: [c.id for c in v] for k, v in again.items()} == {
        k: [c.id for c in v] for k, v in splits.items()
    }
    ids = [set(c.id for c in v) for v in splits.values()]
    assert sum(map(len, ids)) == len(chitchat)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    n = len(chitchat)
    assert 0.03 * n < len(splits["val"]) < 0.07 * n
    assert 0.03 * n < len(splits["test"]) < 0.07 * n
    # the split depends on the id alone, not on order or neighbours
    assert split_of(splits["val"][0].id) == "val"


def test_pack_and_windows() -> None:
    tok = ChatTokenizer.train(["hello there friend", "how are you"] * 10, vocab_size=300)
    convs = [
        Conversation(str(i), (Message("user", "hello"), Message("assistant", "hi there")))
        for i in range(20)
    ]
    stream = pack(tok, convs)
    one = tok.render_ids(convs[0].messages)
    assert stream.ids[: len(one)].tolist() == one
    assert len(stream) == 20 * len(one)
    assert stream.n_chars == 20 * len("hello\nhi there")
    g = torch.Generator().manual_seed(0)
    x, y = sample_windows(stream, 4, 8, g)
    assert x.shape == y.shape == (4, 8)
    assert torch.equal(x[:, 1:], y[:, :-1])  # labels are inputs shifted by one
    predicted = sum(w[1].numel() for w in eval_windows(stream, 16))
    assert predicted == len(stream) - 1  # every token but the first, exactly once


def test_pad_examples_masks_non_targets() -> None:
    x, y = pad_examples(
        [([2, 10, 11, 5], [False, True, True, True]), ([2, 7], [False, False])], seq_len=5, pad_id=0
    )
    assert x.tolist() == [[2, 10, 11, 0, 0], [2, 0, 0, 0, 0]]
    assert y.tolist() == [[10, 11, 5, IGNORE_INDEX, IGNORE_INDEX], [IGNORE_INDEX] * 5]


@pytest.fixture(scope="module")
def pools(splits) -> ValuePools:
    train_words = words_of(m.content for c in splits["train"] for m in c.messages)
    return ValuePools.build(per_kind=1500, exclude=train_words)


def test_pools_disjoint(pools) -> None:
    for kind in pools.train:
        assert pools.heldout[kind], kind
        assert not set(pools.train[kind]) & set(pools.heldout[kind])
        assert all(is_heldout(v) for v in pools.heldout[kind])


def test_heldout_values_never_in_training_data(pools, splits) -> None:
    heldout = {v.lower() for v in pools.all_heldout()}
    train_examples = DialogueGenerator(pools, "train", seed=0).sample(3000)
    assert not heldout & words_of(example_texts(train_examples))
    assert not heldout & words_of(m.content for c in splits["train"] for m in c.messages)
    # and evaluation really uses them
    eval_examples = DialogueGenerator(pools, "heldout", seed=0).sample(200, kinds=("recall",))
    assert all(ex.answer in heldout or ex.answer.lower() in heldout for ex in eval_examples)


def test_generator_is_deterministic(pools) -> None:
    a = DialogueGenerator(pools, "train", seed=3).sample(50)
    b = DialogueGenerator(pools, "train", seed=3).sample(50)
    c = DialogueGenerator(pools, "train", seed=4).sample(50)
    assert a == b and a != c


def test_example_shapes(pools) -> None:
    gen = DialogueGenerator(pools, "heldout", seed=1)
    for kind in KINDS:
        for _ in range(20):
            ex = gen.example(kind)
            last = ex.sessions[-1][-1]
            assert last.role == "assistant"
            if ex.answer:
                assert ex.answer in last.content
            else:
                assert last.content.startswith("I don't know")
            if kind in ("recall", "unknown"):
                assert len(ex.sessions) == 2
                # the asked-for value is never stated in the asking session
                if ex.answer:
                    assert all(ex.answer not in m.content for m in ex.sessions[-1][:-1])
                    assert any(ex.answer in m.content for m in ex.sessions[0])
            if kind == "forget":
                assert len(ex.sessions) == 3
                assert "forget" in ex.sessions[1][0].content.lower()
            if kind == "passage":
                assert ex.sessions[0][0].role == "passage"
                assert ex.answer in ex.sessions[0][0].content
    assert len(ATTRIBUTES) >= 8
