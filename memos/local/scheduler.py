"""MemScheduler: which memory mode serves each request, and the lifecycle of memories between tiers.

Per request (`readiness`, `memory_for`): what of a user's local memory is ready (the activation block
and its KV cache, the LoRA adapter), and the runtime's inputs for the mode the planner chose from it
(memos.chat.planner.choose_mode decides, from the requested mode and the policy's allowed modes).

- plaintext: retrieved memories as one system block (remote and local models alike);
- activation (local models): the user's activation block - the memories promoted into it, or while
  none are, the user's memories that best fill the block budget (most important, then most recent) -
  held as a KV cache; the request's tokens are the block followed by the conversation. The first
  request that asks for activation prefills the block once: that prefill is the cache, stored and
  reused (extended from its common prefix when the block changed). `auto` serves activation only from
  promoted memories whose cache is built; a model whose layers a key/value cache cannot hold exactly
  (memos.local.kvcache.cache_unsupported) is never served activation;
- parametric (local models): the conversation alone, through the user's LoRA adapter;
- off: nothing injected.

In the background (`tick`), for the users seen recently: hot, stable memories are promoted into the
activation block (kind plaintext -> activation), cold ones demoted, expired ones archived - each a new
version in the vault, each audited (`memory.promote` / `memory.demote` / `memory.archive`); KV caches are
rebuilt (or extended, reusing the common token prefix) when the block changed; a LoRA adapter is trained
when a user's stable memories pass a threshold or grew since the last one.

A KV cache or adapter is only used while it matches the vault: the cache must hold exactly the ids of
the block rendered now, and every memory an adapter was trained on must still be active. Erasing a user
deletes both (`erase_user`, registered as a UserDataEraser).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from memos.clock import aware
from memos.errors import MemosError
from memos.item import Kind, MemoryItem, State
from memos.local.kvcache import BASE_ADAPTER, KVKey, cache_unsupported, prefill
from memos.local.lora import LoraTraining, train_on_served, unload_adapters
from memos.local.runtime import LocalMemory, block_ids
from memos.logsafe import exception_summary
from memos.modes import MemoryMode
from memos.observe import MemoryObserver, NoObserver
from memos.ports import AuditSink
from memos.recall import injection

if TYPE_CHECKING:
    from memos.local.kvcache import KVBlock, KVCacheStore
    from memos.local.lora import AdapterHandle, AdapterMeta, AdapterStore, LoraTraining
    from memos.local.model_registry import LoadedModel, LocalModelRegistry
    from memos.local.runtime import LocalMemory, LocalRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalMemoryUsage:
    """Bytes of KV caches and decrypted adapters held in memory, and their bounds (None: unbounded)."""

    kv_memory_bytes: int
    kv_memory_limit_bytes: int | None
    adapter_memory_bytes: int
    adapter_memory_limit_bytes: int | None
    kv_disk_bytes: Mapping[str, int] = field(default_factory=dict)  # tenant -> cache files on disk
    kv_disk_limit_bytes: int | None = None  # the per-tenant quota


class VaultLike(Protocol):
    """What the scheduler needs of memos.storage.vault.MemVault."""

    def list(
        self, tenant: str, owner: str, limit: int = ..., cursor: str | None = ...
    ) -> tuple[list[MemoryItem], str | None]: ...

    def update(
        self,
        tenant: str,
        memory_id: str,
        *,
        state: State | str | None = ...,
        kind: Kind | str | None = ...,
        reason: str = ...,
    ) -> MemoryItem: ...

    def record_hit_counts(
        self, tenant: str, counts: Mapping[str, int], when: datetime | None = None
    ) -> None: ...


@dataclass(frozen=True)
class SchedulerConfig:
    # Activation block: at most this many tokens (estimated) of the user's hottest promoted memories.
    block_token_budget: int = 2048
    # Promotion: an active plaintext memory retrieved at least this often, at least this old, and
    # retrieved within the demotion window (so a demoted memory is not promoted straight back).
    promote_min_hits: int = 3
    stable_min_age_s: float = 3600.0
    # Demotion: an activation memory not retrieved for this long goes back to plaintext.
    demote_idle_s: float = 14 * 86400.0
    # Background LoRA training: when a user has at least this many stable memories, and again when
    # this many more have become stable since the last adapter.
    train_min_memories: int = 20
    train_min_new: int = 10
    interval_s: float = 60.0
    # A user's block is recomputed per request only when the vault changed for them; at the latest
    # after this many seconds (hits reorder what fits the budget).
    view_ttl_s: float = 60.0
    # Hits are counted in memory and written at most this often, in one transaction: one write per
    # injected request would compete with write-back for the database's write lock.
    hit_flush_s: float = 1.0
    lora: LoraTraining | None = None  # None: memos.local.lora.LoraTraining() defaults


@dataclass(frozen=True)
class Transition:
    memory_id: str
    action: str  # memory.promote | memory.demote | memory.archive
    detail: dict[str, Any]


@dataclass(frozen=True)
class _BlockView:
    """A user's activation block as last computed, and what it was computed from."""

    changes: int | None  # the vault's change counter for the user
    computed_at: datetime
    valid_until: datetime | None  # the first expiry among the user's live memories
    text: str
    memory_ids: tuple[str, ...]
    ids: tuple[int, ...]  # the block's token ids (its chat-template rendering)
    live_ids: frozenset[str]
    erasures: int = 0  # the user's erasure count when it was read (see MemScheduler.erase_user)
    # True: the promoted memories; False: none is promoted, the block is the budget's best fill
    # (served on an explicit activation request only; auto and the background pass leave it alone).
    promoted: bool = True


