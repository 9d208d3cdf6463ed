"""The hybrid's fused decode step (retnet_core.hybrid_step) is the generic step's
function: compared in float64 at every position across the sinks and the window's
edges, with rows of one batch at different positions, grouped heads, learned decays,
hedgehog features, each retention normalisation and the output gate."""

from __future__ import annotations

import pytest
import torch
from test_variants import variant

from retnet_core.hybrid_step import hybrid_step_supported, window_mask
from retnet_core.model import RetNetLM
from retnet_core.state import RecurrentState

ATOL = 1e-10
CASES = {
    "hybrid_decay": dict(name="hybrid"),
    "hedgehog_torchscale": dict(name="hybrid_hedgehog"),
    "hedgehog_gate_none": dict(
        name="hybrid_hedgehog", out_gate=True, retention_norm="none", head_norm="rms"
    ),
    "one_kv_head": dict(name="hybrid_hedgehog", n_kv_heads=1, window=2, sinks=3),
}


def generic_step(model: RetNetLM, tokens: torch.Tensor, state: RecurrentState):
    """model.step through the per-module path (what the fused step replaces)."""
    ctx = model._context(state.position[:, None], "step")
    hidden, layers = model._run(tokens[:, None], ctx, state, None, None)
    return model._logits(hidden, ctx.copies)[:, 0], model._pack(
        layers, state.position + 1, state.fingerprint
    )


def _assert_states_equal(a: RecurrentState, b: RecurrentState) -> None:
    assert torch.equal(a.position, b.position)
    for i in range(a.n_layers):
        la, lb = a.layer(i), b.layer(i)
        assert la.keys() == lb.keys()
        for name in la:
            torch.testing.assert_close(la[name], lb[name], atol=ATOL, rtol=0, msg=name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_step_equals_generic_step_at_every_position(case):
    spec = dict(CASES[case])
    model = variant(spec.pop("name"), seed=3, **spec)
    assert hybrid_step_supported(model.config)
    gen = torch.Generator().manual_seed(7)
    # two rows, three tokens apart: one crosses the sinks and the window edge first
    prompt = torch.randint(0, model.config.vocab_size, (2, 3), generator=gen)
    _, fused = model.prefill(prompt, lengths=torch.tensor([3, 0]))
    generic = fused
    steps = model.config.window + model.config.sinks + 6
    for _ in range(steps):
        tok = torch.randint(0, model.config.vocab_size, (2,), generator=gen)
        with torch.no_grad():
            lf, fused = model.step(tok, fused)
            lg, generic = generic_step(model, tok, generic)
        torch.testing.assert_close(lf, lg, atol=ATOL, rtol=0)
        _assert_states_equal(fused, generic)
    # and the fused state continues in the parallel form's footing: prefill agrees too
    tail = torch.randint(0, model.config.vocab_size, (2, 4), generator=gen)
    a, _ = model.prefill(tail, fused)
    b, _ = model.prefill(tail, generic)
    torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_fused_step_is_taken_for_the_hybrid():
    """The dispatch really runs the fused path (not only the generic one) for a hybrid."""
    model = variant("hybrid_hedgehog")
    calls = []
    import retnet_core.model as model_module

    real = model_module.hybrid_step
    model_module.hybrid_step = lambda *a: calls.append(1) or real(*a)
    try:
        model.step(torch.tensor([1]), model.init_state(1))
    finally:
        model_module.hybrid_step = real
    assert calls == [1]


def test_window_mask_reads_sinks_ring_and_self():
    m = window_mask(torch.tensor([0, 2, 9]), window=4, sinks=2)
    # [sink0 sink1 | ring0 ring1 ring2 ring3 | self]; ring j holds p − 4 + j
    assert m[0].tolist() == [False, False, False, False, False, False, True]
    assert m[1].tolist() == [True, True, False, False, False, False, True]
    # p = 9: ring positions 5..8, ring0 (position 5) has left the window
    assert m[2].tolist() == [True, True, False, True, True, True, True]
