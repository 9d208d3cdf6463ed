"""Memory slots in the service: which banks a session reads, end-of-turn writes, feedback.

A session's memory scope picks its namespace: ``user`` → ``user:<user id>`` (memories
carry over between that user's sessions; a session without a user falls back to its
own namespace), ``session`` → ``session:<id>``, ``tenant`` → ``tenant:<id>``, ``none``
→ no memory. One bank per memory layer of the model, opened through storage.

Writes go through the Retention Layer's own gate (:meth:`MemoryLayer.write`): at the end
of a turn the user message's span is encoded from the hidden states captured during
its prefill and written as a memory: its slots carry the memory id and their own
character span, never the text. Feedback forces (remember), vetoes and removes (forget),
or scales (rating) that gate. A forget request said in chat ("Please forget my dog's
name.") removes the memories its topic names, matched against their text and the
request's own read (:meth:`MemoryManager.forget_request`, ``memsvc.services.forget`` and
``memsvc.services.forget_match``).

Every write goes into bank views on the thread pool (tensors only) and is committed
once: a turn's with the turn (``TurnCommit.slot_changes``), an explicit write's (API,
feedback, transcript import) through ``store.commit_slots``. The memory row, or the
``merged`` event of a write that blended into another memory's slots, is written in that
same transaction (``storage.memory_commit``); see :mod:`memsvc.services.memory_outcome`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memsvc.engine.requests import PrefillRequest, Segment
from memsvc.errors import Unprocessable
from memsvc.records import FeedbackIn, FeedbackOut
from memsvc.services.forget import ForgetRequest
from memsvc.services.forget_match import candidates, chosen, read_shares
from memsvc.services.memory_focus import focus
from memsvc.services.memory_outcome import (
    PendingOutcome,
    ProvenanceBank,
    WriteOutcome,
    blended_slots,
    char_span_of,
    outcome_of,
)
from memsvc.store import (
    TURN_USER_MESSAGE,
    PendingMemory,
    SessionRec,
    SlotProvenance,
    new_memory_id,
)
from memsvc.threads import run_in_threadpool

#: A topic forget removes the slot its request reads most only above this share.
FORGET_MIN_ATTENTION = 0.3

__all__ = ["MemoryManager", "ProvenanceBank", "TurnCapture", "WriteOutcome", "char_span_of"]


@dataclass
class TurnCapture:
    """What a turn's prefill left for the memory write: hidden states and the span."""

    hidden: dict[int, Any]
    span: tuple[int, int]  # content tokens of the user turn within the prefill call
    offset: int  # session position where the prefill call started


