"""The plain data the engine works from: what to feed, how to sample, where events go.

A request holds token ids, a recurrent state, in-memory bank views and sampling
parameters; never a function. Everything that needs I/O (loading the state and the
banks, snapshot look-ups, the commit) happens before a request is built or after its
result comes back, on the thread pool. vLLM v1's split is the model: the scheduler
turns requests into batched model calls, the model runner never touches storage.

Two kinds:

- :class:`PrefillRequest`: feed segments after a state, answer with a
  :class:`PrefillResult` (logits, state, states kept after segments, captured hidden
  states). Used for system prompts, memory encodes, probes.
- :class:`GenerateRequest`: a prefill, then decoding in the shared batch; the prefill's
  result answers the request and text events go to ``sink``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from torch import Tensor

from retnet_core.sampling import SamplingParams


class EventSink(Protocol):
    """Where a turn's events go (a ``queue.Queue``, or :class:`AsyncSink`)."""

    def put(self, event: object) -> None: ...


class AsyncSink:
    """Hands events from the model thread to an asyncio queue on its loop, thread-safely."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
        self.loop = loop
        self.queue = queue

    def put(self, event: object) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, event)


@dataclass(frozen=True)
class Segment:
    """Tokens fed in one prefill call after the state so far.

    ``cuts``: chunk boundaries (offsets into ``ids``); ``read_memory``: the request's
    banks are read; ``capture``: the memory layers' inputs (1, T, d_model) come back in
    the result (memory writes are computed from them); ``keep``: the state right after
    this segment comes back (a passage snapshot); ``alone``: fed in its own call, so its
    bits never depend on which other prompts were ready (probes compared by digest).
    """

    ids: list[int]
    cuts: tuple[int, ...] = ()
    read_memory: bool = False
    capture: bool = False
    keep: bool = False
    alone: bool = False

    @property
    def plain(self) -> bool:
        """Batchable with other sessions' prompts: no memory, capture, keep or cuts."""
        return not (self.read_memory or self.capture or self.keep or self.cuts or self.alone)


@dataclass
class PrefillRequest:
    """Feed ``segments`` in order after ``state`` (None: a new session).

    ``memory`` maps memory-layer index → bank view (read by segments that say so, and
    by every decode step of a :class:`GenerateRequest`).
    """

    segments: list[Segment]
    state: Any = None
    memory: Any = None

    @property
    def batchable(self) -> bool:
        """One plain segment: fed in one batched call with other ready prompts."""
        return len(self.segments) == 1 and self.segments[0].plain and bool(self.segments[0].ids)


@dataclass
class PrefillResult:
    """Logits (V,) after the last segment, the state there, kept states, captured inputs."""

    logits: Tensor | None
    state: Any
    kept: list[Any] = field(default_factory=list)
    capture: dict | None = None


@dataclass
class GenerateRequest:
    """A prefill, then sampling and decoding until ``<|end|>``, a stop or ``max_new``.

    With no segments, ``logits`` are the next-token logits after ``prefill.state``.
    Turns with an equal non-empty ``group`` may share batched decode steps (they read
    the same banks); ``""`` means no memory is read.

    ``forced``: the reply's tokens are these instead of samples (a reply the service
    writes, such as a forget request's confirmation), fed through the same decode steps
    so the state ends as if the model had said them; ``max_new`` and stops still apply.

    ``contrast``: the prompt without its context (a memory note), fed after the same
    ``prefill.state``; the first token is chosen from
    :func:`~retnet_core.sampling.contrast_context` of the two prompts' logits with
    ``contrast_weight``. Only the first token: that is where a reply commits to naming
    what the note holds or to saying it does not know, and the turn's state stays the
    one with the note.
    """

    prefill: PrefillRequest
    params: SamplingParams
    max_new: int
    sink: EventSink
    stops: list[str] = field(default_factory=list)
    group: str = ""
    logits: Tensor | None = None
    started: float = field(default_factory=time.perf_counter)
    forced: tuple[int, ...] | None = None
    contrast: list[int] | None = None
    contrast_weight: float = 0.0


Request = PrefillRequest | GenerateRequest


@dataclass
class TokenEvent:
    """New text of the reply (never text that a stop sequence will cut away)."""

    text: str


@dataclass
class DoneEvent:
    """The turn's decode is over: its final state ends right after ``<|end|>``."""

    finish_reason: str  # "stop" | "length" | "stop_sequence"
    text: str
    token_ids: list[int]
    state: Any
    ttft_s: float | None


@dataclass
class ErrorEvent:
    """Decoding failed; nothing of this turn was persisted."""

    error: BaseException
