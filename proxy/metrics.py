"""Prometheus metrics of one app, in its own CollectorRegistry (never the process-global one)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from memos import OutboxBacklog, RetrySnapshot

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
NO_TENANT = "-"
_COUNT_BUCKETS = (0, 1, 2, 4, 8, 12, 16, 24, 32, 64)
_TOKEN_BUCKETS = (0, 50, 100, 200, 400, 600, 800, 1200, 2000, 4000)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
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

    def observe_request(self, tenant: str, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(tenant, route, method, str(status)).inc()
        self.latency.labels(tenant, route).observe(seconds)

    def observe_upstream(self, tenant: str, route: str, seconds: float) -> None:
        self.upstream_latency.labels(tenant, route).observe(seconds)

    def upstream_error(self, tenant: str, route: str, kind: str) -> None:
        self.upstream_errors.labels(tenant, route, kind).inc()

    def skipped_memory(self, tenant: str, reason: str) -> None:
        self.memory_skipped.labels(tenant, reason).inc()

    def observe_memory(self, tenant: str, mode: str, *, read: bool, injected: int, block_tokens: int) -> None:
        """One chat's memory: the mode that served it and, when it asked to read, what was injected."""
        self.memory_requests.labels(tenant, mode).inc()
        if read:
            self.memory_injected.labels(tenant).observe(injected)
            self.memory_block_tokens.labels(tenant).observe(block_tokens)

    # -- memos.observe.MemoryObserver -------------------------------------------------------------

    def recalled(self, tenant: str, seconds: float) -> None:
        self.recall_latency.labels(tenant).observe(seconds)

    def query_embedded(self, batch: int, seconds: float) -> None:
        self.query_embedding_latency.observe(seconds)
        self.query_embedding_batch.observe(batch)

    def written_back(self, tenant: str, *, added: int, merged: int, superseded: int) -> None:
        self.written_exchanges.labels(tenant).inc()
        for outcome, n in (("added", added), ("merged", merged), ("superseded", superseded)):
            if n:
                self.written_memories.labels(tenant, outcome).inc(n)

    def write_back_failed(self, tenant: str, error: str) -> None:
        self.writeback_failures.labels(tenant, error).inc()

    def watch_outbox(self, backlog: Callable[[], OutboxBacklog]) -> None:
        """Export the outbox's backlog (rows waiting, oldest age), read at each scrape (a query)."""
        self.registry.register(_OutboxCollector(backlog))

    def watch_write_retry(self, snapshot: Callable[[], RetrySnapshot]) -> None:
        """Export the write-back retry queue (memos.writeback.write_retry) and the storage's write health,
        read
        at each scrape."""
        self.registry.register(_WriteRetryCollector(snapshot))

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
