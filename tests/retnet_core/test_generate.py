"""Sampling functions behave; generation is reproducible, streams, stops and keeps state."""

from __future__ import annotations

import pytest
import torch
from retnet_factory import tiny_model

from retnet_core.generate import (
    SamplingParams,
    apply_repetition_penalty,
    generate,
    sample,
    top_k_filter,
    top_p_filter,
)


def _logits(seed: int = 0, v: int = 50) -> torch.Tensor:
    return torch.randn(2, v, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_top_k_keeps_exactly_k():
    logits = _logits()
    kept = torch.isfinite(top_k_filter(logits, 5))
    assert kept.sum(-1).tolist() == [5, 5]
    assert torch.equal(kept, torch.zeros_like(kept).scatter(-1, logits.topk(5).indices, True))
    assert torch.equal(top_k_filter(logits, 0), logits)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_top_p_keeps_the_smallest_set_reaching_p(p):
    logits = _logits(1)
    kept = torch.isfinite(top_p_filter(logits, p))
    probs = logits.softmax(-1)
    for row in range(2):
        n = int(kept[row].sum())
        top = probs[row].sort(descending=True).values
        assert top[:n].sum() >= p  # mass reached ...
        assert n == 1 or top[: n - 1].sum() < p  # ... by the fewest tokens
        assert kept[row, probs[row].argmax()]


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[True, True, False, False]])
    out = apply_repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0]]
    # greedy would pick token 0 (logit 4) unpenalised, token 1 once 0 is penalised hard
    greedy = SamplingParams(temperature=0, repetition_penalty=4.0)
    logits = torch.tensor([[4.0, 3.0, 0.0]])
    assert sample(logits, greedy).item() == 0
    assert sample(logits, greedy, seen=torch.tensor([[True, False, False]])).item() == 1


def test_greedy_and_seeded_sampling():
    logits = _logits(2)
    assert torch.equal(sample(logits, SamplingParams(temperature=0)), logits.argmax(-1))
    params = SamplingParams(temperature=1.3, top_k=10, top_p=0.9)
    draws = [sample(logits, params, torch.Generator().manual_seed(9)) for _ in range(2)]
    assert torch.equal(draws[0], draws[1])
    many = torch.stack(
        [sample(logits, params, torch.Generator().manual_seed(s)) for s in range(30)]
    )
    allowed = torch.isfinite(top_p_filter(top_k_filter(logits / 1.3, 10), 0.9))
    assert allowed.gather(1, many.T).all() and len(set(many[:, 0].tolist())) > 1


def test_generation_is_reproducible_and_state_is_complete():
    model = tiny_model()
    params = SamplingParams(max_new_tokens=6, temperature=1.0, top_k=20, seed=1234)
    runs = [generate(model, [1, 2, 3], params=params) for _ in range(2)]
    outs = [list(g) for g in runs]
    assert outs[0] == outs[1] and len(outs[0]) == 6 and runs[0].finish_reason == "length"
    other = list(generate(model, [1, 2, 3], params=SamplingParams(max_new_tokens=6, seed=99)))
    assert other != outs[0]
    # the final state covers prompt + every generated token: same as prefilling them all
    with torch.no_grad():
        _, ref = model.prefill(torch.tensor([[1, 2, 3, *outs[0]]]))
    st = runs[0].state
    assert st.position.tolist() == [9]
    for a, b in zip(st.S, ref.S, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_generation_continues_a_session_state():
    model = tiny_model()
    greedy = SamplingParams(max_new_tokens=4, temperature=0)
    with torch.no_grad():
        _, st = model.prefill(torch.tensor([[5, 6, 7]]))
    a = list(generate(model, [8], st, greedy))
    b = list(generate(model, [5, 6, 7, 8], None, greedy))
    assert a == b


def test_stop_strings_and_stop_tokens_end_generation():
    model = tiny_model()
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    free = list(generate(model, [1, 2], params=greedy))
    decode = lambda toks: "".join(f"<{t}>" for t in toks)  # noqa: E731
    stop = f"<{free[2]}>"
    g = generate(model, [1, 2], params=SamplingParams(max_new_tokens=12, temperature=0,
                                                      stop=(stop,)), decode=decode)  # fmt: skip
    got = list(g)
    first = free.index(free[2])
    assert got == free[: first + 1] and g.finish_reason == "stop"
    assert g.text == decode(free[:first])
    g = generate(model, [1, 2], params=SamplingParams(max_new_tokens=12, temperature=0,
                                                      stop_token_ids=(free[3],)))  # fmt: skip
    got = list(g)
    assert got == free[: free.index(free[3])] and g.finish_reason == "stop"
    with pytest.raises(ValueError):
        generate(model, [1], params=SamplingParams(stop=("x",)))
