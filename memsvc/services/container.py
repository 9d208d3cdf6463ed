"""The service container: every long-lived object of one process, built once.

``Services.build(settings)`` runs migrations, opens storage, loads the model and the
embedder, and wires the managers that routers call. ``start``/``stop`` run the
scheduler thread (the app's lifespan calls them).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from memsvc.config import Settings
from memsvc.engine.runtime import ModelRuntime, ModelUnavailable
from memsvc.engine.scheduler import Scheduler
from memsvc.metrics import Metrics
from memsvc.rag.feed import Embedder, PassageFeeder, SnapshotCache
from memsvc.rag.query_adapter import load_adapter
from memsvc.services.admin import AdminManager
from memsvc.services.documents import DocumentManager
from memsvc.services.items import ItemService
from memsvc.services.limits import TenantLimits
from memsvc.services.memories import EmbeddingCache, MemoryService
from memsvc.services.memory import MemoryManager
from memsvc.services.memory_notes import NoteMemory
from memsvc.services.memory_outcome import memory_off_reason
from memsvc.services.reindex import Reindexer, reindex_at_start
from memsvc.services.sessions import SessionManager
from memsvc.services.transcript import TranscriptImporter
from memsvc.services.turns import TurnManager
from memsvc.store import Store

log = logging.getLogger("memsvc.services.container")


def migrate(settings: Settings) -> None:
    """Apply every pending migration to the configured database (``memsvc migrate``)."""
    from storage.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.resolved_database_url())


def _ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_store(settings: Settings, registry: Any = None) -> Store:
    """The storage adapter for the configured database and Redis."""
    from memsvc.store_adapter import StorageStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return StorageStore(
        settings.resolved_database_url(),
        settings.redis_url,
        registry,
        settings.redis_prefix,
        index_dir=_ensure_dir(settings.data_dir / "indexes"),
        state_options=settings.state_options(),
    )


def model_dir(settings: Settings) -> Path:
    """The checkpoint to load; the distilled model is assembled on first start."""
    from memsvc.base_weights import BaseFetchError
    from memsvc.distilled import ensure_model
    from retnet_core.assemble import AssembleError

    try:
        return ensure_model(settings)
    except (AssembleError, BaseFetchError) as exc:
        raise ModelUnavailable(
            f"cannot assemble model {settings.model!r}: {exc} (or serve the small model "
            "shipped whole: MEMSVC_MODEL=tiny)"
        ) from exc


def note_memory(settings: Settings, memory: Any, store: Store, embeddings: Any) -> Any:
    """Text memories read as a note, for a model without memory layers (None otherwise)."""
    if memory is None or memory.enabled or not settings.memory_notes:
        return None
    adapter = load_adapter(settings.memory_query_adapter, dim=embeddings.embedder.dim)
    return NoteMemory(store, embeddings, adapter=adapter)


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    store: Store
    runtime: ModelRuntime
    scheduler: Scheduler
    embedder: Embedder
    snapshots: SnapshotCache
    sessions: SessionManager
    turns: TurnManager
    documents: DocumentManager
    admin: AdminManager
    memory: Any = None
    memories: Any = None
    transcripts: Any = None
    items: Any = None
    limits: Any = None

    @property
    def tenants(self) -> Store:
        """Tenant-key authentication lives in the store."""
        return self.store

    @classmethod
    def build(cls, settings: Settings) -> Services:
        if settings.run_migrations:
            migrate(settings)
        metrics = Metrics()
        store = open_store(settings, metrics.registry)
        runtime = ModelRuntime.load(
            model_dir(settings),
            settings.resolved_device(),
            settings.threads,
            weights=settings.resolved_weights(),
        )
        runtime.state_storage = settings.state_precision
        if settings.threads is None and runtime.device == "cpu":
            torch.set_num_threads(runtime.cpu_threads())
        scheduler = Scheduler(runtime, metrics, settings.max_batch)
        embedder = Embedder(settings.embedder_device)
        snapshots = SnapshotCache(
            settings.snapshot_cache_size, backing=store, max_bytes=settings.snapshot_cache_bytes
        )

        def on_lookup(hit: bool) -> None:
            metrics.snapshot_lookups.labels("hit" if hit else "miss").inc()

        feeder = PassageFeeder(runtime, snapshots, on_lookup)
        documents = DocumentManager(settings, store, embedder, runtime.tokenizer)
        embeddings = EmbeddingCache(embedder)  # memory texts: search, items, chat forget
        memory = (
            MemoryManager(store, runtime, scheduler, embeddings)
            if settings.memory_enabled
            else None
        )
        limits = TenantLimits(settings, store, metrics)
        notes = note_memory(settings, memory, store, embeddings)
        turns = TurnManager(
            settings,
            store,
            runtime,
            scheduler,
            feeder,
            documents,
            memory,
            metrics,
            limits=limits,
            notes=notes,
        )
        return cls(
            settings=settings,
            metrics=metrics,
            store=store,
            runtime=runtime,
            scheduler=scheduler,
            embedder=embedder,
            snapshots=snapshots,
            sessions=SessionManager(settings, store, runtime, scheduler),
            turns=turns,
            documents=documents,
            admin=AdminManager(store, metrics, settings, snapshots),
            memory=memory,
            memories=(memories := MemoryService(store, memory, embeddings, limits, notes)),
            items=ItemService(store, memory, memories.embeddings, limits),
            limits=limits,
            transcripts=TranscriptImporter(
                settings, store, runtime, scheduler, memory, limits, notes
            ),
        )

    def start(self) -> None:
        """Start the scheduler; load the embedder in the background (first RAG turn is fast)."""
        self.scheduler.start()
        if self.settings.rag_enabled:
            threading.Thread(
                target=self._warm_embedder, name="memsvc-embedder", daemon=True
            ).start()

    async def reindex_if_needed(self) -> None:
        """Before serving: memories another model wrote are re-encoded for this one
        (:mod:`memsvc.services.reindex`); with memory off nothing is touched."""
        await reindex_at_start(Reindexer(self.store, self.memory))

    def _warm_embedder(self) -> None:
        try:
            self.embedder.embed(["warm up"])
        except Exception:  # a broken embedder shows up on the first document call instead
            log.exception("embedder warm-up failed")

    def stop(self) -> None:
        self.scheduler.stop()
        self.store.close()

    def readiness(self) -> dict[str, Any]:
        """Database, Redis and model checks for ``/readyz``."""
        checks = self.store.ping()
        checks["model"] = {
            "ok": self.scheduler.alive,
            "fingerprint": self.runtime.fingerprint,
            "device": self.runtime.device,
            "weights": self.runtime.weights,
        }
        notes = self.turns.notes is not None
        off = None if notes else memory_off_reason(self.memory)  # a base model is ready too
        checks["memory"] = {"ok": True, "enabled": off is None}
        if off:
            checks["memory"]["reason"] = off
        else:
            checks["memory"]["mode"] = "notes" if notes else "slots"
        return checks
