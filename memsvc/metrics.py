"""Prometheus metrics of one service instance (its own registry, so tests can build many).

Names follow Prometheus conventions (``_seconds``, ``_total``). ``GET /metrics`` renders
:meth:`Metrics.render`.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    """Every metric the service exports, registered on a private registry.

    Storage registers its own counters (state loads by tier, Redis fallbacks, slot
    reads/writes/evictions) on the same registry, so ``/metrics`` shows both.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "memsvc_request_latency_seconds",
            "HTTP request latency by route and status",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "memsvc_time_to_first_token_seconds",
            "time from accepting a turn to its first generated token",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "memsvc_tokens_total",
            "tokens by direction (in, out, cached)",
            ["direction"],
            registry=r,
        )
        self.snapshot_lookups = Counter(
            "memsvc_snapshot_lookups_total", "RAG snapshot cache lookups", ["result"], registry=r
        )
        self.batch_size = Histogram(
            "memsvc_decode_batch_size",
            "sessions decoded together in one step",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.active_sessions = Gauge(
            "memsvc_active_decodes", "turns currently decoding", registry=r
        )
        self.turns = Counter("memsvc_turns_total", "turns by outcome", ["outcome"], registry=r)
        self.note_checks = Counter(
            "memsvc_note_lines_checked_total",
            "memory-note lines run alone before their turn, by result (kept, left_out)",
            ["result"],
            registry=r,
        )
        self._tenant_metrics(r)

    def _tenant_metrics(self, r: CollectorRegistry) -> None:
        """Per-tenant series (one label value per tenant: bounded by the tenant count).

        Counters count what this process did since it started (Prometheus sums them over
        replicas); the gauges are set from the database whenever a tenant's usage is read
        (``GET /admin/tenants/{id}/usage``), the durable source of every figure.
        """
        self.tenant_tokens = Counter(
            "memsvc_tenant_tokens_total",
            "tokens of committed turns by tenant and direction (in, out)",
            ["tenant", "direction"],
            registry=r,
        )
        self.tenant_turns = Counter(
            "memsvc_tenant_turns_total", "committed turns by tenant", ["tenant"], registry=r
        )
        self.tenant_limited = Counter(
            "memsvc_tenant_rate_limited_total",
            "requests refused with 429 by tenant and limit",
            ["tenant", "limit"],
            registry=r,
        )
        self.tenant_memories = Gauge(
            "memsvc_tenant_memories", "live memories of a tenant", ["tenant"], registry=r
        )
        self.tenant_stored_bytes = Gauge(
            "memsvc_tenant_stored_bytes",
            "approximate bytes a tenant stores",
            ["tenant"],
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (0 when absent); handy for stats and tests."""
        got = self.registry.get_sample_value(name, labels or None)
        return float(got) if got is not None else 0.0
