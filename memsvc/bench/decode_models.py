"""The three models the decode benchmark compares, behind one small interface.

Every runner owns a model with random weights at the benchmark's shape and exposes
`prefill(prompt) -> last logits`, `step(token) -> logits`, `state_bytes()` and `reset()`.
Each model is driven the way its own API intends for serving a long prompt:

- ours: `prefill` (chunkwise form, 4096-token slices cut into `PREFILL_CHUNK` chunks),
  then `step` (recurrent form); variants: `ours-vf1` (value_factor 1), `ours-compiled`
  (the opt-in `compile_step()`), `ours-matched` (yar's weight count);
- yet-another-retnet: `forward_chunkwise` slice by slice with its `start_idx` and states
  (one call on a whole 32k prompt would build a 32k x 32k decay mask per head), then
  `forward_recurrent`; the LM head runs on the last prompt token only;
- HF Llama: forward slice by slice into a `DynamicCache` with `logits_to_keep=1`, then
  one-token forwards with the cache (SDPA attention).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

from torch import Tensor, nn


@dataclass(frozen=True)
class Shape:
    """The one shape all three models share."""

    d_model: int = 512
    layers: int = 6
    heads: int = 8
    ffn: int = 2048
    vocab: int = 32000


class Runner(Protocol):
    name: str
    shape: Shape

    def prefill(self, prompt: Tensor) -> Tensor:
        """prompt (1, L) int64 -> logits of the last prompt token (1, vocab)."""

    def step(self, token: Tensor) -> Tensor:
        """token (1,) int64 -> next-token logits (1, vocab); advances the state."""

    def state_bytes(self) -> int:
        """Bytes of the decoding state now held (recurrent state or KV cache)."""

    def reset(self) -> None:
        """Drop the decoding state."""

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads (all but the embedding table)."""


def _weight_bytes(model: nn.Module, embedding: nn.Module) -> int:
    """Parameter and buffer bytes (low-bit weights are buffers) excluding the input
    embedding, of which a step reads one row."""
    skip = {id(p) for p in embedding.parameters()}
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()] if id(t) not in skip}
    return sum(t.numel() * t.element_size() for t in tensors.values())


# Chunk of our chunkwise prefill (the model's config default is 256); chosen by
# measuring 256/512/1024/4096 at L=8192 (docs/bench/decode.md).
PREFILL_CHUNK = 256


class OursRunner:
    """retnet_core's model: chunkwise prefill, recurrent step."""

    name = "ours"
    overrides: ClassVar[dict[str, float | int]] = {}

    def __init__(
        self, shape: Shape, prefill_slice: int = 4096, prefill_chunk: int | None = None
    ) -> None:
        from retnet_core.config import RetNetConfig
        from retnet_core.model import RetNetLM

        self.shape = shape
        sizes = {
            "vocab_size": shape.vocab,
            "d_model": shape.d_model,
            "n_layers": shape.layers,
            "n_heads": shape.heads,
            "ffn_dim": shape.ffn,
        }
        cfg = RetNetConfig(**{**sizes, **self.overrides})
        self.model = RetNetLM(cfg).eval()
        # Prefill in slices so the (slice, vocab) logits stay small; the state carries over.
        self.prefill_slice = prefill_slice
        self.prefill_chunk = prefill_chunk or PREFILL_CHUNK
        self.state = None

    def prefill(self, prompt: Tensor) -> Tensor:
        state = None
        for start in range(0, prompt.shape[1], self.prefill_slice):
            piece = prompt[:, start : start + self.prefill_slice]
            logits, state = self.model.prefill(
                piece, state, last_only=True, chunk_size=self.prefill_chunk
            )
        self.state = state
        return logits

    def step(self, token: Tensor) -> Tensor:
        logits, self.state = self.model.step(token, self.state)
        return logits

    def state_bytes(self) -> int:
        return self.state.nbytes

    def reset(self) -> None:
        self.state = None

    def weight_bytes_per_token(self) -> int:
        return _weight_bytes(self.model, self.model.embed)


class OursMatchedRunner(OursRunner):
    """Ours resized to yet-another-retnet's weight count: value_factor 1 and a GLU of
    1365 = 2/3 · 2048 (yar's FFN has two matrices, ours three). Not the issue's shape:
    it tells implementation speed apart from model size."""

    name = "ours-matched"
    overrides: ClassVar[dict[str, float | int]] = {"value_factor": 1.0, "ffn_dim": 1365}


class Vf1Runner(OursRunner):
    """Ours with value_factor 1: values and output gate d_model wide, as yar's; SwiGLU
    2048 kept. The issue's "same shape" (d 512, 6 layers, 8 heads, FFN 2048)."""

    name = "ours-vf1"
    overrides: ClassVar[dict[str, float | int]] = {"value_factor": 1.0}


