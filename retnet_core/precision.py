"""Weight precision of a loaded model: fp32, bf16, or int8 weight-only (CPU).

One setting picks it (``memsvc``: ``MEMSVC_WEIGHTS``); :func:`apply_precision` replaces
the large projections of a float32 model (retention in/out, FFN in/out, the LM head:
nearly all the weights a decode step reads) by :class:`LowBitLinear` modules that
hold their weights in bf16, or in int8 with one scale per output row. Everything else
(embeddings, norms, decays, memory layers) and every activation stays float32, and so
does the recurrent state ``S_t = γ S_{t-1} + k_tᵀ v_t``: it is a running sum over the
whole conversation, and rounding it every token would compound.

- A head tied to the embedding gets its own low-bit copy; the embedding keeps its float
  rows (a lookup reads one row, the head reads them all, every token: at SmolLM2's
  vocabulary of 49k it is a fifth of the model and was a quarter of an int8 step).
- ``bf16``: half of fp32's bytes for those weights; ``int8``: a quarter, with
  ``W_q = round(W / s)``, ``s_i = max_j |W_ij| / 127``, so ``|W - W_q ⊙ s| ≤ s / 2``.
- Which kernel computes ``y = x Wᵀ + b`` depends on the rows of x (tokens in the call)
  and on the CPU. A decode step (few rows) is bound by reading the weights once, so it
  runs on the low-precision weights directly (bf16 matmul, or torch's int8 weight-pack
  matmul with bf16 activations). A prefill (many rows) is bound by arithmetic: on a CPU
  without native bf16 (no AVX512-BF16/AMX, where bf16 matmuls are emulated: a 256-row
  bf16 matmul measured 6.6× slower than fp32 on this project's AMD EPYC), the weight is
  widened to fp32 for the call instead, which costs one pass over it.

The precision is part of the model's fingerprint (it hashes the weight dtypes and the
int8 buffers), so a state saved under one precision is refused under another instead of
being silently continued with other weights.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal, get_args

import torch
from torch import Tensor, nn

WeightPrecision = Literal["fp32", "bf16", "int8"]
WEIGHT_PRECISIONS: tuple[str, ...] = get_args(WeightPrecision)

#: the projections held in low precision, by the module's attribute name
LOW_BIT_TARGETS = ("in_proj", "out_proj", "w_in", "w_out", "head")


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


#: calls with at least this many rows widen low-precision weights to fp32 (no native bf16)
WIDEN_ROWS = 16


def native_bf16() -> bool:
    """Whether this CPU runs bf16 matmuls natively (oneDNN with AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


#: int8 kernels: "weight-only" (the default, within the stated tolerance) or "fbgemm"
INT8_KERNELS = ("weight-only", "fbgemm")


def fbgemm_int8(weight: Tensor, kernel: str) -> bool:
    """Whether an int8 layer runs fbgemm's dynamic int8 linear: asked for (``kernel``
    "fbgemm", e.g. ``RETNET_INT8_KERNEL=fbgemm``), a CPU weight, torch built with fbgemm.

    That kernel quantizes each call's activations to u8 (one scale and zero point per
    call, 7 bits to stay clear of AVX2's 16-bit saturation) and multiplies in integers:
    y ≈ s_x (x_q − z_x) W_qᵀ ⊙ s_w + b. On an AVX2-only CPU it is the fastest int8 path
    for decode and prefill alike, but the per-call activation scale is coarse: on the
    shipped checkpoint it gave a 0.044 relative logit error (tolerance 0.03) and forked
    greedy decoding within 8 tokens, so it is opt-in (measured in docs/bench/cpu-speed.md).
    """
    return (
        kernel == "fbgemm"
        and weight.device.type == "cpu"
        and "fbgemm" in torch.backends.quantized.supported_engines
    )


class LowBitLinear(nn.Module):
    """``nn.Linear`` with bf16 or int8 (per-row scale) weights; float32 in and out.

    x (..., in) -> y (..., out) in x's dtype. See the module docstring for the kernels.
    """

    def __init__(self, linear: nn.Linear, precision: str, kernel: str = "weight-only") -> None:
        super().__init__()
        if precision not in ("bf16", "int8"):
            raise ValueError(f"LowBitLinear holds bf16 or int8 weights, not {precision!r}")
        if kernel not in INT8_KERNELS:
            raise ValueError(f"unknown int8 kernel {kernel!r}: one of {INT8_KERNELS}")
        self.precision, self.kernel = precision, kernel
        self.in_features, self.out_features = linear.in_features, linear.out_features
        device = linear.weight.device
        if precision == "int8":
            q, scale = quantize_rows(linear.weight)
            self.register_buffer("weight_int8", q.to(device))
            self.register_buffer("scale", scale.to(device, torch.bfloat16))
        else:
            self.register_buffer("weight_bf16", linear.weight.detach().to(torch.bfloat16))
        bias = None if linear.bias is None else linear.bias.detach().float()
        self.register_buffer("bias", bias)
        self.widen = not native_bf16()
        self._fbgemm: object | None = None  # packed int8 weight, built on first use

    def widened(self) -> Tensor:
        """The weight as float32 (out, in): W_q ⊙ s for int8."""
        if self.precision == "int8":
            return self.weight_int8.float() * self.scale.float()[:, None]
        return self.weight_bf16.float()

    def packed(self) -> object | None:
        """W_q with its row scales packed for fbgemm's dynamic int8 linear, or None when
        this is not an int8 layer on a CPU with fbgemm (see :func:`fbgemm_int8`)."""
        wanted = self.precision == "int8" and self._fbgemm is None
        if wanted and fbgemm_int8(self.weight_int8, self.kernel):
            scale = self.scale.double()  # the stored (bf16) scales, exactly
            zero = torch.zeros_like(self.weight_int8[:, 0], dtype=torch.long)
            with warnings.catch_warnings():  # quantized tensors are deprecated, fbgemm not
                warnings.simplefilter("ignore", UserWarning)
                wq = torch._make_per_channel_quantized_tensor(self.weight_int8, scale, zero, 0)
            self._fbgemm = torch.ops.quantized.linear_prepack(wq, self.bias)
        return self._fbgemm

    def _apply(self, fn, *args, **kwargs):  # .to() and friends: repack from the buffers
        self._fbgemm = None
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, self.in_features)
        packed = self.packed()
        if packed is not None:  # bias included; u8 activations, 7 bits (reduce_range)
            y = torch.ops.quantized.linear_dynamic(flat.float().contiguous(), packed, True)
            return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
        if self.widen and flat.is_cpu and flat.shape[0] >= WIDEN_ROWS:
            y = torch.nn.functional.linear(flat.float(), self.widened())
        elif self.precision == "int8":
            y = torch._weight_int8pack_mm(flat.to(torch.bfloat16), self.weight_int8, self.scale)
        else:
            y = torch.nn.functional.linear(flat.to(torch.bfloat16), self.weight_bf16)
        y = y.float()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + (
            self.precision
        )


