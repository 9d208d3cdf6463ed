"""The one sampling implementation and the checkpoint's generation defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from retnet_core.sampling import (
    SamplingParams,
    load_sampling_defaults,
    sample,
    save_sampling_defaults,
    top_p_filter,
)


def _pick(logits: torch.Tensor, params: SamplingParams, **kw) -> int:
    return int(sample(logits[None], params, params.generator(), **kw)[0])


def test_greedy_banned_filters_and_seed() -> None:
    logits = torch.tensor([0.0, 5.0, 1.0, 4.9])
    assert _pick(logits, SamplingParams()) == 1  # the default is greedy
    assert _pick(logits, SamplingParams(), banned=(1,)) == 3
    top1 = SamplingParams(temperature=1.0, top_k=1)
    assert {_pick(logits, top1) for _ in range(20)} == {1}
    nucleus = SamplingParams(temperature=1.0, top_p=0.5)
    assert {_pick(logits, nucleus) for _ in range(20)} == {1}
    seeded = SamplingParams(temperature=2.0, seed=3)
    assert [_pick(logits, seeded) for _ in range(5)] == [_pick(logits, seeded) for _ in range(5)]
    hot = SamplingParams(temperature=5.0)
    assert len({_pick(logits, hot) for _ in range(200)}) > 1  # unseeded draws do vary


def test_repetition_penalty_moves_greedy_off_a_seen_token() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0, 4.9]])
    seen = torch.tensor([[False, True, False, False]])
    p = SamplingParams(repetition_penalty=1.1)
    assert int(sample(logits, p, seen=seen)[0]) == 3
    assert int(sample(logits, SamplingParams(), seen=seen)[0]) == 1


def test_generation_config_round_trip_and_overrides(tmp_path: Path) -> None:
    assert load_sampling_defaults(tmp_path) == SamplingParams()  # no file: greedy defaults
    chosen = SamplingParams(max_new_tokens=40, temperature=0.7, top_p=0.9, repetition_penalty=1.2)
    save_sampling_defaults(tmp_path, chosen)
    assert load_sampling_defaults(tmp_path) == chosen
    merged = chosen.with_overrides(temperature=0.0, top_p=None, seed=5)
    assert (merged.temperature, merged.top_p, merged.seed) == (0.0, 0.9, 5)


def test_do_sample_false_means_greedy(tmp_path: Path) -> None:
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"do_sample": False, "temperature": 0.6, "max_new_tokens": 9})
    )
    d = load_sampling_defaults(tmp_path)
    assert (d.temperature, d.max_new_tokens) == (0.0, 9)


def test_invalid_params_are_refused() -> None:
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingParams(repetition_penalty=0.0)


def test_shipped_model_is_greedy_by_its_own_config() -> None:
    shipped = Path(__file__).resolve().parents[2] / "memsvc" / "models" / "default"
    assert load_sampling_defaults(shipped).temperature == 0.0


def _nucleus_by_sort(logits: torch.Tensor, p: float) -> torch.Tensor:
    """The definition: sort, keep while the mass strictly before is < p."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop_sorted = (probs.cumsum(dim=-1) - probs) >= p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


@pytest.mark.parametrize("scale", [0.5, 3.0, 12.0])  # flat (falls back to the sort) .. peaked
@pytest.mark.parametrize("p", [0.5, 0.9, 0.99])
def test_top_p_keeps_the_nucleus_of_the_definition(scale: float, p: float) -> None:
    gen = torch.Generator().manual_seed(int(scale * 10) + int(p * 100))
    logits = torch.randn(3, 5000, generator=gen) * scale
    got = top_p_filter(logits, p)
    want = _nucleus_by_sort(logits, p)
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    assert torch.equal(got[torch.isfinite(got)], want[torch.isfinite(want)])


def test_draws_follow_the_filtered_distribution() -> None:
    """The compact draw (few finite logits) keeps softmax's frequencies."""
    logits = torch.full((1, 1000), float("-inf"))
    logits[0, [3, 500, 999]] = torch.tensor([0.0, 1.0, 2.0])
    params = SamplingParams(temperature=1.0, seed=5)
    gen = params.generator()
    draws = torch.stack([sample(logits, params, gen) for _ in range(4000)]).flatten()
    freq = torch.tensor([(draws == i).float().mean().item() for i in (3, 500, 999)])
    torch.testing.assert_close(freq, torch.tensor([0.0, 1.0, 2.0]).softmax(0), atol=0.03, rtol=0)
    assert set(draws.tolist()) <= {3, 500, 999}
