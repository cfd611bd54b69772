"""The composition root of memory: every part built once, in dependency order, collaborators passed
through constructors; nothing is changed after it is built.

`open_vault` is what every command that touches memories needs; `build_local_models` the local
models and their runtime (nothing loaded, torch not imported, until a local model is first used);
`build_scheduler` the memory of local models; `build_memory` everything serving needs around them.
The proxy (proxy/services.py) reads its settings into a MemoryConfig and passes in what only it has:
the upstream as a TextCompleter and an EmbeddingsClient, its metrics as the observer.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from memos.chat.memory import RetrieverRecall, VaultChatMemory
from memos.chat.skip_audit import SkippedMemoryAudit
from memos.db import Database
from memos.embeddings import (
    Embedder,
    EmbeddingsClient,
    MicroBatcher,
    TimedEmbedder,
    UpstreamEmbedder,
    background_lane,
    build_embedder,
)
from memos.governance.audit import AuditLog
from memos.governance.group_commit import GroupCommitAudit
from memos.keys.keyring import Keyring
from memos.local.kvcache import KVCacheStore
from memos.local.lora import AdapterStore, LoraTraining
from memos.local.model_registry import LocalModelRegistry
from memos.local.runtime import LocalRuntime
from memos.local.scheduler import MemScheduler, SchedulerConfig
from memos.logsafe import exception_summary
from memos.memories import MemoryService
from memos.observe import MemoryObserver
from memos.pools import MemoryPools
from memos.ports import Background, PolicySource, TextCompleter
from memos.readiness import MemoryReadiness, check_readiness
from memos.recall.retrieval import Retriever
from memos.storage.vault import MemVault
from memos.storage.vectors import VectorIndex
from memos.writeback.operator import MemOperator
from memos.writeback.outbox import Outbox
from memos.writeback.reader import MemReader
from memos.writeback.worker import OutboxWorker, WriteBack
from memos.writeback.write_retry import WriteRetryQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryConfig:
    """What memory is built from (the proxy reads it from its settings, in one place)."""

    data_dir: Path
    vector_uri: str
    embedding_model: str = "minilm"
    recall_threads: int = 4
    row_cache_rows: int = 50_000
    vector_cache_bytes: int = 2048 * 1024 * 1024
    recall_timeout_s: float = 2.0
    max_inflight: int = 256
    worker_poll_interval_s: float = 0.2
    worker_batch_window_s: float = 0.0
    write_retry_capacity: int = 10_000
    write_retry_capacity_bytes: int = 256 * 1024 * 1024
    local_models: Mapping[str, Path] | None = None
    local_device: str = "auto"
    local_dtype: str = "auto"
    scheduler_interval_s: float = 60.0
    # Local memory's bounds: KV caches and adapter weights kept in memory (LRU, bytes; None: unbounded)
    # and each tenant's KV cache files on disk (least recently used removed first; None: unbounded).
    kv_memory_bytes: int | None = 1024 * 1024 * 1024
    kv_tenant_disk_bytes: int | None = None
    adapter_memory_bytes: int | None = 256 * 1024 * 1024
    skip_audit_interval_s: float = 60.0  # how often chats memory skipped are summarised in the audit
    lora: LoraTraining | None = None  # None: memos.local.lora.LoraTraining() defaults


def open_vault(
    config: MemoryConfig, db: Database, keyring: Keyring, embedder: Embedder | None = None
) -> MemVault:
    """The vault alone (blocking, cheap): what the CLI's export, import and training need."""
    return MemVault(
        db,
        keyring,
        VectorIndex(config.vector_uri, cache_bytes=config.vector_cache_bytes),
        embedder,
        row_cache_rows=config.row_cache_rows,
    )


@dataclass(frozen=True)
class LocalModels:
    """The configured local models (loaded lazily, once) and the runtime that serves them."""

    registry: LocalModelRegistry
    runtime: LocalRuntime


def build_local_models(config: MemoryConfig) -> LocalModels | None:
    """None when no local models are configured. Nothing is loaded and torch is not imported here."""
    if not config.local_models:
        return None
    registry = LocalModelRegistry(config.local_models, device=config.local_device, dtype=config.local_dtype)
    return LocalModels(registry, LocalRuntime())


def build_scheduler(
    config: MemoryConfig,
    keyring: Keyring,
    vault: MemVault,
    audit: AuditLog | None,
    local: LocalModels | None,
    observer: MemoryObserver | None = None,
) -> MemScheduler:
    """Always built: besides choosing what is ready for local models, it erases a user's KV caches and
    adapters (which may exist from an earlier configuration)."""
    return MemScheduler(
        vault=vault,
        audit=audit,
        registry=local.registry if local is not None else None,
        runtime=local.runtime if local is not None else None,
        kv_store=KVCacheStore(
            config.data_dir / "kv",
            keyring,
            memory_bytes=config.kv_memory_bytes,
            tenant_disk_bytes=config.kv_tenant_disk_bytes,
        ),
        adapter_store=AdapterStore(
            config.data_dir / "adapters", keyring, memory_bytes=config.adapter_memory_bytes
        ),
        config=SchedulerConfig(interval_s=config.scheduler_interval_s, lora=config.lora),
        observer=observer,
    )


