"""The one model of this process: a RetNet LM, its tokenizer, and state (de)serialisation.

This is the narrow seam between the service and ``retnet_core``: the engine and RAG
only call :class:`ModelRuntime`, never the model classes directly. All model calls
happen on the engine's scheduler thread (one owner, no locking inside).

Shapes: token ids are int64; ``prefill`` takes (1, T) and returns the logits of the
last position (V,); ``step`` takes (B,) and returns (B, V).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from retnet_core.checkpoint import load_pretrained
from retnet_core.sampling import SamplingParams, load_sampling_defaults
from retnet_core.tokenizer import ChatTokenizer

log = logging.getLogger("memsvc.engine.runtime")


#: models below this many parameters run on one CPU thread unless a setting says otherwise
SMALL_MODEL_PARAMS = 50_000_000

#: states this large are stored in bf16 when the state storage precision is bf16 (the
#: threshold of storage's codec, ``CodecConfig.min_bytes``: smaller ones are stored raw)
LARGE_STATE_BYTES = 4 * 2**20


class ModelUnavailable(RuntimeError):
    """The checkpoint directory is missing or unreadable."""


@dataclass(frozen=True)
class Prefilled:
    """Result of feeding tokens: logits of the next token (V,) and the new state."""

    logits: Tensor
    state: Any


class ModelRuntime:
    """Load once, then prefill / step / (de)serialise states on one device."""

    def __init__(
        self,
        model: Any,
        tokenizer: ChatTokenizer,
        device: str,
        sampling: SamplingParams | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        # the checkpoint's own defaults, for whatever a request leaves unset
        self.sampling = sampling or SamplingParams()
        self.fingerprint: str = str(model.fingerprint())
        self.state_storage = "fp32"  # or "bf16": see state_to_bytes (set from settings)

    @classmethod
    def load(
        cls, model_dir: Path, device: str, threads: int | None = None, weights: str = "fp32"
    ) -> ModelRuntime:
        """Load the checkpoint and ``tokenizer.json`` from ``model_dir`` onto ``device``.

        ``threads``: ``torch.set_num_threads`` for this process (None: torch's default).
        ``weights``: fp32 | bf16 | int8 (:mod:`retnet_core.precision`); it is part of the
        model's fingerprint, so states saved under another precision are refused.
        """
        from retnet_core.precision import apply_precision

        if threads is not None:
            torch.set_num_threads(threads)

        if not Path(model_dir).is_dir():
            raise ModelUnavailable(f"model directory {model_dir} does not exist")
        try:
            model = apply_precision(load_pretrained(str(model_dir), device=device), weights)
            tokenizer = ChatTokenizer.load(model_dir)
            sampling = load_sampling_defaults(model_dir)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelUnavailable(f"cannot load model from {model_dir}: {exc}") from exc
        log.info("loaded model %s on %s (%s weights)", model_dir, device, weights)
        return cls(model, tokenizer, device, sampling)

    @property
    def weights(self) -> str:
        """The weights' precision: fp32, bf16 or int8 (see :mod:`retnet_core.precision`)."""
        from retnet_core.precision import LowBitLinear

        for m in self.model.modules():
            if isinstance(m, LowBitLinear):
                return m.precision
        dtype = self.model.embed.weight.dtype
        return {torch.bfloat16: "bf16", torch.float64: "fp64"}.get(dtype, "fp32")

    def cpu_threads(self) -> int:
        """Intra-op threads worth using on CPU when no setting names them.

        A small model's ops (a 6M-parameter model multiplies 256-wide matrices by a few
        rows) finish faster than threads can be woken and joined; on a shared, loaded
        machine each join waits for a descheduled thread (measured on 2 busy cores: a
        10-token prefill 30 ms on one thread, 620 ms on two). So one thread below
        ``SMALL_MODEL_PARAMS``, torch's default above.
        """
        params = sum(p.numel() for p in self.model.parameters())
        return 1 if params < SMALL_MODEL_PARAMS else torch.get_num_threads()

    # ------------------------------------------------------------------ states
    def state_to_bytes(self, state: Any) -> bytes:
        """Serialise one session's state (batch 1).

        With ``state_storage == "bf16"``, a large state (``LARGE_STATE_BYTES`` and up) is
        written in bf16 here, checked as stored: storage then has nothing to round or
        re-seal (the codec's bf16 path would otherwise rebuild the blob), and the save
        costs half the bytes. Small states stay exact.
        """
        if self.state_storage == "bf16" and _float_bytes(state) >= LARGE_STATE_BYTES:
            return state.to_bytes(torch.bfloat16)
        return state.to_bytes()

    def state_from_bytes(self, data: bytes) -> Any:
        """Inverse of :meth:`state_to_bytes` (decoding resumes in the model's state dtype);
        a foreign or damaged state raises StateError."""
        from retnet_core.state import RecurrentState

        return RecurrentState.from_bytes(
            data, fingerprint=self.fingerprint, device=self.device, dtype=self.model.state_dtype
        )

    @staticmethod
    def state_hash(data: bytes | None) -> str:
        """Content hash of a serialised state ('empty' for a new session)."""
        return hashlib.sha256(data).hexdigest() if data else "empty"

    def stack(self, states: list[Any]) -> Any:
        """Batch B single-session states into one (B, ...) state."""
        from retnet_core.state import RecurrentState

        return RecurrentState.stack(states)

    def unbind(self, state: Any) -> list[Any]:
        """Split a batched state back into B single-session states."""
        return list(state.unbind())

    # ------------------------------------------------------------------ compute
    @torch.inference_mode()
    def prefill(
        self,
        ids: list[int],
        state: Any | None,
        boundaries: list[int],
        memory: Any = None,
        capture: dict | None = None,
    ) -> Prefilled:
        """Feed ``ids`` after ``state`` with chunk boundaries at ``boundaries`` (offsets).

        ``memory`` maps memory-layer index → slot bank; ``capture`` (a dict) receives each
        memory layer's input (1, T, d_model), which memory writes are computed from.
        """
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        cuts = sorted({b for b in boundaries if 0 < b < len(ids)})
        logits, new_state = self.model.prefill(
            tokens,
            state=state,
            boundaries=cuts or None,
            memory=memory,
            last_only=True,
            capture=capture,
        )
        return Prefilled(logits=logits.reshape(-1)[: logits.shape[-1]].float(), state=new_state)

    @torch.inference_mode()
    def prefill_rows(self, rows: list[list[int]], states: list[Any | None]) -> list[Prefilled]:
        """Feed one prompt per session in ONE batched call (no memory, no boundaries).

        Rows are right-padded with ``<|pad|>`` and passed with their ``lengths``; states
        (None: a new session) are stacked. Each row's result equals the same row fed
        alone through this method to float32 rounding (bit-identical where the BLAS picks
        the same GEMM kernel for both batch sizes; on some CPUs it does not, ~1e-6 apart):
        there is always at least one padding column (so the state is always the masked
        end-of-row formula), padding is masked out of retention and the state, the linear
        layers see ≥ 2 rows (B·T) either way, and the head is applied to each row's last
        valid hidden state on its own (one row).
        """
        if not rows or len(rows) != len(states) or any(not r for r in rows):
            raise ValueError("prefill_rows needs one non-empty prompt per state")
        # one padding column at least, so every row's state comes from the same masked
        # formula (without padding the chunk recurrence computes it, in other bits)
        width = max(len(r) for r in rows) + 1
        pad = self.tokenizer.pad_id
        tokens = torch.tensor(
            [r + [pad] * (width - len(r)) for r in rows], dtype=torch.long, device=self.device
        )
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long, device=self.device)
        stacked = self.stack([s if s is not None else self.model.init_state(1) for s in states])
        head = self.model.head
        picked: list[Tensor] = []
        hook = head.register_forward_hook(lambda _m, inp, _out: picked.append(inp[0]))
        try:
            _, new_state = self.model.prefill(
                tokens, state=stacked, lengths=lengths, last_only=True
            )
        finally:
            hook.remove()
        hidden = picked[-1]  # (B, d_model): each row's last valid position
        return [
            Prefilled(logits=head(hidden[i : i + 1]).reshape(-1).float(), state=st)
            for i, st in enumerate(self.unbind(new_state))
        ]

    @torch.inference_mode()
    def step(self, tokens: list[int], state: Any, memory: Any = None) -> tuple[Tensor, Any]:
        """One decode step for B sessions: tokens (B,) -> logits (B, V), new state."""
        t = torch.tensor(tokens, dtype=torch.long, device=self.device)
        logits, new_state = self.model.step(t, state, memory=memory)
        return logits.reshape(len(tokens), -1).float(), new_state


def _float_bytes(state: Any) -> int:
    """Bytes of a state's floating tensors as they are held (fp32 while decoding)."""
    return sum(t.numel() * t.element_size() for t in state.S) + sum(
        t.numel() * t.element_size() for t in (state.z or [])
    )


def logits_digest(logits: Tensor) -> str:
    """sha256 of the float32 logits bytes: equal digests mean bit-identical logits."""
    return hashlib.sha256(logits.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
