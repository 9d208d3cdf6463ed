"""The opt-in fbgemm int8 kernel of LowBitLinear (retnet_core.precision.fbgemm_int8).

It multiplies the same int8 weights (per-row scales) as the default weight-only kernel,
with each call's activations quantized to u8: close to the float linear, not equal.
"""

from __future__ import annotations

import pytest
import torch

from retnet_core.config import RetNetConfig
from retnet_core.model import RetNetLM
from retnet_core.precision import LowBitLinear, apply_precision, fbgemm_int8

needs_fbgemm = pytest.mark.skipif(
    "fbgemm" not in torch.backends.quantized.supported_engines, reason="torch without fbgemm"
)


@needs_fbgemm
@pytest.mark.parametrize("rows", [1, 40])  # a decode step's call, and a prefill's
def test_fbgemm_linear_is_close_to_float_and_uses_the_same_weights(rows: int) -> None:
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 40, bias=True)
    x = torch.randn(2, rows, 96)
    fast = LowBitLinear(lin, "int8", kernel="fbgemm")
    plain = LowBitLinear(lin, "int8")
    assert fast.packed() is not None and plain.packed() is None
    assert torch.equal(fast.weight_int8, plain.weight_int8)
    got, want = fast(x), lin(x)
    assert got.shape == want.shape and got.dtype == x.dtype
    assert (got - want).abs().max() / want.abs().max() < 0.03
    assert not torch.equal(got, plain(x))  # another kernel really ran


@needs_fbgemm
def test_fbgemm_model_runs_all_forms_and_keeps_float32_state() -> None:
    torch.manual_seed(0)
    cfg = RetNetConfig(vocab_size=50, d_model=32, n_layers=2, n_heads=2, ffn_dim=64)
    ref = RetNetLM(cfg).eval()
    model = RetNetLM(cfg)
    model.load_state_dict(ref.state_dict())
    model = apply_precision(model, "int8", int8_kernel="fbgemm")
    assert all(m.kernel == "fbgemm" for m in model.modules() if isinstance(m, LowBitLinear))
    tokens = torch.randint(0, 50, (2, 12))
    with torch.inference_mode():
        want, ref_state = ref.prefill(tokens, last_only=True)
        got, state = model.prefill(tokens, last_only=True)
        assert (got - want).abs().max() / want.abs().max() < 0.1
        step_got, _ = model.step(got.argmax(-1), state)
        assert step_got.shape == (2, 50) and torch.isfinite(step_got).all()
    assert all(s.dtype == torch.float32 for s in state.S)
    assert model.fingerprint() != ref.fingerprint()


def test_unknown_kernel_is_refused_and_weight_only_is_the_default() -> None:
    lin = torch.nn.Linear(8, 4)
    with pytest.raises(ValueError, match="int8 kernel"):
        LowBitLinear(lin, "int8", kernel="vnni")
    cfg = RetNetConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, ffn_dim=32)
    with pytest.raises(ValueError, match="int8 kernel"):
        apply_precision(RetNetLM(cfg), "int8", int8_kernel="vnni")
    assert not fbgemm_int8(lin.weight, "weight-only")
