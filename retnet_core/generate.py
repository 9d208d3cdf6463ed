"""Generation: pure sampling functions (logits -> token) and a streaming generator.

Sampling order for logits (B, V): repetition penalty -> temperature -> top-k -> top-p ->
draw (greedy when temperature == 0). With a seed, a ``torch.Generator`` drives every
draw, so the same prompt, state and params give the same tokens.

:func:`generate` prefills the prompt (chunkwise form), then steps one token at a time
(recurrent form), yielding token ids as they come. When it ends, ``Generation.state``
covers the prompt and every generated token (the last one is fed too), so a session can
continue from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from retnet_core.model import RetNetLM
from retnet_core.state import RecurrentState

__all__ = [
    "Generation",
    "SamplingParams",
    "apply_repetition_penalty",
    "generate",
    "sample",
    "top_k_filter",
    "top_p_filter",
]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. temperature 0 = greedy; top_k 0 and top_p 1 = off.

    ``stop``: strings that end generation once the decoded output contains one (needs a
    ``decode`` callback). ``stop_token_ids``: ids that end it (not yielded, but fed).
    """

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("need temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
        if self.repetition_penalty <= 0 or self.max_new_tokens < 0:
            raise ValueError("need repetition_penalty > 0 and max_new_tokens >= 0")


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's penalty on tokens already seen: l > 0 -> l / p, l ≤ 0 -> l · p.

    logits (B, V); seen (B, V) bool. penalty > 1 makes seen tokens less likely.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties at the k-th kept), -inf elsewhere."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus: keep the fewest most likely tokens whose probability mass reaches p.

    A token is kept when the mass strictly before it (in sorted order) is < p, so the
    most likely token always stays.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs
    drop_sorted = before >= p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample(
    logits: Tensor,
    params: SamplingParams,
    generator: torch.Generator | None = None,
    seen: Tensor | None = None,
) -> Tensor:
    """logits (B, V) -> token ids (B,), following ``params`` (see the module docstring)."""
    logits = logits.float() if logits.dtype != torch.float64 else logits
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.temperature == 0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits / params.temperature, params.top_k), params.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Generation(Iterator[int]):
    """Iterator of generated token ids; afterwards ``state``, ``tokens``, ``text`` and
    ``finish_reason`` ("stop" or "length") describe the result.

    ``text`` is the decoded output cut before the first stop string (needs ``decode``).
    """

    def __init__(
        self,
        model: RetNetLM,
        prompt_tokens: Sequence[int] | Tensor,
        state: RecurrentState | None,
        params: SamplingParams,
        decode: Callable[[list[int]], str] | None,
        memory: Any,
        boundaries: Sequence[int] | None,
    ) -> None:
        prompt = torch.as_tensor(prompt_tokens, dtype=torch.long).reshape(-1)
        if prompt.numel() == 0:
            raise ValueError("generate needs at least one prompt token")
        if params.stop and decode is None:
            raise ValueError("stop strings need a decode callback")
        self.model, self.params, self.decode, self.memory = model, params, decode, memory
        self.state = state
        self.tokens: list[int] = []
        self.text = ""
        self.finish_reason: str | None = None
        self._prompt, self._boundaries = prompt.to(model.device), boundaries
        self._it = self._run()

    def __next__(self) -> int:
        return next(self._it)

    def _run(self) -> Iterator[int]:
        model, p = self.model, self.params
        gen = None
        if p.seed is not None:
            gen = torch.Generator(device=model.device).manual_seed(p.seed)
        seen = torch.zeros(1, model.config.vocab_size, dtype=torch.bool, device=model.device)
        seen[0, self._prompt] = True
        with torch.inference_mode():
            logits, self.state = model.prefill(
                self._prompt[None], self.state, self._boundaries, memory=self.memory,
                last_only=True,
            )  # fmt: skip
            while len(self.tokens) < p.max_new_tokens:
                token = sample(logits, p, gen, seen)
                tok = int(token[0])
                seen[0, tok] = True
                if tok in p.stop_token_ids:
                    self.finish_reason = "stop"
                    logits, self.state = model.step(token, self.state, self.memory)
                    return
                self.tokens.append(tok)
                yield tok
                logits, self.state = model.step(token, self.state, self.memory)
                if self._hit_stop():
                    self.finish_reason = "stop"
                    return
            self.finish_reason = "length"
            if self.decode is not None and not self.text:
                self.text = self.decode(self.tokens)

    def _hit_stop(self) -> bool:
        if self.decode is None:
            return False
        text = self.decode(self.tokens)
        cuts = [text.find(s) for s in self.params.stop if s and s in text]
        self.text = text[: min(cuts)] if cuts else text
        return bool(cuts)


def generate(
    model: RetNetLM,
    prompt_tokens: Sequence[int] | Tensor,
    state: RecurrentState | None = None,
    params: SamplingParams | None = None,
    *,
    decode: Callable[[list[int]], str] | None = None,
    memory: Any = None,
    boundaries: Sequence[int] | None = None,
) -> Generation:
    """Stream tokens continuing ``state`` (batch of one) after ``prompt_tokens``.

    ``for tok in generate(...)`` yields ids; the returned :class:`Generation` then holds
    the final ``state`` (prompt + all generated tokens fed), ``tokens``, ``text`` and
    ``finish_reason``. A token is fed right after it is yielded (low streaming latency),
    so ``state`` is complete only once the iterator is exhausted.
    """
    return Generation(
        model, prompt_tokens, state, params or SamplingParams(), decode, memory, boundaries
    )
