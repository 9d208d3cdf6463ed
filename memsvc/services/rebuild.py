"""Rebuilding a session's state for another model from its stored messages.

A state belongs to the model that wrote it: its blob (and the state row) carries the
model's fingerprint, and loading it into another model raises
:class:`retnet_core.state.StateMismatchError`. When a deployment switches models (a new
default, a converted checkpoint, another ``MEMSVC_WEIGHTS``) the session is not lost:
its history is re-prefilled once, as the turn path would have fed it,

    ids = render(system) ‖ render(m_1) ‖ … ‖ render(m_n),   render(m) = <|role|> text <|end|>

and the resulting state S_n (per layer (1, H, d_k, d_v), position = len(ids)) is used
by the caller and saved with its next commit under the new fingerprint.

What the replay cannot bring back: passages a RAG turn fed (they are not messages) and
what the old model read from memory while those turns ran. A state whose bytes are
damaged (:class:`~retnet_core.state.StateCorruptError`) is not rebuilt: that stays a
409, because it means storage lost data, not that the model changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memsvc.engine.requests import PrefillRequest, Segment
from memsvc.store import LoadedState
from memsvc.threads import run_in_threadpool

#: roles a replay feeds back (anything else stored is skipped)
REPLAYED_ROLES = ("system", "user", "assistant")
#: the most messages one replay reads (a session's whole history in practice)
MAX_REPLAYED_MESSAGES = 1_000_000


@dataclass(frozen=True)
class Rebuilt:
    """The state after the replayed history and the number of tokens fed."""

    state: Any
    tokens: int


def is_foreign(loaded: LoadedState, fingerprint: str) -> bool:
    """True when the stored state row names another model than ``fingerprint``."""
    return bool(loaded.data) and bool(loaded.fingerprint) and loaded.fingerprint != fingerprint


def history_ids(tokenizer: Any, system_prompt: str | None, messages: list[Any]) -> list[int]:
    """The session's history as the turn path feeds it (pure; see the module docstring)."""
    ids: list[int] = []
    if system_prompt:
        ids += tokenizer.render_turn({"role": "system", "content": system_prompt})
    for m in messages:
        if m.role in REPLAYED_ROLES:
            ids += tokenizer.render_turn({"role": m.role, "content": m.content})
    return ids


def load_or_none(runtime: Any, loaded: LoadedState) -> tuple[Any, bool]:
    """Thread pool: (state or None, stale). ``stale`` is True when the state belongs to
    another model (by its row's fingerprint, or by the blob's own check); a damaged
    state still raises :class:`~retnet_core.state.StateError`."""
    from retnet_core.state import StateMismatchError

    if not loaded.data:
        return None, False
    if is_foreign(loaded, runtime.fingerprint):
        return None, True
    try:
        return runtime.state_from_bytes(loaded.data), False
    except StateMismatchError:
        return None, True


async def rebuild(store: Any, runtime: Any, scheduler: Any, session: Any) -> Rebuilt:
    """Re-prefill ``session``'s stored history on the serving model (I/O on the thread
    pool, one plain prefill request on the engine). Empty history → state None."""
    messages = await run_in_threadpool(
        store.list_messages, session.tenant_id, session.id, MAX_REPLAYED_MESSAGES
    )
    ids = history_ids(runtime.tokenizer, session.system_prompt, messages)
    if not ids:
        return Rebuilt(None, 0)
    result = await scheduler.run(PrefillRequest([Segment(ids)], None))
    return Rebuilt(result.state, len(ids))