class EmbedderWarmup:
    """A background job: load the embedding model in a thread at start, so the first request is fast."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder

    def start(self) -> None:
        def warm() -> None:
            try:
                self._embedder.embed(["warm up"])
            except Exception as exc:
                log.warning("embedding model warm-up failed: %s", exception_summary(exc))

        if getattr(self._embedder, "name", "") == "minilm":
            threading.Thread(target=warm, name="embedder-warmup", daemon=True).start()

    def stop(self) -> None:
        return None


@dataclass(frozen=True)
class Memory:
    """Everything memory serves with. `jobs` start in order with the process and stop in reverse;
    `worker` is not among them: the caller starts it where this process drains the outbox."""

    vault: MemVault
    embedder: MicroBatcher  # queries, micro-batched; `.sync` is the blocking embedder
    service: MemoryService  # the memory API
    chat: VaultChatMemory  # around every chat call
    outbox: Outbox
    worker: OutboxWorker
    write_retry: WriteRetryQueue
    scheduler: MemScheduler
    jobs: tuple[Background, ...]

    def readiness(self) -> MemoryReadiness:
        """Blocking: whether the vault, the vectors and the embedder can serve now (memos.readiness)."""
        return check_readiness(self.vault.db, self.vault.vectors, self.embedder.sync)


def build_memory(
    config: MemoryConfig,
    *,
    db: Database,
    keyring: Keyring,
    audit: AuditLog,
    policies: PolicySource,
    completer: TextCompleter,
    embeddings: EmbeddingsClient,
    observer: MemoryObserver,
    local: LocalModels | None = None,
) -> Memory:
    """Blocking, cheap: nothing is loaded until first used (the embedder warms up once started)."""
    embedder = build_embedder(config.embedding_model, embeddings)
    pools = MemoryPools.create(recall_threads=config.recall_threads)
    # Queries (the batcher) and the vault's own embeddings (write-back, patches, imports) on separate
    # lanes: a query never waits for a write-back's forward pass.
    vault = MemVault(
        db,
        keyring,
        VectorIndex(config.vector_uri, cache_bytes=config.vector_cache_bytes),
        TimedEmbedder(background_lane(embedder), observer.memories_embedded),
        row_cache_rows=config.row_cache_rows,
    )
    batcher = MicroBatcher(embedder, executor=pools.query_embedding, observer=observer)
    retriever = Retriever(vault, executor=pools.recall)
    scheduler = build_scheduler(config, keyring, vault, audit, local, observer)
    # Write-back: the outbox, drained by the worker through reader -> operator -> vault; the memory
    # API's `infer: true` shares the reader and operator (so it uses the tenant's extractor model too).
    reader = MemReader(completer)
    operator = MemOperator(vault, completer, cached_vector=batcher.cached)
    outbox = Outbox(db, keyring)
    worker = OutboxWorker(
        outbox,
        process_group=WriteBack(reader, operator, policies, audit, observer=observer).process_group,
        poll_interval_s=config.worker_poll_interval_s,
        batch_window_s=config.worker_batch_window_s,
        recover_claims=db.is_sqlite,  # SQLite: one worker per data dir; what is claimed is dead
        on_erased=vault.erase_user,  # a row's user was erased mid-write: erase what it wrote
    )
    # Fail-open exchanges whose outbox commit failed wait in memory and are committed when storage
    # takes writes again.
    write_retry = WriteRetryQueue(
        outbox,
        db.health,
        capacity=config.write_retry_capacity,
        capacity_bytes=config.write_retry_capacity_bytes,
        probe=db.probe_write,
        on_written=worker.notify,
    )
    service = MemoryService(
        vault,
        retriever,
        batcher,
        audit,
        reader=reader,
        operator=operator,
        # In this order: exchanges waiting for storage and outbox rows in flight are marked erased
        # before the vault forgets (a worker holding one erases its own writes again), then the
        # user's KV caches and adapters.
        erasers=(write_retry, outbox, vault, scheduler),
    )
    injection_audit = GroupCommitAudit(audit, executor=pools.audit)
    skips = SkippedMemoryAudit(audit, interval_s=config.skip_audit_interval_s)
    chat = VaultChatMemory(
        recall=RetrieverRecall(retriever, batcher.embed_one, neighbours=service.neighbours),
        outbox=outbox,
        audit=injection_audit,
        local=scheduler,
        on_enqueued=worker.notify,
        write_retry=write_retry,
        recall_timeout_s=config.recall_timeout_s,
        max_inflight=config.max_inflight,
        observer=observer,
        skips=skips,
    )
    jobs: list[Background] = [pools, EmbedderWarmup(embedder)]  # pools stop last: what uses them first
    if isinstance(embedder, UpstreamEmbedder):  # started on the serving loop: bound to it, dimension probed
        jobs.append(embedder)
    jobs += [write_retry, injection_audit, skips]  # the audit stops before the pools: queued entries commit
    return Memory(
        vault=vault,
        embedder=batcher,
        service=service,
        chat=chat,
        outbox=outbox,
        worker=worker,
        write_retry=write_retry,
        scheduler=scheduler,
        jobs=tuple(jobs),
    )
