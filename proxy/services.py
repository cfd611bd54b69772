"""The Services container: everything a request needs, built once per app (in its lifespan) or per CLI run.

`open_core(settings)` opens what every command and the server share (database, master key, keyring,
API keys, audit); `build_services(settings, metrics)` adds what serving needs (policies, upstreams,
memory, built by memos.builder from `memory_config(settings)`). Both are blocking and build nothing at
import time; every part gets its collaborators through its constructor.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from memos import (
    ApiKeyStore,
    AuditLog,
    Background,
    ChatMemory,
    Database,
    Keyring,
    MasterKey,
    MasterKeySource,
    MasterKeyWatcher,
    MemoryConfig,
    MemoryService,
    MemScheduler,
    NoChatMemory,
    Policy,
    PolicySource,
    PolicyStore,
    build_local_models,
    build_memory,
    connect_master_keys,
    exception_summary,
)
from proxy.auth import AuthFailureAudit, KeyResolver
from proxy.auth_limits import AuthLimiter
from proxy.metrics import Metrics, TenantLabels
from proxy.settings import Settings
from proxy.upstream.completer import UpstreamCompleter, default_target
from proxy.upstream.embeddings import UpstreamEmbeddings
from proxy.upstream.http import HttpUpstream
from proxy.upstream.litellm_adapter import LiteLLMUpstream
from proxy.upstream.local import LocalUpstream
from proxy.upstream.router import UpstreamRouter

if TYPE_CHECKING:
    from memos import MemoryReadiness, OutboxBacklog, WriteRetryQueue

log = logging.getLogger(__name__)


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


@dataclass
class Services:
    """Built once by `build_services`; every field is set there (tests may swap a part for a double)."""

    settings: Settings
    core: Core
    keys: KeyResolver
    policies: PolicySource
    upstreams: UpstreamRouter
    metrics: Metrics
    auth_limits: AuthLimiter  # failed-auth back-off
    auth_audit: AuthFailureAudit | None = None  # its summaries, audited per window
    memory: MemoryService | None = None  # the memory API; None: memory not wired (route tests)
    chat_memory: ChatMemory = field(default_factory=NoChatMemory)
    scheduler: MemScheduler | None = None  # memory modes of local models, tier lifecycle
    write_retry: WriteRetryQueue | None = None  # exchanges waiting for storage
    # For /readyz: the outbox's backlog, and whether this process's write-back worker runs (None: this
    # process runs none; a `memos-proxy worker` elsewhere drains the outbox).
    outbox_backlog: Callable[[], OutboxBacklog] | None = None
    worker_running: Callable[[], bool] | None = None
    # For /readyz: whether the vault, the vectors and the embedder can serve (blocking).
    memory_readiness: Callable[[], MemoryReadiness] | None = None
    # Started in order with the app, stopped in reverse; start()/stop() may be sync or async.
    background: tuple[Background, ...] = ()

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


def memory_config(settings: Settings) -> MemoryConfig:
    """The settings memory is built from (memos reads no settings of its own)."""
    return MemoryConfig(
        data_dir=settings.data_dir,
        vector_uri=settings.resolved_vector_uri,
        embedding_model=settings.embedding_model,
        recall_threads=settings.memory_recall_threads,
        row_cache_rows=settings.memory_row_cache_rows,
        vector_cache_bytes=settings.memory_vector_cache_mb * 1024 * 1024,
        recall_timeout_s=settings.memory_recall_timeout_ms / 1000,
        max_inflight=settings.memory_max_inflight,
        worker_poll_interval_s=settings.worker_poll_interval_s,
        worker_batch_window_s=settings.worker_batch_window_ms / 1000,
        write_retry_capacity=settings.write_retry_capacity,
        write_retry_capacity_bytes=settings.write_retry_capacity_mb * 1024 * 1024,
        local_models=settings.local_models,
        local_device=settings.local_device,
        local_dtype=settings.local_dtype,
        scheduler_interval_s=settings.scheduler_interval_s,
        kv_memory_bytes=settings.local_kv_memory_mb * 1024 * 1024,
        adapter_memory_bytes=settings.local_adapter_memory_mb * 1024 * 1024,
        kv_tenant_disk_bytes=settings.local_kv_disk_mb_per_tenant * 1024 * 1024 or None,
        skip_audit_interval_s=settings.memory_skip_audit_interval_s,
    )


def build_upstreams(settings: Settings, local: LocalUpstream | None = None) -> UpstreamRouter:
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
        local=local,
    )


def tenant_label_key(core: Core) -> bytes:
    """What metric tenant labels are keyed with (`memos-proxy tenants labels` prints them)."""
    return core.master.derive("metrics-tenant-label")


def build_services(
    settings: Settings, metrics: Metrics | None = None, *, role: Literal["server", "worker"] = "server"
) -> Services:
    """Everything serving needs. Blocking; called from the app's lifespan in a worker thread.

    role "worker" (`memos-proxy worker`): the same parts, but the only background jobs are what drains
    the outbox (and what keeps its settings current); the scheduler's pass runs in the server."""
    core = open_core(settings)
    metrics = metrics or Metrics(TenantLabels(settings.metrics_tenant_label))
    # Tenant labels hashed with a key of the deployment (the same in every replica and restart).
    metrics.tenant_label.use_key(tenant_label_key(core))
    policies = PolicyStore(settings.resolved_policy_dir, audit=core.audit)
    config = memory_config(settings)
    # The local runtime is built first: the router serves `local/<name>` models with it, and memory
    # (which calls the upstream for extraction and embeddings) is built over the router.
    local = build_local_models(config)
    upstreams = build_upstreams(settings, LocalUpstream(local) if local is not None else None)
    upstream_key = settings.upstream_api_key.get_secret_value() if settings.upstream_api_key else None
    target = default_target(upstream_key)
    memory = build_memory(
        config,
        db=core.db,
        keyring=core.keyring,
        audit=core.audit,
        policies=policies,
        completer=UpstreamCompleter(upstreams, target),
        embeddings=UpstreamEmbeddings(upstreams, target),
        observer=metrics,
        local=local,
    )
    metrics.watch_write_retry(memory.write_retry.snapshot)
    metrics.watch_outbox(memory.outbox.backlog)
    metrics.watch_local_memory(memory.scheduler.usage)
    auth_limits = AuthLimiter(
        window_s=settings.auth_failure_window_s,
        per_address=settings.auth_failures_per_address,
        per_key=settings.auth_failures_per_key,
        max_entries=settings.auth_limiter_entries,
    )
    background: list[Background] = [policies]  # hot reload
    auth_audit = AuthFailureAudit(auth_limits, core.audit, policies)
    background.append(auth_audit)
    if core.master_keys is not None:
        background.append(MasterKeyWatcher(core.master_keys))  # adopt a rotated master key
    background += memory.jobs
    worker_runs = settings.worker_enabled or role == "worker"
    if worker_runs:
        background.append(memory.worker)
    if role == "server":
        background.append(memory.scheduler)  # its background pass (promotion, training)
    worker = memory.worker
    return Services(
        settings=settings,
        core=core,
        keys=KeyResolver(core.api_keys, settings.key_cache_ttl_s),
        policies=policies,
        upstreams=upstreams,
        metrics=metrics,
        auth_limits=auth_limits,
        auth_audit=auth_audit,
        memory=memory.service,
        chat_memory=memory.chat,
        scheduler=memory.scheduler,
        write_retry=memory.write_retry,
        outbox_backlog=memory.outbox.backlog,
        worker_running=(lambda: worker.running) if worker_runs else None,
        memory_readiness=memory.readiness,
        background=tuple(background),
    )
