"""The cross-session memory objective: spans, forgetting, gradients, and a tiny run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from retnet_core.checkpoint import load_pretrained
from retnet_core.config import RetNetConfig
from retnet_core.memory import TensorBank
from retnet_core.model import RetNetLM
from retnet_core.tokenizer import ChatTokenizer, Message
from retnet_core.training.dialogues import DialogueGenerator
from retnet_core.training.memory_train import (
    _mask_forgotten,
    cross_session,
    cross_session_eval,
    cross_session_loss,
    user_spans,
)
from retnet_core.training.train import load_config, train

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def _model(tok: ChatTokenizer) -> RetNetLM:
    torch.manual_seed(0)
    return RetNetLM(
        RetNetConfig(
            vocab_size=tok.vocab_size,
            d_model=32,
            n_layers=2,
            n_heads=2,
            ffn_dim=64,
            memory_layers=[1],
            memory_d_key=16,
            memory_d_value=16,
        )
    )


def test_user_spans(tok) -> None:
    msgs = [Message("user", "hi"), Message("assistant", "yo"), Message("user", "My dog is Rex.")]
    ids = tok.render_ids(msgs)
    spans = user_spans(tok, msgs)
    assert len(spans) == 2
    (s0, e0), (s1, e1) = spans
    # content only, as the service writes it: no role token, no <|end|>
    assert s0 == 1 and ids[s0 - 1] == tok.user_id and ids[e0] == tok.end_id
    assert ids[s1 - 1] == tok.user_id and e1 == len(ids) - 1
    assert tok.decode(ids[s1:e1]) == "My dog is Rex."


def test_forget_masks_the_stated_slot(pools) -> None:
    gen = DialogueGenerator(pools, "train", seed=5)
    ex = next(e for e in (gen.example("forget") for _ in range(50)) if len(e.sessions[0]) > 2)
    users = [m for m in ex.sessions[0] if m.role == "user"]
    bank = TensorBank.empty(1, 4, 4)
    bank.append(
        torch.zeros(1, len(users), 4),
        torch.zeros(1, len(users), 4),
        torch.zeros(1, len(users)),
        torch.ones(1, len(users), dtype=torch.bool),
    )
    _mask_forgotten(bank, [ex], torch.arange(len(users)).unsqueeze(0))
    dropped = [m.content for m, keep in zip(users, bank.mask[0].tolist(), strict=True) if not keep]
    assert len(dropped) == 1 and ex.forgotten in dropped[0]


def test_answer_loss_reaches_the_write_side(tok, pools) -> None:
    model = _model(tok)
    examples = DialogueGenerator(pools, "train", seed=1).sample(4, kinds=("recall",))
    loss = cross_session_loss(model, tok, examples, "cpu", seq_len=64)
    loss.backward()
    mem = model.blocks[1].memory
    # the gate and the key projection are only used when session 1 writes
    assert mem.gate.weight.grad is not None and mem.gate.weight.grad.abs().sum() > 0
    assert mem.k_proj.weight.grad.abs().sum() > 0
    # single-session examples carry no cross-session loss
    single = DialogueGenerator(pools, "train", seed=1).sample(2, kinds=("in_context",))
    assert float(cross_session_loss(model, tok, single, "cpu")) == 0.0


def test_objective_trains_and_evaluates(tok, pools) -> None:
    """A few steps of the objective alone lower it; the eval reports a rate per kind."""
    torch.set_num_threads(1)
    model = _model(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = DialogueGenerator(pools, "train", seed=2)
    first = None
    for _ in range(20):
        loss = cross_session_loss(
            model, tok, gen.sample(8, kinds=("recall", "unknown")), "cpu", seq_len=64
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else float(loss.detach())
    assert float(loss.detach()) < first - 1.0
    held = {"recall": DialogueGenerator(pools, "heldout", seed=0).sample(8, kinds=("recall",))}
    scores = cross_session_eval(model.eval(), tok, held, "cpu", seq_len=64)
    assert set(scores) == {"memory_recall", "memory_recall_tokens"}
    assert 0.0 <= scores["memory_recall"] <= scores["memory_recall_tokens"] <= 1.0
    assert scores["memory_recall_tokens"] > 0.15  # the answer template is being learned


def test_train_with_memory_hooks(tmp_path) -> None:
    cfg = load_config(TINY)
    cfg = replace(
        cfg,
        out_dir=str(tmp_path),
        max_steps=6,
        eval_interval=0,
        memory_batch=4,
        model={**cfg.model, "memory_layers": [1], "memory_d_key": 16, "memory_d_value": 16},
        memory_objective="retnet_core.training.memory_train:cross_session_loss",
        memory_eval="retnet_core.training.memory_train:cross_session_eval",
    )
    result = train(cfg)
    assert {"memory_recall", "memory_forget", "memory_unknown"} <= set(result["eval"])
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in log if "loss" in r)  # no NaN
    assert load_pretrained(tmp_path / "checkpoint").config.memory_layers == [1]


def test_forget_request_learns_to_point_at_the_stated_slot(tok, pools) -> None:
    """Training the pointer term alone moves a forget request's read onto the slot of
    the fact it names (what the service then removes), above the 1/N of chance."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = _model(tok)
    gen = DialogueGenerator(pools, "train", seed=4)
    held = DialogueGenerator(pools, "heldout", seed=1).sample(24, kinds=("forget",))
    with torch.no_grad():
        before = cross_session(model.eval(), tok, held, "cpu", seq_len=64)
    assert before.pointer_logp.shape == (24,) and before.pointer_hit.shape == (24,)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(100):
        run = cross_session(model, tok, gen.sample(8, kinds=("forget",)), "cpu", seq_len=64)
        loss = -run.pointer_logp.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = cross_session(model.eval(), tok, held, "cpu", seq_len=64)
    assert float(after.pointer_logp.mean()) > float(before.pointer_logp.mean()) + 0.3
    stated = [len([m for m in ex.sessions[0] if m.role == "user"]) for ex in held]
    chance = sum(1 / n for n in stated) / len(stated)
    assert float(after.pointer_hit.float().mean()) > chance + 0.1


