"""Prometheus counters for storage.

Each :class:`StorageMetrics` owns its collectors in a registry: the one passed in (the
service passes the registry it exports), or a private one, so that several ``Storage``
objects (tests) never collide on the global default registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class StorageMetrics:
    """Counters storage increments; read them with :meth:`value` (tests) or export
    ``registry`` (service)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.state_reads = Counter(
            "memsvc_storage_state_reads",
            "State loads by the tier that answered",
            ["tier"],
            registry=r,
        )  # tier: redis | lru | sql | miss
        self.state_writes = Counter(
            "memsvc_storage_state_writes", "Acknowledged state writes", registry=r
        )
        self.cache_fallbacks = Counter(
            "memsvc_storage_cache_fallbacks",
            "Redis operations that failed and fell back to the SQL tier",
            ["op"],
            registry=r,
        )
        self.corrupt_blobs = Counter(
            "memsvc_storage_corrupt_blobs",
            "Blobs whose checksum did not match",
            ["tier"],
            registry=r,
        )
        self.conflicts = Counter(
            "memsvc_storage_conflicts",
            "Lost writes: stale versions and held locks",
            ["kind"],
            registry=r,
        )
        self.slot_ops = Counter(
            "memsvc_storage_slot_ops", "Slot operations", ["op"], registry=r
        )  # op: search | fetch | add | update | remove | evict | touch
        self.index_rebuilds = Counter(
            "memsvc_storage_index_rebuilds",
            "Vector indexes rebuilt from SQL",
            ["kind"],
            registry=r,
        )

    def value(self, name: str, **labels: str) -> float:
        """Current value of a counter sample, e.g. ``value("state_reads", tier="sql")``."""
        got = self.registry.get_sample_value(f"memsvc_storage_{name}_total", labels or None)
        return float(got or 0.0)
