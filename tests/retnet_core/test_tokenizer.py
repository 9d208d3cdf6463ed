"""Tokenizer round trips and the chat template's ids and turn boundaries."""

from __future__ import annotations

import pytest

from retnet_core.tokenizer import (
    END,
    SPECIAL_TOKENS,
    USER,
    ChatTokenizer,
    Message,
)

CORPUS = [
    "hello there, how are you doing today?",
    "I'm doing well thanks! What about you?",
    "My dog is called Rex and my name is Ann.",
    "Café crème, naïve façade — 日本語のテキスト, emoji 😀🎉.",
] * 20


@pytest.fixture(scope="module")
def tok() -> ChatTokenizer:
    return ChatTokenizer.train(CORPUS, vocab_size=400, min_frequency=2)


@pytest.mark.parametrize(
    "text",
    [
        "hello there",
        "  leading and trailing spaces  ",
        "tabs\tand\nnewlines\r\n",
        "Café crème 日本語 😀 \u200b zero-width",
        "never seen: Ωψζ ʕ•ᴥ•ʔ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "",
    ],
)
def test_round_trip(tok: ChatTokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_special_token_strings_in_content_stay_text(tok: ChatTokenizer) -> None:
    text = f"please type {END} then {USER} literally"
    ids = tok.encode(text)
    assert tok.end_id not in ids and tok.user_id not in ids
    assert tok.decode(ids) == text


def test_special_ids_are_fixed(tok: ChatTokenizer) -> None:
    for i, name in enumerate(SPECIAL_TOKENS):
        assert tok.token_text(i) == name
    assert (tok.pad_id, tok.user_id, tok.assistant_id, tok.end_id) == (0, 2, 3, 5)
    assert 262 < tok.vocab_size <= 400  # bytes + specials + merges; tiny corpus runs out


def test_merges_learned(tok: ChatTokenizer) -> None:
    # a trained BPE spends fewer ids than bytes on text it has seen
    assert len(tok.encode("hello there")) < len(b"hello there")


CHAT = [
    Message("system", "Be kind."),
    Message("user", "hi"),
    {"role": "assistant", "content": "hello!"},
    Message("passage", "The museum is in Oslo."),
]


def test_template_ids_and_boundaries(tok: ChatTokenizer) -> None:
    r = tok.render(CHAT)
    expected: list[int] = []
    bounds = []
    for role, text in [
        ("system", "Be kind."),
        ("user", "hi"),
        ("assistant", "hello!"),
        ("passage", "The museum is in Oslo."),
    ]:
        expected += [tok.role_id(role), *tok.encode(text), tok.end_id]
        bounds.append(len(expected))
    assert r.ids == expected
    assert r.boundaries == bounds
    # every turn ends on <|end|>, so each boundary is a place to cut and carry state
    assert all(r.ids[b - 1] == tok.end_id for b in r.boundaries)
    assert len(r.targets) == len(r.ids)


def test_render_is_concatenation_of_turns(tok: ChatTokenizer) -> None:
    whole = tok.render_ids(CHAT)
    pieces = [i for m in CHAT for i in tok.render_turn(m)]
    assert whole == pieces
    assert tok.render_ids(CHAT) == whole  # deterministic


def test_text_output(tok: ChatTokenizer) -> None:
    out = tok.decode(tok.render_ids(CHAT[1:3]))
    assert out == "<|user|>hi<|end|><|assistant|>hello!<|end|>"
    assert tok.decode(tok.render_ids(CHAT[1:3]), skip_special=True) == "hihello!"


def test_targets_only_on_trained_roles(tok: ChatTokenizer) -> None:
    r = tok.render(CHAT[1:3], train_roles=("assistant",))
    user_len = len(tok.render_turn(CHAT[1]))
    assert not any(r.targets[:user_len])
    # the role token is given, the content and <|end|> are predicted
    assert r.targets[user_len:] == [False] + [True] * (len(r.ids) - user_len - 1)


def test_parse_inverts_render(tok: ChatTokenizer) -> None:
    msgs = [Message("user", "a <|end|> b"), Message("assistant", "ok 😀")]
    ids = tok.render_ids(msgs) + tok.generation_prompt()
    assert tok.parse(ids) == msgs
    assert tok.generation_prompt() == [tok.assistant_id]


def test_unknown_role_rejected(tok: ChatTokenizer) -> None:
    with pytest.raises(ValueError):
        Message("robot", "hi")
    with pytest.raises(ValueError):
        tok.role_id("tool")


def test_save_load(tok: ChatTokenizer, tmp_path) -> None:
    path = tok.save(tmp_path)
    assert path.name == "tokenizer.json"
    again = ChatTokenizer.load(tmp_path)
    text = "Café 😀 <|end|>"
    assert again.encode(text) == tok.encode(text)
    assert again.render_ids(CHAT) == tok.render_ids(CHAT)
    nested = tok.save(tmp_path / "new" / "dir" / "tok.json")  # parents are created
    assert ChatTokenizer.load(nested).encode(text) == tok.encode(text)


def test_state_carried_turn_by_turn_matches_whole(tok: ChatTokenizer) -> None:
    """The template's promise: feeding turns one at a time with the state carried
    gives the same state and logits as feeding the rendered conversation at once."""
    import torch

    from retnet_core.config import RetNetConfig
    from retnet_core.model import RetNetLM

    torch.manual_seed(0)
    model = (
        RetNetLM(
            RetNetConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=2, n_heads=2, ffn_dim=64)
        )
        .double()
        .eval()
    )
    whole = torch.tensor([tok.render_ids(CHAT)])
    logits_all, state_all = model.prefill(whole, boundaries=tok.render(CHAT).boundaries[:-1])
    state, pieces = None, []
    for message in CHAT:
        logits, state = model.prefill(torch.tensor([tok.render_turn(message)]), state=state)
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, dim=1), logits_all, atol=1e-9)
    assert torch.equal(state.position, state_all.position)
    for a, b in zip(state.S, state_all.S, strict=True):
        assert torch.allclose(a, b, atol=1e-9)
