"""Prometheus metrics of one app, in its own CollectorRegistry (never the process-global one).

Tenants appear in labels as `TenantLabels` says (MEMOS_METRICS_TENANT_LABEL): an opaque id by
default (`t_` and a keyed hash of the name, the same in every process of a deployment), the name, or
nothing (`off`: an empty value). Every metric is listed, with what moves it, in the README.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from memos import LocalMemoryUsage, OutboxBacklog, RetrySnapshot

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
NO_TENANT = "-"
_COUNT_BUCKETS = (0, 1, 2, 4, 8, 12, 16, 24, 32, 64)
_TOKEN_BUCKETS = (0, 50, 100, 200, 400, 600, 800, 1200, 2000, 4000)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
_MAX_LABELS = 10_000

TenantLabelMode = Literal["name", "hash", "off"]


class TenantLabels:
    """A tenant as metric labels show it. `hash`: `t_` and 16 hex digits of an HMAC of the name, keyed
    by `use_key` (the server keys it from the master key, so every replica and restart of a deployment
    labels a tenant alike; until then a random key of this process); `name`: the name; `off`: the
    empty value (Prometheus reads it as no label). Requests of no tenant keep NO_TENANT."""

    def __init__(self, mode: TenantLabelMode = "hash") -> None:
        self.mode = mode
        self._key = os.urandom(32)
        self._labels: dict[str, str] = {}

    def use_key(self, key: bytes) -> None:
        self._key = key
        self._labels = {}

    def __call__(self, tenant: str) -> str:
        if self.mode == "name" or tenant == NO_TENANT:
            return tenant
        if self.mode == "off":
            return ""
        label = self._labels.get(tenant)
        if label is None:
            digest = hmac.new(self._key, tenant.encode("utf-8"), hashlib.sha256).hexdigest()
            label = f"t_{digest[:16]}"
            if len(self._labels) >= _MAX_LABELS:
                self._labels = {}
            self._labels[tenant] = label
        return label


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, tenant_labels: TenantLabels | None = None) -> None:
        self.tenant_label = tenant_labels or TenantLabels()
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "memos_http_requests",
            "HTTP requests answered, by tenant, route and status.",
            ["tenant", "route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "memos_http_request_duration_seconds",
            "Time from request to the last byte of the answer, by tenant and route.",
            ["tenant", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_latency = Histogram(
            "memos_upstream_duration_seconds",
            "Time until the upstream answered (first event for streams), by tenant and route.",
            ["tenant", "route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "memos_upstream_errors",
            "Failed upstream calls, by tenant, route and kind (HTTP status, unreachable, timeout).",
            ["tenant", "route", "kind"],
            registry=self.registry,
        )

        self.memory_skipped = Counter(
            "memos_memory_skipped",
            "Chats that asked for memory and were answered without it (or not in the mode asked), by "
            "tenant and reason (x-memos-memory-reason: overloaded, vault_unavailable, ...).",
            ["tenant", "reason"],
            registry=self.registry,
        )

        self.memory_requests = Counter(
            "memos_memory_requests",
            "Chats by tenant and the memory mode that served them (x-memos-memory-mode).",
            ["tenant", "mode"],
            registry=self.registry,
        )
        self.memory_injected = Histogram(
            "memos_memory_injected",
            "Memories injected into one chat, by tenant (chats that asked to read memory).",
            ["tenant"],
            buckets=_COUNT_BUCKETS,
            registry=self.registry,
        )
        self.memory_block_tokens = Histogram(
            "memos_memory_block_tokens",
            "Estimated tokens of the injected plaintext block, by tenant.",
            ["tenant"],
            buckets=_TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.recall_latency = Histogram(
            "memos_recall_duration_seconds",
            "Time a chat's retrieval took (query embedding, keyword and dense search, ranking), by tenant.",
            ["tenant"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.query_embedding_latency = Histogram(
            "memos_query_embedding_duration_seconds",
            "Time of one forward pass of query embeddings (one batch).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.query_embedding_batch = Histogram(
            "memos_query_embedding_batch_size",
            "Queries embedded together in one forward pass.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.memory_embedding_latency = Histogram(
            "memos_memory_embedding_duration_seconds",
            "Time of one call embedding memory texts for storage (write-back, patches, imports).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.memory_embedding_batch = Histogram(
            "memos_memory_embedding_batch_size",
            "Memory texts embedded together in one call for storage.",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.written_memories = Counter(
            "memos_writeback_memories",
            "Memories written back from chats, by tenant and outcome (added, merged, superseded).",
            ["tenant", "outcome"],
            registry=self.registry,
        )
        self.written_exchanges = Counter(
            "memos_writeback_exchanges",
            "Exchanges written back, by tenant.",
            ["tenant"],
            registry=self.registry,
        )
        self.writeback_failures = Counter(
            "memos_writeback_failures",
            "Write-back attempts that failed and will be retried, by tenant and error class.",
            ["tenant", "error"],
            registry=self.registry,
        )
        self.kv_cache_lookups = Counter(
            "memos_kv_cache_lookups",
            "Activation-mode chats by tenant and result: hit (the stored KV cache of the memory block "
            "served) or built (missing or stale, prefilled for this chat).",
            ["tenant", "result"],
            registry=self.registry,
        )
        self.adapter_lookups = Counter(
            "memos_adapter_lookups",
            "Parametric-mode chats by tenant and result: hit (the user's current LoRA adapter served) "
            "or miss (no adapter that still matches the user's memories).",
            ["tenant", "result"],
            registry=self.registry,
        )
        self.mcp_tool_calls = Counter(
            "memos_mcp_tool_calls",
            "MCP tool calls (/mcp) by tenant, tool and outcome (ok, or the error code the REST twin "
            "would answer: not_found, permission_denied, invalid_value, ...).",
            ["tenant", "tool", "outcome"],
            registry=self.registry,
        )

    def observe_request(self, tenant: str, route: str, method: str, status: int, seconds: float) -> None:
        label = self.tenant_label(tenant)
        self.requests.labels(label, route, method, str(status)).inc()
        self.latency.labels(label, route).observe(seconds)

    def observe_upstream(self, tenant: str, route: str, seconds: float) -> None:
        self.upstream_latency.labels(self.tenant_label(tenant), route).observe(seconds)

    def upstream_error(self, tenant: str, route: str, kind: str) -> None:
        self.upstream_errors.labels(self.tenant_label(tenant), route, kind).inc()

    def skipped_memory(self, tenant: str, reason: str) -> None:
        self.memory_skipped.labels(self.tenant_label(tenant), reason).inc()

    def observe_memory(self, tenant: str, mode: str, *, read: bool, injected: int, block_tokens: int) -> None:
        """One chat's memory: the mode that served it and, when it asked to read, what was injected."""
        label = self.tenant_label(tenant)
        self.memory_requests.labels(label, mode).inc()
        if read:
            self.memory_injected.labels(label).observe(injected)
            self.memory_block_tokens.labels(label).observe(block_tokens)

    def mcp_tool_called(self, tenant: str, tool: str, outcome: str) -> None:
        self.mcp_tool_calls.labels(self.tenant_label(tenant), tool, outcome).inc()

    # -- memos.observe.MemoryObserver -------------------------------------------------------------

    def recalled(self, tenant: str, seconds: float) -> None:
        self.recall_latency.labels(self.tenant_label(tenant)).observe(seconds)

    def query_embedded(self, batch: int, seconds: float) -> None:
        self.query_embedding_latency.observe(seconds)
        self.query_embedding_batch.observe(batch)

    def memories_embedded(self, batch: int, seconds: float) -> None:
        self.memory_embedding_latency.observe(seconds)
        self.memory_embedding_batch.observe(batch)

    def written_back(self, tenant: str, *, added: int, merged: int, superseded: int) -> None:
        label = self.tenant_label(tenant)
        self.written_exchanges.labels(label).inc()
        for outcome, n in (("added", added), ("merged", merged), ("superseded", superseded)):
            if n:
                self.written_memories.labels(label, outcome).inc(n)

    def write_back_failed(self, tenant: str, error: str) -> None:
        self.writeback_failures.labels(self.tenant_label(tenant), error).inc()

    def kv_cache_used(self, tenant: str, *, hit: bool) -> None:
        self.kv_cache_lookups.labels(self.tenant_label(tenant), "hit" if hit else "built").inc()

    def adapter_used(self, tenant: str, *, hit: bool) -> None:
        self.adapter_lookups.labels(self.tenant_label(tenant), "hit" if hit else "miss").inc()

    def watch_outbox(self, backlog: Callable[[], OutboxBacklog]) -> None:
        """Export the outbox's backlog (rows waiting, oldest age), read at each scrape (a query)."""
        self.registry.register(_OutboxCollector(backlog))

    def watch_write_retry(self, snapshot: Callable[[], RetrySnapshot]) -> None:
        """Export the write-back retry queue (memos.writeback.write_retry) and the storage's write health,
        read
        at each scrape."""
        self.registry.register(_WriteRetryCollector(snapshot))

    def watch_local_memory(self, usage: Callable[[], LocalMemoryUsage]) -> None:
        """Export what local memory (KV caches, adapters) holds in memory against its bounds."""
        self.registry.register(_LocalMemoryCollector(usage, self.tenant_label))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _OutboxCollector(Collector):
    def __init__(self, backlog: Callable[[], OutboxBacklog]) -> None:
        self._backlog = backlog

    def describe(self) -> list[Metric]:
        return []  # collected on demand only

    def collect(self) -> Iterator[Metric]:
        try:
            backlog = self._backlog()
        except SQLAlchemyError:  # the database is unreachable: say so, and keep the other metrics
            yield GaugeMetricFamily(
                "memos_outbox_readable", "1 when the outbox's backlog could be read, else 0.", value=0
            )
            return
        yield GaugeMetricFamily(
            "memos_outbox_readable", "1 when the outbox's backlog could be read, else 0.", value=1
        )
        yield GaugeMetricFamily(
            "memos_outbox_pending",
            "Acknowledged exchanges in the outbox, not yet written back (claimed ones included).",
            value=backlog.pending,
        )
        yield GaugeMetricFamily(
            "memos_outbox_oldest_age_seconds",
            "How long the oldest exchange in the outbox has waited (0 when it is empty).",
            value=backlog.oldest_age_s,
        )


