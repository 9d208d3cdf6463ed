"""memsvc bench distilled / model-speed: the pieces that decide what is measured."""

from __future__ import annotations

from pathlib import Path

import torch

from memsvc.bench.distilled import (
    far_examples,
    far_recall_rate,
    heldout_conversations,
    rag_examples,
    report,
)
from memsvc.bench.model_speed import _verdict, prompt_of
from retnet_core.checkpoint import load_pretrained
from retnet_core.tokenizer import ChatTokenizer

TINY = Path(__file__).resolve().parents[2] / "memsvc" / "models" / "default"


def test_far_examples_put_the_fact_beyond_the_gap_and_end_on_the_question() -> None:
    tok = ChatTokenizer.load(TINY)
    convs = heldout_conversations(20)
    examples = far_examples(tok, convs, n=6, gap=120, seed=1)
    assert len(examples) == 6
    prompt = tok.generation_prompt()
    for ex in examples:
        assert ex["gap"] >= 120
        assert ex["ids"][-len(prompt) :] == prompt  # the reply is the model's to write
        text = tok.decode(ex["ids"])
        last = text.rfind(ex["answer"])
        assert last >= 0  # the value was told, and nothing after its last telling
        assert len(tok.encode(text[last:])) >= 120  # repeats it within the gap
    again = far_examples(tok, convs, n=6, gap=120, seed=1)
    assert [e["ids"] for e in again] == [e["ids"] for e in examples]


def test_far_recall_counts_replies_holding_the_value() -> None:
    tok = ChatTokenizer.load(TINY)
    model = load_pretrained(TINY)
    ex = far_examples(tok, heldout_conversations(10), n=3, gap=60, seed=2)
    from retnet_core.generate import generate
    from retnet_core.sampling import SamplingParams

    params = SamplingParams(max_new_tokens=4, stop_token_ids=(tok.end_id,))
    replies = [tok.decode(list(generate(model, e["ids"], params=params)), skip_special=True)
               for e in ex]  # fmt: skip
    # answers the replies hold count, answers they do not hold do not
    held = [dict(e, answer=r.strip()[:3] or r) for e, r in zip(ex, replies, strict=True)]
    assert far_recall_rate(model, tok, held, max_new=4) == 1.0
    with torch.no_grad():
        model.head.weight.zero_()  # every logit 0: greedy picks id 0, never the value
    assert far_recall_rate(model, tok, ex, max_new=2) == 0.0


def test_rag_examples_feed_the_passage_and_ask() -> None:
    from retnet_core.training.dialogues import ValuePools

    tok = ChatTokenizer.load(TINY)
    examples = rag_examples(tok, 5, seed=3)
    heldout = ValuePools.build().all_heldout()
    prompt = tok.generation_prompt()
    for ex in examples:
        assert ex["ids"][-len(prompt) :] == prompt
        text = tok.decode(ex["ids"])
        assert ex["answer"] in text and ex["answer"] in heldout  # in the passage, held out
        assert text.rstrip().endswith("?") or "?" in text[text.rfind(ex["answer"]) :]
    assert [e["ids"] for e in rag_examples(tok, 5, seed=3)] == [e["ids"] for e in examples]


def test_prompt_has_the_requested_token_count() -> None:
    from tokenizers import Tokenizer

    path = TINY / "tokenizer.json"
    text = prompt_of(path, 30)
    n = len(Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids)
    assert 25 <= n <= 30


def test_verdicts_and_report_state_the_gap() -> None:
    assert _verdict(37.5, 40.0) == "met"
    assert _verdict(46.3, 40.0) == "missed by 6"
    row = {
        "plain": {"bits_per_char": 1.41, "bits_per_token": 5.0, "far_bits_per_token": 5.1,
                  "tokens": 10},
        "bench": {"bits_per_char": 1.6, "tokens": 12},
        "far_recall": 0.25,
        "seconds": 3,
    }  # fmt: skip
    md = report({
        "command": "memsvc bench distilled --out x", "conversations": 2, "far_n": 4,
        "far_gap_median": 300, "edge": 68, "rows": {"student": row, "tiny": {**row,
        "far_recall": None}}, "machine": {"cpus": 2, "torch": "t", "time_utc": "now"},
    })  # fmt: skip
    assert "| bits/char, plain text (target ≤ 1.40) | 1.4100 | 1.4100 |" in md
    assert "| far recall in one session, no memory | 0.25 | – |" in md