def _replace_linears(module: nn.Module, precision: str, kernel: str) -> int:
    """Replace the :data:`LOW_BIT_TARGETS` ``nn.Linear`` children by
    :class:`LowBitLinear`, recursively; returns how many were replaced. A weight shared
    with an embedding is copied, never changed in place."""
    replaced = 0
    for name, child in list(module.named_children()):
        if isinstance(child, nn.Linear) and name in LOW_BIT_TARGETS:
            setattr(module, name, LowBitLinear(child, precision, kernel))
            replaced += 1
        else:
            replaced += _replace_linears(child, precision, kernel)
    return replaced


def apply_precision(model: nn.Module, precision: str, int8_kernel: str | None = None) -> nn.Module:
    """The float32 ``model`` with its large projections in ``precision``, in eval mode.

    ``int8_kernel``: one of :data:`INT8_KERNELS` (default: ``RETNET_INT8_KERNEL``, else
    "weight-only"); see :func:`fbgemm_int8`.

    fp32 returns it unchanged. Raises ValueError for an unknown precision, for int8 on
    a non-CPU model, or when the model has no projection to convert.
    """
    if precision not in WEIGHT_PRECISIONS:
        raise ValueError(f"unknown weight precision {precision!r}: one of {WEIGHT_PRECISIONS}")
    if precision == "fp32":
        return model.eval()
    device = next(model.parameters()).device
    if precision == "int8" and device.type != "cpu":
        raise ValueError("int8 weights run on CPU only; use bf16 on CUDA")
    kernel = int8_kernel or os.environ.get("RETNET_INT8_KERNEL", "weight-only")
    if kernel not in INT8_KERNELS:
        raise ValueError(f"unknown int8 kernel {kernel!r}: one of {INT8_KERNELS}")
    if _replace_linears(model, precision, kernel) == 0:
        raise ValueError(f"{precision}: the model has no projection to convert")
    if hasattr(model, "_weights"):  # RetNetLM: the fingerprint re-reads its tensors
        model._weights, model._fingerprint = None, None
    return model.eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (what the weights take in memory)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())
