"""Generation: a streaming generator over :mod:`retnet_core.sampling`.

:func:`generate` prefills the prompt (chunkwise form), then steps one token at a time
(recurrent form), yielding token ids as they come. When it ends, ``Generation.state``
covers the prompt and every generated token (the last one is fed too), so a session can
continue from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from retnet_core.model import RetNetLM
from retnet_core.sampling import (
    SamplingParams,
    apply_repetition_penalty,
    sample,
    top_k_filter,
    top_p_filter,
)
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
