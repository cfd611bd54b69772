"""The Services container: everything a request needs, built once per app (in its lifespan) or per CLI run.

`open_core(settings)` opens what every command and the server share (database, master key, keyring,
API keys, audit); `build_services(settings, metrics)` adds what serving needs (policies, upstreams,
memory). Both are blocking and build nothing at import time. Wiring of later parts goes in the marked
places below, one small block each.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from memos.chat.contract import ChatMemory, NoChatMemory
from memos.governance.apikeys import ApiKeyStore
from memos.governance.audit import AuditLog
from memos.governance.masterkeys import MasterKeySource, MasterKeyWatcher
from memos.governance.masterkeys import connect as connect_master_keys
from memos.governance.policy import Policy
from memos.governance.policy_store import PolicyStore
from memos.keys.crypto import MasterKey
from memos.keys.keyring import Keyring
from memos.logsafe import exception_summary
from memos.storage.db import Database
from proxy.auth import AuthFailureAudit, KeyResolver
from proxy.auth_limits import AuthLimiter
from proxy.metrics import Metrics
from proxy.settings import Settings
from proxy.upstream.http import HttpUpstream
from proxy.upstream.litellm_adapter import LiteLLMUpstream
from proxy.upstream.router import UpstreamRouter

if TYPE_CHECKING:
    from memos.writeback.outbox import OutboxBacklog

log = logging.getLogger(__name__)


class PolicyProvider(Protocol):
    def get(self, tenant: str) -> Policy: ...


class DefaultPolicies:
    """Every tenant gets `Policy()` (used when no policy store is configured)."""

    def __init__(self, policies: dict[str, Policy] | None = None) -> None:
        self.policies = dict(policies or {})

    def get(self, tenant: str) -> Policy:
        return self.policies.get(tenant) or Policy()


@dataclass
class Core:
    """What the CLI and the server share: storage, keys, audit."""

    settings: Settings
    db: Database
    master: MasterKey
    keyring: Keyring
    api_keys: ApiKeyStore
    audit: AuditLog
    master_keys: MasterKeySource | None = None  # re-read on rotation (keys rotate-master)

    def close(self) -> None:
        self.db.dispose()


def load_master_keys(settings: Settings) -> MasterKeySource:
    """MEMOS_MASTER_KEY (`NEW[,OLD...]`) or the key file; see memos.governance.masterkeys (rotation)."""
    env = settings.master_key.get_secret_value() if settings.master_key is not None else None
    return MasterKeySource.from_settings(env, settings.data_dir)


def load_master_key(settings: Settings) -> MasterKey:
    return load_master_keys(settings).current().active


def open_core(settings: Settings) -> Core:
    """Open the database (creating tables), the master keys and the stores. Blocking."""
    db = Database(settings.resolved_database_url)
    db.create_all()
    source = load_master_keys(settings)
    keys = source.current()
    # revalidate_s: a tenant deleted by another process (key destroyed) stops being readable here soon.
    keyring = Keyring(db, keys.active, keys.previous, refresh=source.refresh, revalidate_s=5.0)
    audit = AuditLog.from_master(db, keys.active, keys.previous)
    connect_master_keys(source, keyring, audit)
    return Core(
        settings=settings,
        db=db,
        master=keys.active,
        keyring=keyring,
        api_keys=ApiKeyStore(db),
        audit=audit,
        master_keys=source,
    )


class Background(Protocol):
    """A background job started and stopped with the app (outbox worker, scheduler, policy reload)."""

    def start(self) -> Any: ...

    def stop(self) -> Any: ...


@dataclass
class Services:
    settings: Settings
    core: Core
    keys: KeyResolver
    policies: PolicyProvider
    upstreams: UpstreamRouter
    metrics: Metrics
    memory: Any = None  # memos.memories.MemoryService (memory API); None until wired
    chat_memory: ChatMemory = field(default_factory=NoChatMemory)
    scheduler: Any = None  # memos.local.scheduler.MemScheduler (memory modes, tier lifecycle)
    write_retry: Any = None  # memos.writeback.write_retry.WriteRetryQueue (exchanges waiting for storage)
    # For /readyz: the outbox's backlog, and whether this process's write-back worker runs (None: this
    # process runs none; a `memos-proxy worker` elsewhere drains the outbox).
    outbox_backlog: Callable[[], OutboxBacklog] | None = None
    worker_running: Callable[[], bool] | None = None
    auth_limits: AuthLimiter = field(default_factory=AuthLimiter)  # failed-auth back-off
    auth_audit: AuthFailureAudit | None = None
    # Started in order with the app, stopped in reverse; start()/stop() may be sync or async.
    background: list[Background] = field(default_factory=list)

    @property
    def db(self) -> Database:
        return self.core.db

    @property
    def keyring(self) -> Keyring:
        return self.core.keyring

    @property
    def api_keys(self) -> ApiKeyStore:
        return self.core.api_keys

    @property
    def audit(self) -> AuditLog:
        return self.core.audit

    async def start(self) -> None:
        for job in self.background:
            await _maybe_await(job.start())

    async def stop(self) -> None:
        for job in reversed(self.background):
            try:
                await _maybe_await(job.stop())
            except Exception as exc:
                log.error("stopping %s failed: %s", type(job).__name__, exception_summary(exc))
        await self.upstreams.aclose()
        self.core.close()


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


def build_upstreams(settings: Settings) -> UpstreamRouter:
    http = HttpUpstream(
        settings.upstream_base_url,
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_read_timeout_s,
        max_connections=settings.upstream_max_connections,
        keepalive_s=settings.upstream_keepalive_s,
    )
    return UpstreamRouter(
        http,
        litellm=LiteLLMUpstream(timeout_s=settings.upstream_read_timeout_s),
        litellm_prefixes=settings.litellm_model_prefixes,
    )


def build_services(
    settings: Settings, metrics: Metrics | None = None, *, role: Literal["server", "worker"] = "server"
) -> Services:
    """Everything serving needs. Blocking; called from the app's lifespan in a worker thread.

    role "worker" (`memos-proxy worker`): the same parts, but the only background jobs are what drains
    the outbox (and what keeps its settings current); the scheduler's pass runs in the server."""
    core = open_core(settings)
    services = Services(
        settings=settings,
        core=core,
        keys=KeyResolver(core.api_keys, settings.key_cache_ttl_s),
        policies=(policies := PolicyStore(settings.resolved_policy_dir, audit=core.audit)),
        upstreams=build_upstreams(settings),
        metrics=metrics or Metrics(),
        auth_limits=AuthLimiter(
            window_s=settings.auth_failure_window_s,
            per_address=settings.auth_failures_per_address,
            per_key=settings.auth_failures_per_key,
            max_entries=settings.auth_limiter_entries,
        ),
    )
    services.background.append(policies)  # hot reload
    services.auth_audit = AuthFailureAudit(services)  # auth failures, audited per window
    services.background.append(services.auth_audit)
    if core.master_keys is not None:
        services.background.append(MasterKeyWatcher(core.master_keys))  # adopt a rotated master key
    # -- memory: the vault, retrieval and the memory API (services.memory.vault / .retriever /
    #    .embedder, a MicroBatcher whose .sync is the blocking embedder)
    from memos.embeddings import UpstreamEmbedder, build_embedder
    from memos.memories import EmbedderWarmup, build_memory_service
    from proxy.upstream.completer import default_target
    from proxy.upstream.embeddings import UpstreamEmbeddings

    upstream_key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
    embedder = build_embedder(
        settings.embedding_model, UpstreamEmbeddings(services.upstreams, default_target(upstream_key))
    )
    from memos.pools import MemoryPools

    pools = MemoryPools.create(recall_threads=settings.memory_recall_threads)
    services.background.append(pools)  # stopped after what uses them (background stops in reverse)
    services.memory = build_memory_service(
        core.db,
        core.keyring,
        core.audit,
        vector_uri=settings.resolved_vector_uri,
        embedder=embedder,
        pools=pools,
        row_cache_rows=settings.memory_row_cache_rows,
        observer=services.metrics,
    )
    services.background.append(EmbedderWarmup(embedder))
    if isinstance(embedder, UpstreamEmbedder):  # started on the serving loop: bound to it, dimension probed
        services.background.append(embedder)
    # -- write-back and injection: the outbox, its worker (reader -> operator -> vault), the chat
    #    memory around every chat call; the memory API's `infer: true` shares the reader and operator.
    from memos.chat.memory import RetrieverRecall, VaultChatMemory
    from memos.writeback.operator import MemOperator
    from memos.writeback.outbox import Outbox
    from memos.writeback.reader import MemReader
    from memos.writeback.worker import OutboxWorker, WriteBack
    from proxy.upstream.completer import UpstreamCompleter

    memory = services.memory
    # Policies read through `services.policies` at call time (tests and reloads may replace the store).
    live_policies = SimpleNamespace(get=lambda tenant: services.policies.get(tenant))
    completer = UpstreamCompleter(services.upstreams, default_target(upstream_key))
    reader = MemReader(completer)
    operator = MemOperator(memory.vault, completer, cached_vector=memory.embedder.cached)
    memory.use_reader(reader, operator)
    outbox = Outbox(core.db, core.keyring)
    memory.register_eraser(outbox, first=True)  # before the vault: rows in flight are marked erased
    worker = OutboxWorker(
        outbox,
        process_group=WriteBack(
            reader, operator, live_policies, core.audit, observer=services.metrics
        ).process_group,
        poll_interval_s=settings.worker_poll_interval_s,
        batch_window_s=settings.worker_batch_window_ms / 1000,
        recover_claims=core.db.is_sqlite,  # SQLite: one worker per data dir; what is claimed is dead
        on_erased=memory.vault.erase_user,  # a row's user was erased mid-write: erase what it wrote
    )
    # Fail-open exchanges whose outbox commit failed wait in memory and are committed when storage
    # takes writes again (before the outbox's eraser: erasure forgets them too).
    from memos.writeback.write_retry import WriteRetryQueue

    write_retry = WriteRetryQueue(
        outbox,
        core.db.health,
        capacity=settings.write_retry_capacity,
        capacity_bytes=settings.write_retry_capacity_mb * 1024 * 1024,
        probe=core.db.probe_write,
        on_written=worker.notify,
    )
    services.write_retry = write_retry
    memory.register_eraser(write_retry, first=True)
    services.metrics.watch_write_retry(write_retry.snapshot)
    services.background.append(write_retry)
    from memos.governance.group_commit import GroupCommitAudit

    injection_audit = GroupCommitAudit(core.audit, executor=pools.audit)
    services.background.append(injection_audit)  # stopped before the pools: queued entries commit
    # -- local runtime and MemScheduler: `local/<name>` models (nothing loaded until first used),
    #    activation/parametric memory chosen per request by the scheduler, its background pass, and
    #    the erasure of a user's KV caches and adapters.
    from proxy.upstream.local import build_local_memory

    scheduler, local = build_local_memory(settings, core.keyring, memory.vault, core.audit)
    services.scheduler = scheduler
    memory.register_eraser(scheduler)
    services.chat_memory = VaultChatMemory(
        recall=RetrieverRecall(memory.retriever, memory.embedder.embed_one, neighbours=memory.neighbours),
        outbox=outbox,
        audit=injection_audit,
        local=scheduler,
        on_enqueued=worker.notify,
        write_retry=write_retry,
        recall_timeout_s=settings.memory_recall_timeout_ms / 1000,
        max_inflight=settings.memory_max_inflight,
        observer=services.metrics,
    )
    services.metrics.watch_outbox(outbox.backlog)
    services.outbox_backlog = outbox.backlog
    if settings.worker_enabled or role == "worker":
        services.background.append(worker)
        services.worker_running = lambda: worker.running
    if local is not None:
        services.upstreams.local = local
    if role == "server":
        services.background.append(scheduler)
    return services
