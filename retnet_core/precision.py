"""Weight precision of a loaded model: fp32, bf16, or int8 weight-only (CPU).

One setting picks it (``memsvc``: ``MEMSVC_WEIGHTS``); :func:`apply_precision` turns a
float32 model into that precision in place of its modules. Whatever the weights, the
recurrent state stays float32 (``RetNetLM.state_dtype``): the state is a running sum
over the whole conversation, and rounding it every token would compound.

- ``bf16``: every floating weight in bfloat16; activations in bfloat16, the retention
  recurrence ``S_t = γ S_{t-1} + k_tᵀ v_t`` and its read ``o_t = q_t S_t`` in float32.
  Half the weight memory (a 1.3B model: 2.7 GB instead of 5.4 GB).
- ``int8``: ``bf16`` plus the large projections (retention in/out, FFN in/out, the LM
  head) held as int8 with one float scale per output row: a quarter of float32's bytes
  for those weights. :class:`Int8Linear` computes ``y = (x W_qᵀ) ⊙ s + b`` with
  ``W_q = round(W / s)``, ``s = max_j |W_ij| / 127``, through torch's int8 weight-pack
  matmul (bfloat16 activations). Memory-layer projections stay bfloat16: their keys go
  into slot banks shared across precisions of one model.

The precision is part of the model's fingerprint (it hashes weight dtypes and the int8
buffers), so a state saved under one precision is refused under another instead of
being silently continued with other weights.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
from torch import Tensor, nn

WeightPrecision = Literal["fp32", "bf16", "int8"]
WEIGHT_PRECISIONS: tuple[str, ...] = get_args(WeightPrecision)

#: the projections that int8 quantizes, by the module's attribute name
INT8_TARGETS = ("in_proj", "out_proj", "w_in", "w_out", "head")


def quantize_rows(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-row int8: W (out, in) -> (W_q int8 (out, in), s float32 (out,)).

    ``s_i = max_j |W_ij| / 127`` (1 for an all-zero row), ``W_q = round(W / s)``, so
    ``|W - W_q ⊙ s| ≤ s / 2`` elementwise.
    """
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and a per-row scale (see the module docstring).

    x (..., in) of any float dtype -> y (..., out) in x's dtype.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = quantize_rows(linear.weight)
        self.register_buffer("weight_int8", q.to(linear.weight.device))
        self.register_buffer("scale", scale.to(linear.weight.device, torch.bfloat16))
        bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch._weight_int8pack_mm(flat, self.weight_int8, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def _quantize_linears(module: nn.Module) -> int:
    """Replace the :data:`INT8_TARGETS` ``nn.Linear`` children by :class:`Int8Linear`,
    recursively; returns how many were replaced."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and name in INT8_TARGETS:
            setattr(module, name, Int8Linear(child))
            replaced += 1
        else:
            replaced += _quantize_linears(child)
    return replaced


def apply_precision(model: nn.Module, precision: str) -> nn.Module:
    """The model with its weights in ``precision`` (fp32 | bf16 | int8), in eval mode.

    ``int8`` is for CPU inference (torch's int8 weight-pack matmul); on CUDA use bf16.
    Raises ValueError for an unknown precision or int8 on a non-CPU model.
    """
    if precision not in WEIGHT_PRECISIONS:
        raise ValueError(f"unknown weight precision {precision!r}: one of {WEIGHT_PRECISIONS}")
    if precision == "fp32":
        return model.float().eval()
    model = model.to(torch.bfloat16)
    if precision == "int8":
        device = next(model.parameters()).device
        if device.type != "cpu":
            raise ValueError("int8 weights run on CPU only; use bf16 on CUDA")
        if _quantize_linears(model) == 0:
            raise ValueError("int8: the model has no projection to quantize")
        if hasattr(model, "_weights"):  # RetNetLM: the fingerprint re-reads its tensors
            model._weights, model._fingerprint = None, None
    return model.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (what the weights take in memory)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())