@dataclass
class _UserState:
    models: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class LocalReadiness:
    """What of a user's local memory is ready for one request (MemScheduler.readiness)."""

    tenant: str
    user: str
    loaded: LoadedModel
    view: _BlockView
    kv: KVBlock | None  # the stored cache, possibly stale (then extended from its common prefix)
    adapter: AdapterHandle | None  # only while every memory it learned is still live
    unsupported: str | None = None  # why the model cannot be served activation exactly (None: it can)

    @property
    def activation_possible(self) -> bool:
        """An explicit activation request can be served: the user has a block and the model allows it."""
        return bool(self.view.text) and self.unsupported is None

    @property
    def activation_promoted(self) -> bool:
        """`auto` may pick activation: the block is made of promoted memories."""
        return self.activation_possible and self.view.promoted

    @property
    def cache_fresh(self) -> bool:
        """The stored cache holds exactly the block rendered now."""
        return self.kv is not None and self.kv.token_ids == self.view.ids

    @property
    def activation_ready(self) -> bool:
        """`auto`'s activation: promoted memories whose cache is built."""
        return self.activation_promoted and self.cache_fresh

    @property
    def parametric_ready(self) -> bool:
        return self.adapter is not None


class UserErasedMeanwhile(MemosError):
    """The user was erased while their cache or adapter was being built: the result was discarded."""