class _LocalMemoryCollector(Collector):
    def __init__(self, usage: Callable[[], LocalMemoryUsage], tenant_label: Callable[[str], str]) -> None:
        self._usage = usage
        self._tenant_label = tenant_label

    def describe(self) -> list[Metric]:
        return []  # collected on demand only

    def collect(self) -> Iterator[Metric]:
        u = self._usage()
        yield GaugeMetricFamily(
            "memos_local_kv_cache_memory_bytes",
            "Bytes of activation-memory KV caches held in memory now (local models).",
            value=u.kv_memory_bytes,
        )
        yield GaugeMetricFamily(
            "memos_local_adapter_memory_bytes",
            "Bytes of decrypted LoRA adapter weights held in memory now (local models).",
            value=u.adapter_memory_bytes,
        )
        limits = GaugeMetricFamily(
            "memos_local_memory_limit_bytes",
            "The byte bound each in-memory local store is held under (absent: unbounded).",
            labels=["store"],
        )
        disk = GaugeMetricFamily(
            "memos_local_kv_cache_disk_bytes",
            "Bytes of a tenant's KV cache files on disk, as of this process's last save or erasure of them.",
            labels=["tenant"],
        )
        for tenant, used in sorted(u.kv_disk_bytes.items()):
            disk.add_metric([self._tenant_label(tenant)], used)
        yield disk
        bounds = (
            ("kv_cache", u.kv_memory_limit_bytes),
            ("adapter", u.adapter_memory_limit_bytes),
            ("kv_cache_disk_per_tenant", u.kv_disk_limit_bytes),
        )
        for store, limit in bounds:
            if limit is not None:
                limits.add_metric([store], limit)
        yield limits


