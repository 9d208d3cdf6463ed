"""Memory slots in the service: which banks a session reads, end-of-turn writes, feedback.

A session's memory scope picks its namespace: ``user`` → ``user:<user id>`` (memories
carry over between that user's sessions; a session without a user falls back to its
own namespace), ``session`` → ``session:<id>``, ``tenant`` → ``tenant:<id>``, ``none``
→ no memory. One bank per memory layer of the model, opened through storage.

Writes go through the Retention Layer's own gate (:meth:`MemoryLayer.write`): at the end
of a turn the user message's span is encoded from the hidden states captured during
its prefill and written with provenance (session, message, token span, text). Feedback
forces (remember), vetoes and removes (forget), or scales (rating) that gate. A forget
request said in chat ("Please forget my dog's name.") removes the slot the request
itself reads most (:meth:`MemoryManager.forget_request`, see ``memsvc.services.forget``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memsvc.engine.requests import PrefillRequest, Segment
from memsvc.errors import Unprocessable
from memsvc.records import FeedbackIn, FeedbackOut
from memsvc.services.forget import ForgetRequest
from memsvc.store import TURN_USER_MESSAGE, SessionRec, SlotProvenance
from memsvc.threads import run_in_threadpool

#: A topic forget removes the slot its request reads most only above this share.
FORGET_MIN_ATTENTION = 0.3


@dataclass
class ProvenanceBank:
    """A slot bank whose plain ``add`` records a fixed provenance (what the layer wrote)."""

    bank: Any
    provenance: Any

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bank, name)

    def __len__(self) -> int:
        return len(self.bank)

    def add(self, keys, values, gates):
        n = int(keys.shape[0])
        return self.bank.add_with_provenance(keys, values, gates, [self.provenance] * n)


@dataclass
class TurnCapture:
    """What a turn's prefill left for the memory write: hidden states and the span."""

    hidden: dict[int, Any]
    span: tuple[int, int]  # content tokens of the user turn within the prefill call
    offset: int  # session position where the prefill call started


