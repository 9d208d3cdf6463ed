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

from dataclasses import dataclass, replace
from typing import Any

from memsvc.errors import Unprocessable
from memsvc.records import FeedbackIn, FeedbackOut
from memsvc.services.forget import ForgetRequest
from memsvc.store import SessionRec
from memsvc.threads import run_in_threadpool

#: A topic forget removes the slot its request reads most only above this share.
FORGET_MIN_ATTENTION = 0.3


@dataclass
class ProvenanceBank:
    """A slot bank whose adds record a provenance (what the layer wrote): the memory,
    and each slot's own character span (``span_of`` maps a token span to it)."""

    bank: Any
    provenance: Any
    span_of: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.bank, name)

    def __len__(self) -> int:
        return len(self.bank)

    def add(self, keys, values, gates):
        n = int(keys.shape[0])
        return self.bank.add_with_provenance(keys, values, gates, [self.provenance] * n)

    def add_spans(self, keys, values, gates, spans):
        if self.span_of is None:
            return self.add(keys, values, gates)
        provs = [replace(self.provenance, span=self.span_of(span)) for span in spans]
        return self.bank.add_with_provenance(keys, values, gates, provs)


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

    # ------------------------------------------------------------------ writes
    def _write(self, banks, hidden, span, provenance, feedback=None, text=None) -> list[Any]:
        """Scheduler thread: write one span into every memory layer's bank.

        Returns every layer's :class:`retnet_core.memory_write.WriteRecord` (skips too)."""
        from retnet_core.layers import EMBEDS, TOKENS
        from retnet_core.memory import Feedback

        fb = [Feedback(**feedback)] if feedback else None
        records: list[Any] = []
        embeds, tokens = hidden.get(EMBEDS), hidden.get(TOKENS)
        offsets = None if text is None else self._char_spans(text)
        span_of = char_span_of(span[0], offsets, provenance.span)
        for layer, bank in banks.items():
            mem = self.runtime.model.blocks[layer].memory
            target = ProvenanceBank(bank, provenance, span_of)
            records.extend(
                mem.write(target, hidden[layer], [span], fb, embeds=embeds, tokens=tokens)
            )
        return records

    def _char_spans(self, text: str) -> list[tuple[int, int]] | None:
        spans = getattr(self.runtime.tokenizer, "char_spans", None)
        return None if spans is None else spans(text)

    async def after_turn(self, banks, capture: TurnCapture | None, user_msg, text: str) -> int:
        """Write the user message's span (gate decides) as a memory; returns slots written."""
        if not banks or capture is None or capture.span[1] <= capture.span[0]:
            return 0
        from storage import Provenance
        from storage.memories import new_memory_id

        s, e = capture.span
        new = self._new_memory(
            banks, new_memory_id(), user_msg.session_id, int(user_msg.id), text, None
        )
        prov = Provenance(new.session_id, new.message_id, new.span, new.id)
        records = await self.scheduler.call(
            lambda: self._write(banks, capture.hidden, (s, e), prov, text=text)
        )
        out = await run_in_threadpool(self._remember, new, records, "chat turn")
        return len(out.slots_written)

    @staticmethod
    def _new_memory(banks, memory_id, session_id, message_id, text, fields) -> Any:
        from storage.memories import NewMemory

        bank = next(iter(banks.values()))
        ns = bank.namespace
        fields = fields or {}
        return NewMemory(
            id=memory_id,
            tenant_id=bank.tenant_id,
            namespace=ns,
            user_id=ns[len("user:") :] if ns.startswith("user:") else fields.get("user_id"),
            session_id=session_id,
            message_id=message_id,
            span=(0, len(text)),
            text=None if message_id is not None else text,
            collection=fields.get("collection"),
            key=fields.get("key"),
        )

    def _remember(self, new, records, cause: str) -> WriteOutcome:
        """Threadpool: record what a write did: a new memory, a merge, or nothing."""
        appended = [r for r in records if r.op == "append"]
        if appended:
            ids = [int(i) for r in appended for i in r.slot_ids]
            gate = sum(r.gate for r in appended) / len(appended)
            memory = self.store.record_memory(new, ids, gate, cause)
            return WriteOutcome("stored", memory, [str(i) for i in ids], gate=gate)
        gate = max((r.gate for r in records), default=0.0)
        blended = sorted({i for r in records if r.op == "blend" for i in r.slot_ids})
        target = self.store.memory_of_slots(new.tenant_id, blended) if blended else None
        if target is not None:
            memory = self.store.memory_merged(new.tenant_id, target, f"{cause}: slots blended")
            return WriteOutcome("merged", memory, [], gate=gate, reason="similar to memory")
        return WriteOutcome("skipped", None, [], gate=gate, reason="gate below threshold")

    async def write_text(
        self,
        session_like: SessionRec,
        text: str,
        fields: dict[str, Any],
        cause: str,
        feedback: dict[str, Any] | None = None,
    ) -> WriteOutcome:
        """Write ``text`` (no message) through the layer's gate as a memory of the session's
        namespace. An identical live memory is not written again: merged into it."""
        banks = await run_in_threadpool(self.banks, session_like) if self.enabled else None
        if not banks:
            return WriteOutcome("skipped", None, [], reason="the model has no memory layers")
        from storage import Provenance
        from storage.memories import new_memory_id

        new = self._new_memory(banks, new_memory_id(), None, None, text, fields)
        dup = await run_in_threadpool(
            self.store.find_memory_text, new.tenant_id, new.namespace, text
        )
        if dup is not None:
            memory = await run_in_threadpool(
                self.store.memory_merged, new.tenant_id, dup, f"{cause}: same text written"
            )
            return WriteOutcome("merged", memory, [], reason="duplicate of an existing memory")
        prov = Provenance(None, None, new.span, new.id)

        def write() -> list[Any]:
            hidden, span = self._encode(text)
            return self._write(banks, hidden, span, prov, feedback, text=text)

        records = await self.scheduler.call(write)
        return await run_in_threadpool(self._remember, new, records, cause)

    async def write_slots(
        self, session_like: SessionRec, text: str, memory_id: str
    ) -> tuple[list[int], float]:
        """Write ``text`` as slots of an existing memory (a keyed item's text), forced
        past the gate; (appended slot ids, mean gate). No memory row is created."""
        banks = await run_in_threadpool(self.banks, session_like) if self.enabled else None
        if not banks:
            return [], 0.0
        from storage import Provenance

        prov = Provenance(None, None, (0, len(text)), memory_id)

        def write() -> list[Any]:
            hidden, span = self._encode(text)
            return self._write(banks, hidden, span, prov, {"remember": True}, text=text)

        records = [r for r in await self.scheduler.call(write) if r.op == "append"]
        ids = [int(i) for r in records for i in r.slot_ids]
        return ids, (sum(r.gate for r in records) / len(records) if records else 0.0)

    def _encode(self, text: str) -> tuple[dict[int, Any], tuple[int, int]]:
        """Scheduler thread: hidden states of ``text`` fed as a user turn from no state."""
        ids = self.runtime.tokenizer.render_turn({"role": "user", "content": text})
        capture: dict[int, Any] = {}
        self.runtime.prefill(ids, None, [], capture=capture)
        return capture, (1, len(ids) - 1)

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
        text = body.text if body.text is not None else message.content
        if body.kind == "forget" or (body.kind == "rating" and body.rating < 0):
            gone = await run_in_threadpool(self._forget, banks, message, body.text)
            return FeedbackOut(kind=body.kind, applied=True, slots_removed=gone)
        if body.kind == "rating" and body.rating == 0:
            return FeedbackOut(kind=body.kind, applied=False, detail="neutral rating")
        feedback = {"remember": True} if body.kind == "remember" else {"rating": 2.0}
        from storage import Provenance
        from storage.memories import new_memory_id

        message_id = None if message is None or body.text is not None else int(message.id)
        new = self._new_memory(banks, new_memory_id(), session.id, message_id, text, None)
        prov = Provenance(new.session_id, new.message_id, new.span, new.id)

        def write() -> list[Any]:
            hidden, span = self._encode(text)
            return self._write(banks, hidden, span, prov, feedback, text=text)

        records = await self.scheduler.call(write)
        out = await run_in_threadpool(self._remember, new, records, body.kind)
        return FeedbackOut(
            kind=body.kind, applied=bool(out.slots_written), slots_written=out.slots_written
        )

    # ------------------------------------------------------------------ passages
    def passage_reads(self, banks: dict[int, Any] | None, passages: list[str]) -> dict[int, Any]:
        """Scheduler thread: what this turn reads: the banks plus the fed passages.

        A copying model answers from a passage by reading it from memory (it was
        trained so: ``document`` dialogues), so each passage is written as token slots
        into a turn-local bank, read through beside the session's persistent bank
        (``retnet_core.slots.ReadThrough``); nothing of it is stored.
        """
        from retnet_core.layers import EMBEDS, TOKENS
        from retnet_core.slots import ExactSlotStore, ReadThrough

        d_key, d_value, _ = self.dims
        extra = {layer: ExactSlotStore(d_key, d_value) for layer in self.layers}
        tok = self.runtime.tokenizer
        for text in passages:
            ids = tok.render_turn({"role": "passage", "content": text})
            hidden: dict[int, Any] = {}
            self.runtime.prefill(ids, None, [], capture=hidden)
            for layer, bank in extra.items():
                mem = self.runtime.model.blocks[layer].memory
                span = [(1, len(ids) - 1)]
                mem.write(bank, hidden[layer], span, embeds=hidden[EMBEDS], tokens=hidden[TOKENS])
        return {layer: ReadThrough((banks or {}).get(layer), extra[layer]) for layer in extra}

    @property
    def reads_passages(self) -> bool:
        """Whether fed passages are also read from memory (models with copying slots)."""
        return self.enabled and bool(getattr(self.runtime.model.config, "memory_copy", False))

    # ------------------------------------------------------------------ chat forget
    def forget_request(
        self, banks, request: ForgetRequest, hidden: dict[int, Any], position: int
    ) -> list[str]:
        """Scheduler thread: remove what a forget request said in chat names.

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
        """Evict ``record`` and every slot of the same memory (or message)."""
        if record.memory_id is not None:
            return self._evict_where(banks, lambda r: r.memory_id == record.memory_id)
        if record.message_id is None:
            return self._evict_where(banks, lambda r: r.id == record.id)
        return self._evict_where(banks, lambda r: r.message_id == record.message_id)

    def _evict_where(self, banks, keep_out: Any) -> list[str]:
        """Evict matching slots; memories they belonged to are deleted (cause: forget)."""
        gone: list[str] = []
        hit: set[str] = set()
        for bank in banks.values():
            recs = [r for r in bank.records() if keep_out(r)]
            if recs:
                bank.evict([r.id for r in recs], cause="forget")
                gone.extend(str(r.id) for r in recs)
                hit.update(r.memory_id for r in recs if r.memory_id is not None)
        if hit:
            self.store.retire_memories(next(iter(banks.values())).tenant_id, sorted(hit), "forget")
        return gone

    def _forget(self, banks, message, text: str | None) -> list[str]:
        """Remove slots written from ``message`` or of memories whose text contains ``text``;
        memories left without slots are deleted (cause: forget)."""
        bank0 = next(iter(banks.values()))
        memory_ids: set[str] = set()
        if text:
            found = self.store.search_memory_text(bank0.tenant_id, bank0.namespace, text)
            memory_ids.update(found)
        gone: list[str] = []
        hit: set[str] = set()
        for bank in banks.values():
            recs = [
                r
                for r in bank.records()
                if (message is not None and r.message_id == int(message.id))
                or (r.memory_id is not None and r.memory_id in memory_ids)
            ]
            if recs:
                bank.evict([r.id for r in recs], cause="forget")
                gone.extend(str(r.id) for r in recs)
                hit.update(r.memory_id for r in recs if r.memory_id is not None)
        self.store.retire_memories(bank0.tenant_id, sorted(hit), "forget")
        return gone


@dataclass(frozen=True)
class WriteOutcome:
    """What a memory write did: ``stored`` (a new memory), ``merged`` (into ``memory``,
    a duplicate) or ``skipped`` (``reason``: e.g. the gate was below the threshold)."""

    status: str
    memory: Any
    slots_written: list[str]
    gate: float = 0.0
    reason: str | None = None


def char_span_of(content_start: int, offsets: list[tuple[int, int]] | None, whole: Any):
    """token span [s, e) in prefill positions → the slot's character span in the source.

    The text's tokens start at ``content_start``, so token t is ``offsets[t -
    content_start]``. Without offsets (a tokenizer that gives none), or for a span
    outside the text, the memory's ``whole`` span.
    """

    def span_of(span: tuple[int, int]) -> tuple[int, int] | None:
        a, b = span[0] - content_start, span[1] - content_start - 1
        if offsets and whole is not None and 0 <= a <= b < len(offsets):
            return (whole[0] + offsets[a][0], whole[0] + offsets[b][1])
        return whole

    return span_of