class _WriteRetryCollector(Collector):
    def __init__(self, snapshot: Callable[[], RetrySnapshot]) -> None:
        self._snapshot = snapshot

    def describe(self) -> list[Metric]:
        return []  # collected on demand only (the registry must not call snapshot at registration)

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        yield GaugeMetricFamily(
            "memos_write_retry_waiting",
            "Acknowledged exchanges whose outbox commit failed, waiting in memory for storage.",
            value=snap.waiting,
        )
        yield GaugeMetricFamily(
            "memos_write_retry_capacity",
            "How many exchanges the retry queue holds at most.",
            value=snap.capacity,
        )
        yield GaugeMetricFamily(
            "memos_write_retry_oldest_age_seconds",
            "How long the oldest waiting exchange has waited (0 when none waits).",
            value=snap.oldest_age_s,
        )
        yield CounterMetricFamily(
            "memos_write_retry_written",
            "Exchanges that waited in the retry queue and were then committed to the outbox.",
            value=snap.written,
        )
        yield CounterMetricFamily(
            "memos_write_retry_lost",
            "Acknowledged exchanges lost: the retry queue was full, or the row was refused repeatedly.",
            value=snap.lost,
        )
        yield GaugeMetricFamily(
            "memos_storage_writes_failing",
            "1 while storage is known to fail (the last write failed on it, or exchanges wait), else 0.",
            value=1 if snap.storage_failing else 0,
        )
