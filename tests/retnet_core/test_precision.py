"""Weight precision (retnet_core.precision): bf16 and int8 weights against fp32.

The stated tolerances, on the shipped checkpoint (a trained model: its logits are
peaked, so the comparison means something) over held-fixed prompts:

- next-token logits: max |Δ| / max |logit| ≤ 0.02 (bf16) and ≤ 0.03 (int8);
- greedy decoding after three chat prompts, fed fp32's greedy tokens (so one near-tie
  does not fork the rest): at least 95% of 48 next-token choices agree with fp32, and
  the first 8 agree exactly;
- the recurrent state and the activations stay float32 whatever the weights.

The precision is in the fingerprint: a state of one precision is refused by another.
"""

from __future__ import annotations

import pytest
import torch

from memsvc.config import DEFAULT_MODEL_DIR
from retnet_core.checkpoint import load_pretrained
from retnet_core.precision import LowBitLinear, apply_precision, quantize_rows, weight_bytes
from retnet_core.state import StateMismatchError

LOGIT_TOLERANCE = {"bf16": 0.02, "int8": 0.03}
GREEDY_STEPS, GREEDY_AGREE, GREEDY_EXACT = 48, 0.95, 8


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return load_pretrained(DEFAULT_MODEL_DIR).eval()


PROMPTS = [
    "Hi! I just got back from a hiking trip in the mountains. How was your weekend?",
    "My sister is visiting next week and I have no idea what to cook for her.",
    "What do you think about learning to play the guitar at thirty?",
]


@pytest.fixture(scope="module")
def prompts(reference) -> torch.Tensor:
    """The prompts as chat turns, left-cut to one length (B, T)."""
    from retnet_core.tokenizer import ChatTokenizer, Message

    tok = ChatTokenizer.load(DEFAULT_MODEL_DIR)
    rows = [tok.render_ids([Message("user", p)]) + tok.generation_prompt() for p in PROMPTS]
    width = min(len(r) for r in rows)
    return torch.tensor([r[-width:] for r in rows])


def test_quantize_rows_error_is_half_a_step() -> None:
    w = torch.randn(64, 48) * torch.logspace(-3, 1, 64)[:, None]  # rows of very different scale
    w[5] = 0.0
    q, s = quantize_rows(w)
    assert q.dtype == torch.int8 and s.shape == (64,)
    assert (w - q.float() * s[:, None]).abs().le(s[:, None] / 2 + 1e-7).all()
    assert q.abs().amax(dim=1)[torch.arange(64) != 5].eq(127).all()  # full range used
    assert q[5].eq(0).all()


@pytest.mark.parametrize("precision", ["bf16", "int8"])
@pytest.mark.parametrize("rows", [1, 40])  # a decode step's kernel, and a prefill's
def test_low_bit_linear_matches_float_linear(precision: str, rows: int) -> None:
    lin = torch.nn.Linear(96, 40, bias=True)
    x = torch.randn(2, rows, 96)
    got = LowBitLinear(lin, precision)(x)
    want = lin(x)
    assert got.shape == want.shape and got.dtype == x.dtype
    assert (got - want).abs().max() / want.abs().max() < 0.02


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_logits_and_greedy_within_tolerance(reference, prompts, precision: str) -> None:
    model = apply_precision(load_pretrained(DEFAULT_MODEL_DIR), precision)
    with torch.inference_mode():
        want, ref_state = reference.prefill(prompts, last_only=True)
        got, state = model.prefill(prompts, last_only=True)
        err = (got.float() - want).abs().max() / want.abs().max()
        assert err <= LOGIT_TOLERANCE[precision], f"{precision}: relative logit error {err:.4f}"
        assert all(s.dtype == torch.float32 for s in state.S)
        # teacher-forced: both models read fp32's greedy tokens; agreement of their choices
        agree, forced = [], want.argmax(-1)
        for _ in range(GREEDY_STEPS):
            want, ref_state = reference.step(forced, ref_state)
            got, state = model.step(forced, state)
            agree.append(want.argmax(-1) == got.float().argmax(-1))
            forced = want.argmax(-1)
    same = torch.stack(agree, dim=1)  # (B, steps)
    assert same[:, :GREEDY_EXACT].all(), f"{precision}: greedy differs in the first tokens"
    assert same.float().mean() >= GREEDY_AGREE, f"{precision}: {same.float().mean():.3f}"
    assert all(s.dtype == torch.float32 for s in state.S)


def test_precision_is_in_the_fingerprint(reference, prompts) -> None:
    models = {p: apply_precision(load_pretrained(DEFAULT_MODEL_DIR), p) for p in ("bf16", "int8")}
    prints = {reference.fingerprint(), *(m.fingerprint() for m in models.values())}
    assert len(prints) == 3
    with torch.inference_mode():
        _, state = reference.prefill(prompts[:1])
        for model in models.values():
            with pytest.raises(StateMismatchError):
                model.step(prompts[:1, 0], state)


def test_weight_memory_and_bad_precision(reference) -> None:
    fp32 = weight_bytes(reference)
    low = {p: apply_precision(load_pretrained(DEFAULT_MODEL_DIR), p) for p in ("bf16", "int8")}
    # the projections shrink (the shipped model's tied embedding stays fp32)
    assert weight_bytes(low["int8"]) < weight_bytes(low["bf16"]) < 0.75 * fp32
    converted = [m for m in low["int8"].modules() if isinstance(m, LowBitLinear)]
    assert len(converted) >= 4 * reference.config.n_layers  # in/out, FFN in/out per block
    assert all(m.weight_int8.dtype == torch.int8 for m in converted)
    with pytest.raises(ValueError, match="unknown weight precision"):
        apply_precision(load_pretrained(DEFAULT_MODEL_DIR), "fp16")