class MemoryManager:
    """Banks per session, end-of-turn writes and feedback (see the module docstring)."""

    def __init__(self, store: Any, runtime: Any, scheduler: Any) -> None:
        self.store = store
        self.runtime = runtime
        self.scheduler = scheduler
        cfg = runtime.model.config
        self.layers: list[int] = list(cfg.memory_layers)
        # a copying layer stores each slot's token id as one more value column
        d_value = cfg.memory_d_value + int(getattr(cfg, "memory_copy", False))
        self.dims = (cfg.memory_d_key, d_value, cfg.memory_capacity)

    @property
    def enabled(self) -> bool:
        return bool(self.layers)

    @staticmethod
    def namespace(session: SessionRec) -> tuple[str, str] | None:
        """(scope, id) of the session's memory, or None for scope ``none``."""
        scope = session.memory_scope
        if scope == "none":
            return None
        if scope == "user" and session.user_id:
            return "user", session.user_id
        if scope == "tenant":
            return "tenant", session.tenant_id
        return "session", session.id

    def group_key(self, session: SessionRec) -> str:
        """Sessions with the same banks can share a batched decode step."""
        ns = self.namespace(session) if self.enabled else None
        return "" if ns is None else f"{session.tenant_id}|{ns[0]}:{ns[1]}"

    def banks(self, session: SessionRec) -> dict[int, Any] | None:
        """layer → bank for this session (opened/created in storage), None without memory."""
        ns = self.namespace(session) if self.enabled else None
        if ns is None:
            return None
        d_key, d_value, capacity = self.dims
        return {
            layer: self.store.slot_bank(session.tenant_id, ns, layer, d_key, d_value, capacity)
            for layer in self.layers
        }

    def views(self, session: SessionRec) -> dict[int, Any] | None:
        """layer → in-memory view of the session's bank for one turn (thread pool: SQL).

        The model reads and writes these during the turn without I/O; their changes are
        committed with the turn (``TurnCommit.slot_changes``).
        """
        ns = self.namespace(session) if self.enabled else None
        if ns is None:
            return None
        return self.store.bank_views(session.tenant_id, ns, self.layers, self.dims)

    # ------------------------------------------------------------------ writes
    def _write(self, banks, hidden, span, provenance, feedback=None) -> list[str]:
        """Thread pool, after the engine's prefill: one span into every memory layer's bank
        (the layer's write gate: pure tensor functions of its weights, no model state)."""
        from retnet_core.layers import EMBEDS, TOKENS
        from retnet_core.memory import Feedback

        fb = [Feedback(**feedback)] if feedback else None
        written: list[str] = []
        embeds, tokens = hidden.get(EMBEDS), hidden.get(TOKENS)
        for layer, bank in banks.items():
            mem = self.runtime.model.blocks[layer].memory
            target = ProvenanceBank(bank, provenance)
            records = mem.write(target, hidden[layer], [span], fb, embeds=embeds, tokens=tokens)
            for rec in records:
                if rec.op != "skip":
                    written.extend(str(i) for i in rec.slot_ids)
        return written

    def write_turn(self, views, capture: TurnCapture | None, session_id: str, text: str) -> int:
        """Thread pool, tensors only: the user message's span into the turn's views.

        The slots are written to SQL by the turn's commit, where their provenance gets
        the id of the user message committed with them. Returns slots written.
        """
        if not views or capture is None or capture.span[1] <= capture.span[0]:
            return 0
        s, e = capture.span
        prov = SlotProvenance(
            session_id=session_id,
            message_id=TURN_USER_MESSAGE,
            span=(capture.offset + s, capture.offset + e),
            text=text,
        )
        return len(self._write(views, capture.hidden, (s, e), prov))

    async def _encode(
        self, text: str, role: str = "user"
    ) -> tuple[dict[int, Any], tuple[int, int]]:
        """Hidden states of ``text`` fed as a ``role`` turn from no state (the engine)."""
        ids = self.runtime.tokenizer.render_turn({"role": role, "content": text})
        result = await self.scheduler.run(PrefillRequest([Segment(ids, capture=True)]))
        return result.capture, (1, len(ids) - 1)

    # ------------------------------------------------------------------ feedback
    async def feedback(self, tenant_id: str, session_id: str, body: FeedbackIn) -> FeedbackOut:
        """remember (text or message) / forget (message or text) / rating (message)."""
        session = await run_in_threadpool(self.store.get_session, tenant_id, session_id, False)
        message = None
        if body.message_id is not None:
            message = await run_in_threadpool(
                self.store.get_message, tenant_id, session_id, body.message_id
            )
        if body.kind == "rating" and (message is None or body.rating is None):
            raise Unprocessable("rating needs message_id and rating (-1, 0 or 1)")
        if body.kind in ("remember", "forget") and message is None and body.text is None:
            raise Unprocessable(f"{body.kind} needs message_id or text")
        banks = await run_in_threadpool(self.banks, session) if self.enabled else None
        if not banks:
            return FeedbackOut(kind=body.kind, applied=False, detail="session has no memory")
        views = await run_in_threadpool(self.views, session)
        text = body.text if body.text is not None else message.content
        if body.kind == "forget" or (body.kind == "rating" and body.rating < 0):
            gone = await run_in_threadpool(self._forget, banks, message, body.text)
            return FeedbackOut(kind=body.kind, applied=True, slots_removed=gone)
        if body.kind == "rating" and body.rating == 0:
            return FeedbackOut(kind=body.kind, applied=False, detail="neutral rating")
        feedback = {"remember": True} if body.kind == "remember" else {"rating": 2.0}
        prov = SlotProvenance(
            session_id=session.id,
            message_id=None if message is None else int(message.id),
            text=text,
        )

        hidden, span = await self._encode(text)

        def write() -> list[list[str]]:  # thread pool: tensors into the views only
            return [self._write({n: v}, hidden, span, prov, feedback) for n, v in views.items()]

        per_layer = await run_in_threadpool(write)
        changes = [v.changes() for v in views.values()]
        stored = await run_in_threadpool(self.store.commit_slots, changes)
        ids = [  # the views' ids of new slots become the stored ones
            str(new_ids.get(int(i), int(i)))
            for got, new_ids in zip(per_layer, stored, strict=True)
            for i in got
        ]
        return FeedbackOut(kind=body.kind, applied=bool(ids), slots_written=ids)

    # ------------------------------------------------------------------ passages
    async def passage_reads(
        self, banks: dict[int, Any] | None, passages: list[str]
    ) -> dict[int, Any]:
        """What this turn reads: the banks plus the fed passages.

        A copying model answers from a passage by reading it from memory (it was
        trained so: ``document`` dialogues), so each passage is encoded (the engine
        prefills it from no state, capturing the memory layers' inputs) and written as
        token slots (thread pool) into a turn-local bank, read through beside the
        session's persistent bank (``retnet_core.slots.ReadThrough``); nothing of it
        is stored.
        """
        from retnet_core.slots import ReadThrough

        encoded = [await self._encode(text, "passage") for text in passages]
        extra = await run_in_threadpool(self._passage_bank, encoded)
        return {layer: ReadThrough((banks or {}).get(layer), extra[layer]) for layer in extra}

    def _passage_bank(self, encoded: list[tuple[dict[int, Any], tuple[int, int]]]) -> dict:
        """Thread pool: a turn-local exact bank per memory layer holding the passages."""
        from retnet_core.layers import EMBEDS, TOKENS
        from retnet_core.slots import ExactSlotStore

        d_key, d_value, _ = self.dims
        extra = {layer: ExactSlotStore(d_key, d_value) for layer in self.layers}
        for hidden, span in encoded:
            for layer, bank in extra.items():
                mem = self.runtime.model.blocks[layer].memory
                mem.write(bank, hidden[layer], [span], embeds=hidden[EMBEDS], tokens=hidden[TOKENS])
        return extra

    @property
    def reads_passages(self) -> bool:
        """Whether fed passages are also read from memory (models with copying slots)."""
        return self.enabled and bool(getattr(self.runtime.model.config, "memory_copy", False))

    # ------------------------------------------------------------------ chat forget
    def forget_request(
        self, banks, request: ForgetRequest, hidden: dict[int, Any], position: int
    ) -> list[str]:
        """Thread pool, tensors only: remove what a forget request said in chat names.

        ``topic``: the slot that the request's token at ``position`` (its ``<|end|>``)
        reads most, if it takes at least ``FORGET_MIN_ATTENTION`` of the read (the model
        was trained to point there); ``last``: the newest slot; ``all``: every slot.
        Every slot written from the same message goes with it, in every layer's bank.
        Returns the removed slot ids.
        """
        layer = min(banks)
        bank = banks[layer]
        if len(bank) == 0:
            return []
        if request.scope == "all":
            return self._evict_where(banks, lambda r: True)
        if request.scope == "last":
            newest = max(bank.records(), key=lambda r: r.created_tick)
            return self._evict_like(banks, newest)
        ids, keys, _ = bank.all()
        h = hidden[layer].reshape(-1, hidden[layer].shape[-1])[position : position + 1]
        probs = self.runtime.model.blocks[layer].memory.read_probs(h, keys)[0]
        best = int(probs.argmax())
        if float(probs[best]) < FORGET_MIN_ATTENTION:
            return []
        (record,) = bank.records([int(ids[best])])
        return self._evict_like(banks, record)

    def _evict_like(self, banks, record: Any) -> list[str]:
        """Evict ``record`` and every slot written from the same message."""
        if record.message_id is None:
            return self._evict_where(banks, lambda r: r.id == record.id)
        return self._evict_where(banks, lambda r: r.message_id == record.message_id)

    @staticmethod
    def _evict_where(banks, keep_out: Any) -> list[str]:
        gone: list[str] = []
        for bank in banks.values():
            ids = [r.id for r in bank.records() if keep_out(r)]
            if ids:
                bank.evict(ids)
                gone.extend(str(i) for i in ids)
        return gone

    def _forget(self, banks, message, text: str | None) -> list[str]:
        """Remove slots written from ``message`` or whose text contains ``text``."""
        needle = text.lower() if text else None
        gone: list[str] = []
        for bank in banks.values():
            ids = [
                r.id
                for r in bank.records()
                if (message is not None and r.message_id == int(message.id))
                or (needle and r.text and needle in r.text.lower())
            ]
            if ids:
                bank.evict(ids)
                gone.extend(str(i) for i in ids)
        return gone