def test_document_examples_write_the_passage_and_ask_in_a_new_session(tok, pools) -> None:
    ex = DialogueGenerator(pools, "heldout", seed=3).example("document")
    (passage,), (question, answer) = ex.sessions
    assert passage.role == "passage" and question.role == "user" and ex.answer in passage.content
    assert ex.answer in answer.content
    ids = tok.render_ids([passage])
    ((s, e),) = user_spans(tok, [passage])  # passages are written like user turns
    assert tok.decode(ids[s:e]) == passage.content


CONVERSATION = tuple(
    Message("user" if i % 2 == 0 else "assistant", f"message number {i} " + "x" * (300 * (i == 0)))
    for i in range(9)
)


def test_chitchat_examples_cut_a_real_conversation_in_two_sessions(pools) -> None:
    gen = DialogueGenerator(pools, "train", seed=1, chitchat=[CONVERSATION, CONVERSATION[:3]])
    for _ in range(20):
        ex = gen.example("chitchat")
        first, second = ex.sessions
        assert 2 <= len(first) <= 4 and 1 <= len(second) <= 4 and ex.answer == ""
        flat = ex.flat()
        assert [m.content[:17] for m in flat] == [m.content[:17] for m in CONVERSATION[: len(flat)]]
        assert all(len(m.content) <= 240 for m in flat)  # session 1 is never cut: short turns
    with pytest.raises(ValueError, match="needs conversations"):
        DialogueGenerator(pools, "train", seed=1).example("chitchat")


def test_chitchat_sessions_train_every_reply_of_the_second_session(tok, pools) -> None:
    gen = DialogueGenerator(pools, "train", seed=2, chitchat=[CONVERSATION])
    chat, recall = gen.example("chitchat"), gen.example("recall")
    out = cross_session(_model(tok), tok, [chat, recall], "cpu")
    trained = (out.labels != -100).sum(dim=1).tolist()
    replies = [m for m in chat.sessions[-1] if m.role == "assistant"]
    assert len(replies) >= 1
    expected = sum(len(tok.encode(m.content)) + 1 for m in replies)  # content + <|end|>
    assert trained[0] == expected  # all replies, not just the last
    last = recall.sessions[-1][-1]
    assert trained[1] == len(tok.encode(last.content)) + 1  # the scored answer only
    loss = cross_session_loss(_model(tok), tok, [chat, recall], "cpu")
    assert torch.isfinite(loss)