class CompiledRunner(OursRunner):
    """Ours (default config) with the opt-in `compile_step()` (torch.compile, inductor).

    Compiles on its first step; `compile()` does that on a short prompt and returns the
    seconds it took, so the benchmark can compile before timing and report it apart."""

    name = "ours-compiled"

    def __init__(self, shape: Shape, **kw) -> None:
        super().__init__(shape, **kw)
        self.model.compile_step()

    def compile(self) -> float:
        import time

        import torch

        with torch.inference_mode():
            token = self.prefill(torch.zeros(1, 8, dtype=torch.long)).argmax(-1)
            t0 = time.perf_counter()
            self.step(token)
            seconds = time.perf_counter() - t0
        self.reset()
        return seconds


class LowBitRunner(OursRunner):
    """Ours (default config) with its large projections in bf16 or int8
    (``retnet_core.precision.apply_precision``); ``kernel`` picks the int8 kernel."""

    precision = "int8"
    kernel = "weight-only"

    def __init__(self, shape: Shape, **kw) -> None:
        from retnet_core.precision import apply_precision

        super().__init__(shape, **kw)
        self.model = apply_precision(self.model, self.precision, self.kernel)


class Int8Runner(LowBitRunner):
    """int8 weights (per-row scales), weight-only kernel: within the stated tolerance."""

    name = "ours-int8"


class Int8FbgemmRunner(LowBitRunner):
    """int8 weights with fbgemm's dynamic int8 linear (u8 activations, one scale per
    call): the fastest on AVX2, outside the stated logit tolerance (opt-in)."""

    name = "ours-int8-fbgemm"
    kernel = "fbgemm"


class Bf16Runner(LowBitRunner):
    """bf16 weights (emulated bf16 matmuls without AVX512-BF16; prefill widens to fp32)."""

    name = "ours-bf16"
    precision = "bf16"


class YarRunner:
    """yet-another-retnet (PyPI): chunkwise slices for the prompt, recurrent steps after."""

    name = "yar"

    def __init__(self, shape: Shape, prefill_slice: int = 512) -> None:
        from yet_another_retnet.retnet import RetNet

        self.shape = shape
        self.model = RetNet(
            num_tokens=shape.vocab,
            d_model=shape.d_model,
            nhead=shape.heads,
            num_layers=shape.layers,
            dim_feedforward=shape.ffn,
            dropout=0.0,
        ).eval()
        self.prefill_slice = prefill_slice
        self.states: list[Tensor] = []
        self.pos = 0

    def prefill(self, prompt: Tensor) -> Tensor:
        states: list[Tensor] = []
        for start in range(0, prompt.shape[1], self.prefill_slice):
            x = self.model.embedding(prompt[:, start : start + self.prefill_slice])
            x, states = self.model.decoder.forward_chunkwise(x, start, states)
        self.states, self.pos = states, prompt.shape[1]
        return self.model.out(x[:, -1])

    def step(self, token: Tensor) -> Tensor:
        logits, self.states = self.model.forward_recurrent(token, self.pos, self.states)
        self.pos += 1
        return logits

    def state_bytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states)

    def reset(self) -> None:
        self.states, self.pos = [], 0

    def weight_bytes_per_token(self) -> int:
        return _weight_bytes(self.model, self.model.embedding)


class LlamaRunner:
    """A same-shape HF LlamaForCausalLM (fresh random weights) with a DynamicCache."""

    name = "llama"

    def __init__(self, shape: Shape, prefill_slice: int = 2048) -> None:
        from transformers import LlamaConfig, LlamaForCausalLM

        self.shape = shape
        self.config = LlamaConfig(
            vocab_size=shape.vocab,
            hidden_size=shape.d_model,
            intermediate_size=shape.ffn,
            num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads,
            num_key_value_heads=shape.heads,
            max_position_embeddings=65536,
            tie_word_embeddings=False,
        )
        self.config._attn_implementation = "sdpa"
        self.model = LlamaForCausalLM(self.config).eval()
        self.prefill_slice = prefill_slice
        self.cache = None

    def prefill(self, prompt: Tensor) -> Tensor:
        from transformers.cache_utils import DynamicCache

        self.cache = DynamicCache(config=self.config)
        for start in range(0, prompt.shape[1], self.prefill_slice):
            out = self.model(
                input_ids=prompt[:, start : start + self.prefill_slice],
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1]

    def step(self, token: Tensor) -> Tensor:
        out = self.model(input_ids=token[:, None], past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1]

    def state_bytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for layer in self.cache.layers
            for t in (layer.keys, layer.values)
        )

    def reset(self) -> None:
        self.cache = None

    def weight_bytes_per_token(self) -> int:
        return _weight_bytes(self.model, self.model.model.embed_tokens)


RUNNERS: dict[str, Callable[[Shape], Runner]] = {
    "ours": OursRunner,
    "ours-vf1": Vf1Runner,
    "ours-compiled": CompiledRunner,
    "ours-matched": OursMatchedRunner,
    "ours-bf16": Bf16Runner,
    "ours-int8": Int8Runner,
    "ours-int8-fbgemm": Int8FbgemmRunner,
    "yar": YarRunner,
    "llama": LlamaRunner,
}