class MemoryManager:
    """Banks per session, end-of-turn writes and feedback (see the module docstring)."""

    def __init__(self, store: Any, runtime: Any, scheduler: Any, embeddings: Any = None) -> None:
        self.store = store
        self.runtime = runtime
        self.scheduler = scheduler
        # memory texts -> unit vectors (memsvc.services.memories.EmbeddingCache): a chat
        # forget matches its topic against them (memsvc.services.forget_match)
        self.embeddings = embeddings
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
    def _write(self, banks, hidden, span, provenance, feedback=None, text=None) -> dict:
        """Thread pool, after the engine's prefill: one span into every memory layer's bank
        view (the layer's write gate: pure tensor functions of its weights, no model state).

        Returns layer → :class:`retnet_core.memory_write.WriteRecord` list (skips too)."""
        from retnet_core.layers import EMBEDS, TOKENS
        from retnet_core.memory import Feedback

        fb = [Feedback(**feedback)] if feedback else None
        records: dict[int, list[Any]] = {}
        embeds, tokens = hidden.get(EMBEDS), hidden.get(TOKENS)
        offsets = None if text is None else self._char_spans(text)
        span_of = char_span_of(span[0], offsets, provenance.span)
        for layer, bank in banks.items():
            mem = self.runtime.model.blocks[layer].memory
            target = ProvenanceBank(bank, provenance, span_of)
            records[layer] = mem.write(
                target, hidden[layer], [span], fb, embeds=embeds, tokens=tokens
            )
        return records

    def _char_spans(self, text: str) -> list[tuple[int, int]] | None:
        spans = getattr(self.runtime.tokenizer, "char_spans", None)
        return None if spans is None else spans(text)

    @staticmethod
    def _new_memory(views, session_id, message_id, text, fields=None) -> PendingMemory:
        """The memory a write of ``text`` makes in the views' namespace (pure)."""
        view = next(iter(views.values()))
        ns, fields = view.namespace, fields or {}
        return PendingMemory(
            id=new_memory_id(),
            tenant_id=view.tenant_id,
            namespace=ns,
            user_id=ns[len("user:") :] if ns.startswith("user:") else fields.get("user_id"),
            session_id=session_id,
            message_id=message_id,
            span=(0, len(text)),
            text=None if message_id is not None else text,
            collection=fields.get("collection"),
            key=fields.get("key"),
        )

    def _write_memory(self, views, new, hidden, span, cause, feedback=None, text=None):
        """Thread pool, tensors only: ``new``'s span into the views, and what that
        did to memories noted on them for the commit (see ``storage.memory_commit``)."""
        prov = SlotProvenance(new.session_id, new.message_id, new.span, new.id)
        records = self._write(views, hidden, span, prov, feedback, text=text)
        out = outcome_of(records, new.id)
        first = views[min(views)]
        if out.status == "stored":
            first.memory_written(new, out.gate, cause)
        elif out.status == "merged":
            first.memory_merged(blended_slots(records), f"{cause}: slots blended")
        return out

    def write_turn(self, views, capture: TurnCapture | None, session_id: str, text: str) -> int:
        """Thread pool, tensors only: the user message's span into the turn's views.

        The slots and their memory are written to SQL by the turn's commit, where their
        provenance gets the id of the user message committed with them. Returns slots
        written (appended or blended).
        """
        if not views or capture is None or capture.span[1] <= capture.span[0]:
            return 0
        new = self._new_memory(views, session_id, TURN_USER_MESSAGE, text)
        out = self._write_memory(views, new, capture.hidden, capture.span, "chat turn", text=text)
        return out.written

    async def _commit_write(self, session, new, text, cause, feedback=None) -> WriteOutcome:
        """Encode ``text`` and write it as ``new`` into fresh views, then ONE commit."""
        views = await run_in_threadpool(self.views, session)
        if not views:
            return WriteOutcome("skipped", None, [], reason="session has no memory")

        hidden, span = await self._encode(text)  # the engine: model thread
        out = await run_in_threadpool(  # thread pool: tensors into the views only
            self._write_memory, views, new, hidden, span, cause, feedback, text
        )
        changes = [v.changes() for v in views.values()]
        stored = await run_in_threadpool(self.store.commit_slots, changes)
        return await run_in_threadpool(self._resolved, out, views, changes, stored)

    def _resolved(self, out: PendingOutcome, views, changes, stored) -> WriteOutcome:
        """Threadpool: the outcome with the ids the commit assigned (and its memory)."""
        tenant_id = next(iter(views.values())).tenant_id
        ids = out.slot_ids(list(views), stored)
        if out.status == "stored":
            memory = self.store.get_memory(tenant_id, out.memory_id)
            return WriteOutcome("stored", memory, ids, gate=out.gate)
        merged = [m for ch in changes if ch.memories is not None for m in ch.memories.merged_into]
        target = next((m for m in merged if m is not None), None)
        if target is not None:
            memory = self.store.get_memory(tenant_id, target)
            return WriteOutcome("merged", memory, ids, gate=out.gate, reason=out.reason)
        return WriteOutcome("skipped", None, ids, gate=out.gate, reason="gate below threshold")

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
        ns = self.namespace(session_like) if self.enabled else None
        if ns is None:
            return WriteOutcome("skipped", None, [], reason="the model has no memory layers")
        namespace = f"{ns[0]}:{ns[1]}"
        dup = await run_in_threadpool(
            self.store.find_memory_text, session_like.tenant_id, namespace, text
        )
        if dup is not None:
            memory = await run_in_threadpool(
                self.store.memory_merged, session_like.tenant_id, dup, f"{cause}: same text written"
            )
            return WriteOutcome("merged", memory, [], reason="duplicate of an existing memory")
        views = await run_in_threadpool(self.views, session_like)
        new = self._new_memory(views, None, None, text, fields)
        return await self._commit_write(session_like, new, text, cause, feedback)

    async def write_slots(
        self, session_like: SessionRec, text: str, memory_id: str
    ) -> tuple[list[int], float]:
        """Write ``text`` as slots of an existing memory (a keyed item's text), forced
        past the gate, into views and one commit; (appended slot ids, mean gate). No
        memory row is created."""
        views = await run_in_threadpool(self.views, session_like) if self.enabled else None
        if not views:
            return [], 0.0
        prov = SlotProvenance(None, None, (0, len(text)), memory_id)

        hidden, span = await self._encode(text)  # the engine: model thread
        records = await run_in_threadpool(  # thread pool: tensors into the views only
            self._write, views, hidden, span, prov, {"remember": True}, text
        )
        out = outcome_of(records)
        stored = await run_in_threadpool(
            self.store.commit_slots, [v.changes() for v in views.values()]
        )
        ids = [int(i) for i in out.slot_ids(list(views), stored)]
        return ids, (out.gate if out.status == "stored" else 0.0)

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
        text = body.text if body.text is not None else message.content
        if body.kind == "forget" or (body.kind == "rating" and body.rating < 0):
            gone = await run_in_threadpool(self._forget, banks, message, body.text)
            return FeedbackOut(kind=body.kind, applied=True, slots_removed=gone)
        if body.kind == "rating" and body.rating == 0:
            return FeedbackOut(kind=body.kind, applied=False, detail="neutral rating")
        feedback = {"remember": True} if body.kind == "remember" else {"rating": 2.0}
        message_id = None if message is None or body.text is not None else int(message.id)
        new = self._new_memory(banks, session.id, message_id, text)
        out = await self._commit_write(session, new, text, body.kind, feedback)
        return FeedbackOut(
            kind=body.kind, applied=bool(out.slots_written), slots_written=out.slots_written
        )

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
    ) -> tuple[list[str], list[str]]:
        """Thread pool: remove what a forget request said in chat names.

        ``topic``: the memories :mod:`memsvc.services.forget_match` picks from their text
        and from the read of the request's token at ``position`` (its ``<|end|>``);
        without an embedder, the memory that read lands on most, if it takes at least
        ``FORGET_MIN_ATTENTION`` of it. ``last``: the newest memory; ``all``: every slot.
        Every slot of a removed memory goes, in every layer's bank. Returns (removed slot
        ids, removed memory ids).
        """
        layer = min(banks)
        bank = banks[layer]
        if len(bank) == 0:
            return [], []
        if request.scope == "all":
            return self._evict_where(banks, lambda r: True)
        if request.scope == "last":
            newest = max(bank.records(), key=lambda r: r.created_tick)
            return self._evict_like(banks, newest)
        ids, keys, _ = bank.all()
        h = hidden[layer].reshape(-1, hidden[layer].shape[-1])[position : position + 1]
        probs = self.runtime.model.blocks[layer].memory.read_probs(h, keys)[0]
        records = bank.records([int(i) for i in ids])
        if self.embeddings is not None:
            shares = read_shares([r.memory_id for r in records], probs.tolist())
            named = {c.memory_id for c in self._match_topic(bank.tenant_id, request, shares)}
            return self._evict_where(banks, lambda r: r.memory_id in named) if named else ([], [])
        best = int(probs.argmax())
        if float(probs[best]) < FORGET_MIN_ATTENTION:
            return [], []
        return self._evict_like(banks, records[best])

    def _match_topic(self, tenant_id: str, request: ForgetRequest, shares: dict[str, float]):
        """The memories of ``shares`` (those with slots in the banks) the topic names."""
        live = self.store.get_memories(tenant_id, sorted(shares))
        live = [m for m in live if m.text]
        if not live:
            return []
        topic = self.embeddings.embedder.embed([request.topic])[0]
        # a memory by its sentence closest to the topic (memsvc.services.memory_focus)
        vectors = focus(self.embeddings.sentence_vectors(live), topic)[0]
        texts = {m.id: m.text for m in live}
        return chosen(candidates(texts, topic, vectors, shares))

    def _evict_like(self, banks, record: Any) -> tuple[list[str], list[str]]:
        """Evict ``record`` and every slot of the same memory (or message)."""
        if record.memory_id is not None:
            return self._evict_where(banks, lambda r: r.memory_id == record.memory_id)
        if record.message_id is None:
            return self._evict_where(banks, lambda r: r.id == record.id)
        return self._evict_where(banks, lambda r: r.message_id == record.message_id)

    @staticmethod
    def _evict_where(views, keep_out: Any) -> tuple[list[str], list[str]]:
        """Scheduler thread: evict matching slots from the turn's views; the memories they
        belonged to are deleted by the commit once left without slots (cause: forget).
        Returns (slot ids, memory ids)."""
        gone: list[str] = []
        hit: set[str] = set()
        for view in views.values():
            recs = [r for r in view.records() if keep_out(r)]
            if recs:
                view.evict([r.id for r in recs], cause="forget")
                gone.extend(str(r.id) for r in recs)
                hit.update(r.memory_id for r in recs if r.memory_id is not None)
        if hit:
            views[min(views)].retire_if_empty(sorted(hit), "forget")
        return gone, sorted(hit)

    def _forget(self, banks, message, text: str | None) -> list[str]:
        """Threadpool: remove slots written from ``message`` or of memories whose text
        contains ``text``; memories left without slots are deleted (cause: forget)."""
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