class MemScheduler:
    def __init__(
        self,
        *,
        vault: VaultLike,
        audit: AuditSink | None = None,
        registry: LocalModelRegistry | None = None,
        runtime: LocalRuntime | None = None,
        kv_store: KVCacheStore | None = None,
        adapter_store: AdapterStore | None = None,
        config: SchedulerConfig | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        observer: MemoryObserver | None = None,
    ) -> None:
        self.vault = vault
        self._observer: MemoryObserver = observer or NoObserver()
        self.audit = audit
        self.registry = registry
        self.runtime = runtime
        self.kv_store = kv_store
        self.adapter_store = adapter_store
        self.config = config or SchedulerConfig()
        self.clock = clock
        self._seen: dict[tuple[str, str], _UserState] = {}
        self._build_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self._training: set[tuple[str, str, str]] = set()
        self._views: dict[tuple[str, str, str], _BlockView] = {}
        # _seen and _views are touched from the event loop and from to_thread workers.
        self._state_lock = threading.Lock()
        # Erasures per user: a build or training that started before one must not save after it.
        # Held across the check and the save, so an erasure waits for a save it did not prevent.
        self._erase_lock = threading.Lock()
        self._erasures: dict[tuple[str, str], int] = {}
        self._pending_hits: dict[str, Counter[str]] = {}  # tenant -> memory id -> uses not yet written
        self._hit_flusher: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------------------- vault reads

    def memories(self, tenant: str, user: str) -> list[MemoryItem]:
        """All of the user's items the vault lists (every page)."""
        items: list[MemoryItem] = []
        cursor = None
        while True:
            batch, cursor = self.vault.list(tenant, user, limit=500, cursor=cursor)
            items.extend(batch)
            if not cursor or not batch:
                return items

    def _live(self, items: Iterable[MemoryItem]) -> list[MemoryItem]:
        now = self.clock()
        out = []
        for item in items:
            if State(item.state) is not State.ACTIVE:
                continue
            expires = aware(item.expires_at)
            invalid = aware(item.invalid_at)
            if (expires is not None and expires <= now) or (invalid is not None and invalid <= now):
                continue
            out.append(item)
        return out

    def block_memories(self, items: Sequence[MemoryItem]) -> list[MemoryItem]:
        """The activation block: live promoted memories, hottest first until the token budget is full."""
        promoted = [i for i in self._live(items) if Kind(i.kind) is Kind.ACTIVATION]
        promoted.sort(key=lambda i: (-i.hits, i.id))
        return self._fit(promoted)

    def fill_memories(self, items: Sequence[MemoryItem]) -> list[MemoryItem]:
        """The block while no memory is promoted: the live memories that best fill the token budget,
        most important first, then most recent."""
        live = self._live(items)
        oldest = datetime.min.replace(tzinfo=UTC)
        live.sort(key=lambda i: i.id)
        live.sort(key=lambda i: aware(i.observed_at) or aware(i.created_at) or oldest, reverse=True)
        live.sort(key=lambda i: -i.importance)
        return self._fit(live)

    def _fit(self, ranked: list[MemoryItem]) -> list[MemoryItem]:
        fitted = {
            m.id
            for m in injection.fit_budget(
                [injection.rendered(i) for i in ranked], self.config.block_token_budget
            )
        }
        return [i for i in ranked if i.id in fitted]

    @staticmethod
    def render_block(items: Sequence[MemoryItem]) -> str:
        return injection.render([injection.rendered(i) for i in items])

    def stable_memories(
        self, items: Sequence[MemoryItem], min_age_s: float | None = None
    ) -> list[MemoryItem]:
        min_age = self.config.stable_min_age_s if min_age_s is None else min_age_s
        live = self._live(items)
        if min_age <= 0:
            return live
        cutoff = self.clock() - timedelta(seconds=min_age)
        return [i for i in live if (aware(i.created_at) or cutoff) <= cutoff]

    def usage(self) -> LocalMemoryUsage:
        """What local memory holds in memory now, against its bounds (metrics read it at each scrape)."""
        kv, adapters = self.kv_store, self.adapter_store
        return LocalMemoryUsage(
            kv_memory_bytes=kv.memory_bytes if kv is not None else 0,
            kv_memory_limit_bytes=kv.memory_limit_bytes if kv is not None else None,
            adapter_memory_bytes=adapters.memory_bytes if adapters is not None else 0,
            adapter_memory_limit_bytes=adapters.memory_limit_bytes if adapters is not None else None,
            kv_disk_bytes=kv.disk_bytes_seen() if kv is not None else {},
            kv_disk_limit_bytes=kv.tenant_disk_limit_bytes if kv is not None else None,
        )

    # ------------------------------------------------------------------------- per request

    def note(self, tenant: str, user: str, model_name: str | None = None) -> None:
        """Remember that this user is active (the background pass looks after the users it saw)."""
        with self._state_lock:
            state = self._seen.setdefault((tenant, user), _UserState())
            if model_name:
                state.models.add(model_name)

    def count_hits(self, tenant: str, memory_ids: Sequence[str]) -> None:
        """Count a use of these memories (they were injected): the heat that promotion reads. Called on
        the event loop; never waits: the counts are written by `flush_hits` within `hit_flush_s`."""
        if not memory_ids:
            return
        self._pending_hits.setdefault(tenant, Counter()).update(memory_ids)
        if self._hit_flusher is None or self._hit_flusher.done():
            self._hit_flusher = asyncio.get_running_loop().create_task(self._flush_hits_later())

    async def _flush_hits_later(self) -> None:
        await asyncio.sleep(self.config.hit_flush_s)
        await self.flush_hits()

    async def flush_hits(self) -> None:
        """Write the counted hits (each tenant's in one transaction). A failed write is logged and its
        counts dropped: hits are usage statistics, never acknowledged data."""
        pending, self._pending_hits = self._pending_hits, {}
        for tenant, counts in pending.items():
            try:
                await asyncio.to_thread(self.vault.record_hit_counts, tenant, dict(counts))
            except Exception as exc:
                log.warning("recording memory hits failed: %s", exception_summary(exc))

    async def readiness(self, tenant: str, user: str, model_name: str) -> LocalReadiness:
        """For a local model (`local/<name>` or `<name>`): what of the user's local memory is ready now
        (the activation block and its cache, the adapter). Which mode serves is decided by the planner
        (memos.chat.planner), which then asks `memory_for` for the runtime's inputs."""

        assert self.registry is not None and self.kv_store is not None
        model_name = self.registry.name_of(model_name)
        self.note(tenant, user, model_name)
        loaded = await self.registry.get(model_name)

        def inspect() -> LocalReadiness:
            view = self._block_view(tenant, user, loaded)
            unsupported = cache_unsupported(loaded.model.config)
            kv = None
            if view.ids and unsupported is None:
                assert self.kv_store is not None
                kv = self.kv_store.load(KVKey(tenant, user, loaded.fingerprint), loaded.device)
            adapter = self._current_adapter(tenant, user, loaded.fingerprint, view.live_ids)
            return LocalReadiness(tenant, user, loaded, view, kv, adapter, unsupported)

        return await asyncio.to_thread(inspect)

    async def memory_for(
        self, ready: LocalReadiness, mode: MemoryMode, *, with_adapter: bool = False
    ) -> LocalMemory | None:
        """The runtime's inputs for activation (the block's cache, built now if it is missing or stale)
        or parametric (the adapter); None for any other mode. `with_adapter` (activation, when the
        user's adapter is ready): both at once - the adapter active and the block's cache built under
        it (caches are keyed by adapter), so the answer is plaintext-with-adapter's."""

        view = ready.view
        if mode is MemoryMode.ACTIVATION:
            if ready.unsupported is not None:
                raise ValueError(f"activation cannot serve this model exactly: {ready.unsupported}")
            adapter = ready.adapter if with_adapter else None
            kv, fresh = ready.kv, ready.cache_fresh
            if adapter is not None:
                assert self.kv_store is not None
                key = KVKey(ready.tenant, ready.user, ready.loaded.fingerprint, adapter.adapter_id)
                kv = await asyncio.to_thread(self.kv_store.load, key, ready.loaded.device)
                fresh = kv is not None and kv.token_ids == view.ids
                self._observer.adapter_used(ready.tenant, hit=True)
            self._observer.kv_cache_used(ready.tenant, hit=fresh)
            if not fresh:
                kv = await self.build_cache(
                    ready.tenant,
                    ready.user,
                    ready.loaded,
                    view.ids,
                    view.memory_ids,
                    previous=kv,
                    erasures=view.erasures,
                    adapter=adapter,
                )
            learned = tuple(i for i in adapter.memory_ids if i not in view.memory_ids) if adapter else ()
            return LocalMemory(
                mode, block=view.text, kv=kv, adapter=adapter, memory_ids=view.memory_ids + learned
            )
        if mode is MemoryMode.PARAMETRIC:
            self._observer.adapter_used(ready.tenant, hit=ready.adapter is not None)
            if ready.adapter is not None:
                return LocalMemory(mode, adapter=ready.adapter, memory_ids=ready.adapter.memory_ids)
        return None

    def _block_view(self, tenant: str, user: str, loaded: LoadedModel) -> _BlockView:
        """Blocking: the user's activation block for this model. Recomputed when the vault's change
        counter for the user moved (added, edited, deleted memories), after this scheduler's own
        transitions, when one of the user's memories expires, and at the latest after `view_ttl_s`
        (what no counter shows: a kind restored by rollback, another replica's transitions)."""

        key = (tenant, user, loaded.fingerprint)
        erasures = self._erasure_count(tenant, user)
        now = self.clock()
        changes = self._changes(tenant, user)
        with self._state_lock:
            view = self._views.get(key)
        if (
            view is not None
            and changes is not None
            and view.changes == changes
            and (view.valid_until is None or now < view.valid_until)
            and (now - view.computed_at).total_seconds() < self.config.view_ttl_s
        ):
            return view
        items = self.memories(tenant, user)
        live = self._live(items)
        block_items = self.block_memories(items)
        promoted = bool(block_items)
        if not promoted:
            block_items = self.fill_memories(items)
        text = self.render_block(block_items)
        ends = [t for i in live for t in (aware(i.expires_at), aware(i.invalid_at)) if t is not None]
        view = _BlockView(
            changes=changes,
            computed_at=now,
            valid_until=min(ends, default=None),
            text=text,
            memory_ids=tuple(i.id for i in block_items),
            ids=block_ids(loaded.tokenizer, text) if text else (),
            live_ids=frozenset(i.id for i in live),
            erasures=erasures,
            promoted=promoted,
        )
        with self._erase_lock, self._state_lock:
            if self._erasures.get((tenant, user), 0) == erasures:  # else erased meanwhile: keep nothing
                self._views[key] = view
        return view

    def _forget_views(self, tenant: str, user: str) -> None:
        with self._state_lock:
            for key in [k for k in self._views if k[:2] == (tenant, user)]:
                del self._views[key]

    def _erasure_count(self, tenant: str, user: str) -> int:
        with self._erase_lock:
            return self._erasures.get((tenant, user), 0)

    def _save_unless_erased(self, tenant: str, user: str, erasures: int, save: Callable[[], Any]) -> Any:
        """Blocking: `save()` unless the user was erased since `erasures` was read."""
        with self._erase_lock:
            if self._erasures.get((tenant, user), 0) != erasures:
                raise UserErasedMeanwhile()
            return save()

    def _changes(self, tenant: str, user: str) -> int | None:
        stats = getattr(self.vault, "stats", None)
        return stats(tenant, user).changes if stats is not None else None

    def _current_adapter(
        self, tenant: str, user: str, fingerprint: str, live_ids: frozenset[str]
    ) -> AdapterHandle | None:
        """Blocking: the user's adapter, if every memory it learned is still live (an edited or
        deleted memory must not keep answering from the weights)."""
        assert self.adapter_store is not None
        meta = self.adapter_store.latest(tenant, user, fingerprint)
        if meta is None or not set(meta.memory_ids) <= live_ids:
            return None
        return self.adapter_store.handle(tenant, user, fingerprint)

    async def build_cache(
        self,
        tenant: str,
        user: str,
        loaded: LoadedModel,
        ids: tuple[int, ...],
        memory_ids: tuple[str, ...],
        previous: KVBlock | None = None,
        erasures: int | None = None,
        adapter: AdapterHandle | None = None,
    ) -> KVBlock:
        """Prefill the block (reusing `previous`'s common prefix), store it encrypted, return it.
        `erasures`: the user's erasure count when `ids` were read; if the user was erased since, the
        block is returned to the caller but not stored. With `adapter`, the block is prefilled through
        it and stored under its id."""

        assert self.kv_store is not None
        key = KVKey(tenant, user, loaded.fingerprint, adapter.adapter_id if adapter else BASE_ADAPTER)
        if erasures is None:
            erasures = await asyncio.to_thread(self._erasure_count, tenant, user)
        lock = self._build_locks.setdefault((tenant, user, loaded.fingerprint), asyncio.Lock())
        async with lock:
            current = self.kv_store.peek(key)
            if current is not None and current.token_ids == ids:
                return current  # built by a concurrent request meanwhile
            run = self.runtime.run if self.runtime is not None else _to_thread
            block = await run(
                prefill, loaded, ids, adapter=adapter, reuse=previous or current, memory_ids=memory_ids
            )
            store = self.kv_store
            try:
                await asyncio.to_thread(
                    self._save_unless_erased, tenant, user, erasures, lambda: store.save(key, block)
                )
            except UserErasedMeanwhile:
                log.info("a KV cache built while its user was erased was discarded")
            return block

    # --------------------------------------------------------------------------- lifecycle

    def lifecycle(self, tenant: str, user: str) -> list[Transition]:
        """Blocking: promote hot stable memories, demote cold ones, archive expired ones."""
        cfg = self.config
        now = self.clock()
        transitions: list[Transition] = []
        items = self.memories(tenant, user)
        for item in items:
            if State(item.state) is not State.ACTIVE:
                continue
            kind = Kind(item.kind)
            expires = aware(item.expires_at)
            created = aware(item.created_at) or now
            last_hit = aware(item.last_hit_at) or created
            if expires is not None and expires <= now:
                self.vault.update(tenant, item.id, state=State.ARCHIVED, reason="expired")
                transitions.append(Transition(item.id, "memory.archive", {"reason": "expired"}))
            elif (
                kind is Kind.PLAINTEXT
                and item.hits >= cfg.promote_min_hits
                and (now - created).total_seconds() >= cfg.stable_min_age_s
                and (now - last_hit).total_seconds() < cfg.demote_idle_s  # hot now, not only once
            ):
                self.vault.update(tenant, item.id, kind=Kind.ACTIVATION, reason="promote: hot and stable")
                transitions.append(
                    Transition(
                        item.id,
                        "memory.promote",
                        {"from": "plaintext", "to": "activation", "hits": item.hits},
                    )
                )
            elif kind is Kind.ACTIVATION and (now - last_hit).total_seconds() >= cfg.demote_idle_s:
                self.vault.update(tenant, item.id, kind=Kind.PLAINTEXT, reason="demote: cold")
                transitions.append(
                    Transition(
                        item.id, "memory.demote", {"from": "activation", "to": "plaintext", "hits": item.hits}
                    )
                )
        if transitions:
            self._forget_views(tenant, user)
        for t in transitions:
            self._audit(tenant, t.action, user=user, memory_ids=[t.memory_id], detail=t.detail)
        return transitions

    def promote(
        self, tenant: str, user: str, memory_ids: Iterable[str], reason: str = "promote"
    ) -> list[Transition]:
        """Blocking: put these memories into the activation block (a new version each, audited)."""
        transitions = []
        wanted = set(memory_ids)
        for item in self._live(self.memories(tenant, user)):
            if item.id in wanted and Kind(item.kind) is not Kind.ACTIVATION:
                self.vault.update(tenant, item.id, kind=Kind.ACTIVATION, reason=reason)
                t = Transition(item.id, "memory.promote", {"from": str(item.kind), "to": "activation"})
                self._audit(tenant, t.action, user=user, memory_ids=[item.id], detail=t.detail)
                transitions.append(t)
        if transitions:
            self._forget_views(tenant, user)
        return transitions

    def _audit(self, tenant: str, action: str, **kwargs: Any) -> None:
        if self.audit is not None:
            self.audit.record(tenant, action, **kwargs)

    def train(
        self, tenant: str, user: str, model_name: str, *, min_age_s: float | None = None
    ) -> AdapterMeta:
        """Blocking: train the user's LoRA adapter for a local model on their stable memories.

        Trains on the served model's own weights, between requests (memos.local.lora.train_on_served),
        stores the adapter encrypted and audits `memory.train` with the memory ids (never their text)."""

        assert self.registry is not None and self.adapter_store is not None
        erasures = self._erasure_count(tenant, user)
        items = self.stable_memories(self.memories(tenant, user), min_age_s)
        if not items:
            raise ValueError("the user has no stable memories to train on")
        items.sort(key=lambda i: i.id)
        served = self.registry.load(model_name)
        trained = train_on_served(served, [i.text for i in items], self.config.lora or LoraTraining())
        store, fingerprint = self.adapter_store, self.registry.fingerprint(model_name)
        meta = self._save_unless_erased(
            tenant,
            user,
            erasures,
            lambda: store.save(tenant, user, fingerprint, trained, [i.id for i in items]),
        )
        self._audit(
            tenant,
            "memory.train",
            user=user,
            memory_ids=[i.id for i in items],
            detail={
                "model": model_name,
                "adapter": meta.adapter_id,
                "steps": trained.steps,
                "base_loss": round(trained.base_loss, 4),
                "adapter_loss": round(trained.adapter_loss, 4),
            },
        )
        return meta

    def _wants_training(self, tenant: str, user: str, model_name: str, items: Sequence[MemoryItem]) -> bool:
        assert self.registry is not None and self.adapter_store is not None
        stable = self.stable_memories(items)
        if len(stable) < self.config.train_min_memories:
            return False
        meta = self.adapter_store.latest(tenant, user, self.registry.fingerprint(model_name))
        if meta is None:
            return True
        live = {i.id for i in self._live(items)}
        if not set(meta.memory_ids) <= live:
            return True  # it learned something since edited or deleted
        return len({i.id for i in stable} - set(meta.memory_ids)) >= self.config.train_min_new

    async def tick(self) -> list[Transition]:
        """One background pass over the users seen since the last one."""
        with self._state_lock:
            seen, self._seen = self._seen, {}
        done: list[Transition] = []
        for (tenant, user), state in seen.items():
            try:
                done.extend(await asyncio.to_thread(self.lifecycle, tenant, user))
                for model_name in sorted(state.models):
                    await self._refresh_model(tenant, user, model_name)
            except UserErasedMeanwhile:
                log.info(
                    "scheduler pass: a user was erased meanwhile; their new cache or adapter was dropped"
                )
            except Exception as exc:
                log.error("scheduler pass failed for one user: %s", exception_summary(exc))
        return done

    async def _refresh_model(self, tenant: str, user: str, model_name: str) -> None:
        """Rebuild the user's KV cache if the block changed; train an adapter if due."""

        if self.registry is None or self.kv_store is None or model_name not in self.registry.names():
            return
        loaded = await self.registry.get(model_name)
        view = await asyncio.to_thread(self._block_view, tenant, user, loaded)
        key = KVKey(tenant, user, loaded.fingerprint)
        if not view.ids:
            await asyncio.to_thread(self.kv_store.delete, key)
        elif view.promoted and cache_unsupported(loaded.model.config) is None:
            current = await asyncio.to_thread(self.kv_store.load, key, loaded.device)
            if current is None or current.token_ids != view.ids:
                await self.build_cache(
                    tenant, user, loaded, view.ids, view.memory_ids, previous=current, erasures=view.erasures
                )
        # else the fill block (nothing promoted): cached when a request asks for activation, not here
        items = await asyncio.to_thread(self.memories, tenant, user)
        job = (tenant, user, model_name)
        if job not in self._training and await asyncio.to_thread(
            self._wants_training, tenant, user, model_name, items
        ):
            self._training.add(job)
            try:
                await asyncio.to_thread(self.train, tenant, user, model_name)
            finally:
                self._training.discard(job)

    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            await self.tick()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run_forever(), name="memos-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if self._hit_flusher is not None:
            self._hit_flusher.cancel()
            self._hit_flusher = None
        await self.flush_hits()

    # --------------------------------------------------------------------------- erasure

    def erase_user(self, tenant: str, owner: str) -> int:
        """UserDataEraser: the user's KV caches and adapters, on disk and in loaded models.
        Returns how many files were removed."""
        with self._erase_lock:  # waits for a save already past its check; later ones are refused
            self._erasures[(tenant, owner)] = self._erasures.get((tenant, owner), 0) + 1
        with self._state_lock:
            self._seen.pop((tenant, owner), None)
        self._forget_views(tenant, owner)
        removed = 0
        if self.kv_store is not None:
            removed += self.kv_store.erase_user(tenant, owner)
        if self.adapter_store is not None:
            adapter_ids = self.adapter_store.adapter_ids(tenant, owner)
            removed += self.adapter_store.erase_user(tenant, owner)
            if self.registry is not None and adapter_ids:
                for name in self.registry.names():
                    if self.registry.is_loaded(name):
                        unload_adapters(self.registry.load(name), adapter_ids)
        return removed


async def _to_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await asyncio.to_thread(fn, *args, **kwargs)
