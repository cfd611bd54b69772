"""MemScheduler: the mode per request, the lifecycle between tiers (each transition a new version in
the real vault, audited), caches and adapters used only while they match the vault, erasure."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from memos.chat.contract import MemoryReason
from memos.chat.planner import choose_mode, plan_local
from memos.db import Database
from memos.embeddings import HashEmbedder
from memos.governance.audit import AuditLog
from memos.governance.policy import MemoryPolicy, Policy
from memos.item import Kind, State
from memos.keys.crypto import MasterKey
from memos.keys.keyring import Keyring
from memos.local.kvcache import KVCacheStore, KVKey
from memos.local.lora import AdapterStore, LoraTraining
from memos.local.scheduler import MemScheduler, SchedulerConfig
from memos.modes import MemoryMode
from memos.recall import injection
from memos.storage.vault import MemVault
from memos.storage.vectors import VectorIndex
from tests.support.local_models import FIVE_MEMORIES

A, P, X, OFF, AUTO = (
    MemoryMode.ACTIVATION,
    MemoryMode.PARAMETRIC,
    MemoryMode.PLAINTEXT,
    MemoryMode.OFF,
    MemoryMode.AUTO,
)
ALL = ["plaintext", "activation", "parametric", "off"]


@pytest.mark.parametrize(
    ("requested", "allowed", "local", "possible", "ready", "adapter", "expected"),
    [
        (AUTO, ALL, False, True, True, True, X),  # remote: plaintext only
        (A, ALL, False, True, True, True, X),
        (AUTO, ["off"], False, True, True, True, OFF),
        (OFF, ALL, True, True, True, True, OFF),
        (AUTO, ALL, True, True, True, True, A),  # cache built: activation first
        (AUTO, ALL, True, True, False, True, P),  # else the adapter
        (AUTO, ALL, True, True, False, False, X),  # else plaintext (cache built in the background)
        (AUTO, ["activation"], True, True, False, False, A),  # only activation allowed: build now
        (AUTO, ALL, True, False, False, False, X),  # empty block
        (A, ALL, True, True, False, False, A),  # explicit: built on demand
        (A, ALL, True, False, False, False, X),  # explicit but nothing to cache: fallback
        (P, ALL, True, True, True, True, P),
        (P, ALL, True, True, True, False, A),  # no adapter: auto's choice
        (X, ALL, True, True, True, True, X),
        (A, ["plaintext", "off"], True, True, True, True, X),  # policy forbids it
        (AUTO, ["parametric"], True, True, True, False, OFF),
    ],
)
def test_choose_mode(requested, allowed, local, possible, ready, adapter, expected) -> None:  # type: ignore[no-untyped-def]
    got = choose_mode(
        requested,
        allowed,
        local=local,
        activation_possible=possible,
        activation_ready=ready,
        parametric_ready=adapter,
    )
    assert got is expected


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def env(tmp_path, registry):  # type: ignore[no-untyped-def]
    db = Database(f"sqlite:///{tmp_path / 'memos.db'}")
    db.create_all()
    master = MasterKey.generate()
    keyring = Keyring(db, master)
    vault = MemVault(db, keyring, VectorIndex(str(tmp_path / "vectors")), HashEmbedder())
    audit = AuditLog.from_master(db, master)
    clock = Clock()
    scheduler = MemScheduler(
        vault=vault,
        audit=audit,
        registry=registry,
        kv_store=KVCacheStore(tmp_path / "kv", keyring),
        adapter_store=AdapterStore(tmp_path / "adapters", keyring),
        config=SchedulerConfig(
            promote_min_hits=2,
            stable_min_age_s=60,
            demote_idle_s=3600,
            train_min_memories=5,
            lora=LoraTraining(steps=30, learning_rate=5e-3),
        ),
        clock=clock,
    )
    yield scheduler, vault, audit, clock
    db.dispose()


def _actions(audit: AuditLog, tenant: str = "acme") -> list[tuple[str, tuple[str, ...]]]:
    entries, _ = audit.list(tenant, limit=1000)
    return [(e.action, tuple(e.memory_ids)) for e in entries]


def test_lifecycle_promotes_demotes_and_archives(env) -> None:  # type: ignore[no-untyped-def]
    scheduler, vault, audit, clock = env
    hot = vault.add("acme", "alice", "I live in Lisbon.")
    quiet = vault.add("acme", "alice", "I am allergic to peanuts.")
    cold = vault.add("acme", "alice", "My dog is called Pixel.", kind=Kind.ACTIVATION)
    expiring = vault.add(
        "acme", "alice", "The meeting is on Thursday.", expires_at=clock.now + timedelta(hours=1)
    )
    for _ in range(2):
        vault.record_hit_counts("acme", {hot.id: 1}, when=clock.now)

    def state() -> dict[str, object]:
        return {i.id: i for i in vault.list("acme", "alice", states=list(State))[0]}

    assert scheduler.lifecycle("acme", "alice") == []  # hot, but not stable yet (younger than 60 s)

    clock.now += timedelta(minutes=5)
    assert [(t.memory_id, t.action) for t in scheduler.lifecycle("acme", "alice")] == [
        (hot.id, "memory.promote")
    ]
    got = state()
    assert Kind(got[hot.id].kind) is Kind.ACTIVATION and got[hot.id].version == 2
    assert Kind(got[quiet.id].kind) is Kind.PLAINTEXT  # stable but never retrieved
    assert Kind(got[cold.id].kind) is Kind.ACTIVATION  # not idle long enough yet

    clock.now += timedelta(hours=2)  # idle time passes for cold and hot; expiring expires
    scheduler.lifecycle("acme", "alice")
    got = state()
    assert Kind(got[cold.id].kind) is Kind.PLAINTEXT and got[cold.id].version == 2
    assert Kind(got[hot.id].kind) is Kind.PLAINTEXT and got[hot.id].version == 3
    assert State(got[expiring.id].state) is State.ARCHIVED
    assert expiring.id not in {i.id for i in vault.list("acme", "alice")[0]}  # no longer active
    reasons = vault.version_reasons("acme", hot.id)
    assert "promote: hot and stable" in reasons.values() and "demote: cold" in reasons.values()
    actions = _actions(audit)
    assert ("memory.promote", (hot.id,)) in actions
    assert ("memory.demote", (hot.id,)) in actions
    assert ("memory.demote", (cold.id,)) in actions
    assert ("memory.archive", (expiring.id,)) in actions
    assert scheduler.lifecycle("acme", "alice") == []  # nothing left to do: no new versions


async def test_plan_builds_reuses_and_rebuilds_the_cache(env, loaded) -> None:  # type: ignore[no-untyped-def]
    scheduler, vault, audit, _ = env
    policy = Policy()
    items = [vault.add("acme", "alice", text) for text in FIVE_MEMORIES]
    # Nothing promoted yet: no block, so plaintext.
    mode, memory, _ = await plan_local(scheduler, "acme", "alice", "local/tiny", AUTO, policy)
    assert (mode, memory) == (X, None)
    scheduler.promote("acme", "alice", [i.id for i in items])
    # auto: the cache is not built yet -> plaintext now, built by the background pass.
    mode, _, _ = await plan_local(scheduler, "acme", "alice", "local/tiny", AUTO, policy)
    assert mode is X
    await scheduler.tick()
    key = KVKey("acme", "alice", loaded.fingerprint)
    assert scheduler.kv_store.path(key).exists()
    mode, memory, _ = await plan_local(scheduler, "acme", "alice", "local/tiny", AUTO, policy)
    assert mode is A and memory.kv is not None and set(memory.memory_ids) == {i.id for i in items}
    assert memory.block == scheduler.render_block(items)
    # A changed memory: the stored cache no longer matches, so it is not used ...
    vault.update("acme", items[0].id, text="I live in Porto.")
    mode, _, _ = await plan_local(scheduler, "acme", "alice", "tiny", AUTO, policy)
    assert mode is X
    # ... unless activation is asked for, which rebuilds it now (extending the common prefix).
    mode, rebuilt, _ = await plan_local(scheduler, "acme", "alice", "tiny", A, policy)
    assert mode is A and rebuilt.kv.token_ids != memory.kv.token_ids
    assert "Porto" in rebuilt.block
    # The policy decides what is allowed.
    no_activation = Policy(memory=MemoryPolicy(allowed_modes=["plaintext", "off"]))
    assert (await plan_local(scheduler, "acme", "alice", "tiny", A, no_activation))[0] is X
    assert any(a == "memory.promote" for a, _ in _actions(audit))


async def test_adapter_is_used_only_while_its_memories_are_live(env, loaded) -> None:  # type: ignore[no-untyped-def]
    scheduler, vault, audit, _clock = env
    items = [vault.add("acme", "alice", text) for text in FIVE_MEMORIES]
    with pytest.raises(ValueError, match="no stable memories"):
        scheduler.train("acme", "alice", "tiny")  # all younger than stable_min_age_s
    meta = scheduler.train("acme", "alice", "tiny", min_age_s=0)
    assert meta.adapter_loss < meta.base_loss and set(meta.memory_ids) == {i.id for i in items}
    assert ("memory.train", tuple(sorted(i.id for i in items))) in _actions(audit)
    mode, memory, _ = await plan_local(scheduler, "acme", "alice", "tiny", P, Policy())
    assert mode is P and memory.adapter.adapter_id == meta.adapter_id
    assert (await plan_local(scheduler, "acme", "alice", "tiny", AUTO, Policy()))[0] is P  # no block yet
    vault.delete("acme", items[1].id)  # the adapter learned it: it must not answer from it any more
    assert (await plan_local(scheduler, "acme", "alice", "tiny", P, Policy()))[0] is X


async def test_background_training_when_enough_stable_memories(env, loaded) -> None:  # type: ignore[no-untyped-def]
    scheduler, vault, _audit, clock = env
    for text in FIVE_MEMORIES:
        vault.add("acme", "alice", text)
    scheduler.note("acme", "alice", "tiny")
    await scheduler.tick()
    assert scheduler.adapter_store.latest("acme", "alice", loaded.fingerprint) is None  # not stable yet
    clock.now += timedelta(minutes=5)
    scheduler.note("acme", "alice", "tiny")
    await scheduler.tick()
    assert scheduler.adapter_store.latest("acme", "alice", loaded.fingerprint) is not None


async def test_erase_user_drops_caches_and_adapters(env, loaded, runtime) -> None:  # type: ignore[no-untyped-def]
    scheduler, vault, _audit, _clock = env
    items = [vault.add("acme", "alice", text) for text in FIVE_MEMORIES]
    scheduler.promote("acme", "alice", [i.id for i in items])
    _, _memory, _ = await plan_local(scheduler, "acme", "alice", "tiny", A, Policy())
    scheduler.train("acme", "alice", "tiny", min_age_s=0)
    _, param, _ = await plan_local(scheduler, "acme", "alice", "tiny", P, Policy())
    from memos.local.runtime import SamplingParams, build_prompt

    prompt = build_prompt(loaded.tokenizer, [{"role": "user", "content": "hi"}])
    runtime.generate(loaded, prompt, SamplingParams(max_tokens=2, temperature=0), adapter=param.adapter)
    assert param.adapter.adapter_id in loaded.loaded_adapters
    scheduler.erase_user("acme", "alice")
    assert not list(scheduler.kv_store.root.rglob("*.kv"))
    assert not list(scheduler.adapter_store.root.rglob("*.lora"))
    assert param.adapter.adapter_id not in loaded.loaded_adapters
    assert scheduler.kv_store.load(KVKey("acme", "alice", loaded.fingerprint)) is None


async def test_count_hits_feeds_promotion(env) -> None:  # type: ignore[no-untyped-def]
    scheduler, vault, _, clock = env
    item = vault.add("acme", "alice", "I live in Lisbon.")
    for _ in range(2):
        scheduler.count_hits("acme", [item.id])  # returns at once; counted, written later
    assert vault.get("acme", item.id).hits == 0
    await scheduler.flush_hits()
    assert vault.get("acme", item.id).hits == 2
    clock.now += timedelta(minutes=5)
    assert [t.action for t in scheduler.lifecycle("acme", "alice")] == ["memory.promote"]


async def test_counted_hits_are_written_within_the_flush_interval_and_at_stop(env) -> None:  # type: ignore[no-untyped-def]
    scheduler, vault, _, _clock = env
    item = vault.add("acme", "alice", "I live in Lisbon.")
    scheduler.config = dataclasses.replace(scheduler.config, hit_flush_s=0.05)
    scheduler.count_hits("acme", [item.id, item.id])
    for _ in range(200):
        if vault.get("acme", item.id).hits:
            break
        await asyncio.sleep(0.01)
    assert vault.get("acme", item.id).hits == 2
    scheduler.config = dataclasses.replace(scheduler.config, hit_flush_s=3600.0)
    scheduler.count_hits("acme", [item.id])
    await scheduler.stop()  # what is still counted is written on the way out
    assert vault.get("acme", item.id).hits == 3


async def test_a_cache_built_while_its_user_is_erased_is_not_stored(env, loaded) -> None:  # type: ignore[no-untyped-def]
    scheduler, vault, _audit, _clock = env
    items = [vault.add("acme", "alice", text) for text in FIVE_MEMORIES]
    scheduler.promote("acme", "alice", [i.id for i in items])

    class EraseDuringPrefill:
        """Runs the real prefill, after the user is erased (an erasure landing mid-build)."""

        async def run(self, fn, *args, **kwargs):  # type: ignore[no-untyped-def]
            await asyncio.to_thread(scheduler.erase_user, "acme", "alice")
            return await asyncio.to_thread(fn, *args, **kwargs)

    scheduler.runtime = EraseDuringPrefill()
    mode, _, _ = await plan_local(scheduler, "acme", "alice", "tiny", A, Policy())
    assert mode is A  # the request that asked still gets its block
    assert scheduler.kv_store.load(KVKey("acme", "alice", loaded.fingerprint)) is None
    assert not list(scheduler.kv_store.root.rglob("*.kv"))


def test_an_adapter_trained_while_its_user_is_erased_is_not_stored(env, registry) -> None:  # type: ignore[no-untyped-def]
    from memos.local.scheduler import UserErasedMeanwhile

    scheduler, vault, audit, _clock = env
    for text in FIVE_MEMORIES:
        vault.add("acme", "alice", text)

    class EraseWhileLoading:
        """The real registry; the user is erased while training fetches the served model."""

        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(registry, name)

        def load(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            scheduler.erase_user("acme", "alice")
            return registry.load(*args, **kwargs)

    scheduler.registry = EraseWhileLoading()
    with pytest.raises(UserErasedMeanwhile):
        scheduler.train("acme", "alice", "tiny", min_age_s=0)
    assert not list(scheduler.adapter_store.root.rglob("*.lora"))
    assert "memory.train" not in {a for a, _ in _actions(audit)}


async def test_explicit_activation_fills_the_block_while_nothing_is_promoted(env, loaded) -> None:  # type: ignore[no-untyped-def]
    scheduler, vault, _audit, clock = env
    day = timedelta(days=1)
    old_vital = vault.add(
        "acme", "alice", "I am allergic to peanuts.", importance=0.9, observed_at=clock.now - 9 * day
    )
    recent = vault.add("acme", "alice", "I live in Lisbon.", observed_at=clock.now - day)
    older = vault.add("acme", "alice", "My dog is called Pixel.", observed_at=clock.now - 5 * day)
    # A budget for two lines: the most important first, then the most recent.
    two = injection.block_tokens([injection.rendered(i) for i in (old_vital, recent)])
    scheduler.config = dataclasses.replace(scheduler.config, block_token_budget=two)
    assert [i.id for i in scheduler.fill_memories(scheduler.memories("acme", "alice"))] == [
        old_vital.id,
        recent.id,
    ]
    # auto: nothing promoted, so plaintext (and no cache is built in the background either).
    assert await plan_local(scheduler, "acme", "alice", "tiny", AUTO, Policy()) == (X, None, None)
    scheduler.note("acme", "alice", "tiny")
    await scheduler.tick()
    assert not list(scheduler.kv_store.root.rglob("*.kv"))
    # Explicit activation serves that fill at once, and stores its cache.
    mode, memory, reason = await plan_local(scheduler, "acme", "alice", "tiny", A, Policy())
    assert mode is A and reason is None and memory.kv is not None
    assert set(memory.memory_ids) == {old_vital.id, recent.id} and older.id not in memory.memory_ids
    stored = scheduler.kv_store.load(KVKey("acme", "alice", loaded.fingerprint))
    assert stored is not None and stored.token_ids == memory.kv.token_ids
    # The background pass leaves the fill's cache alone; auto still does not serve it.
    scheduler.note("acme", "alice", "tiny")
    await scheduler.tick()
    assert scheduler.kv_store.path(KVKey("acme", "alice", loaded.fingerprint)).exists()
    assert (await plan_local(scheduler, "acme", "alice", "tiny", AUTO, Policy()))[0] is X
    # Parametric without an adapter says so.
    assert (await plan_local(scheduler, "acme", "alice", "tiny", P, Policy()))[2] is MemoryReason.NO_ADAPTER
    # Nothing to remember: activation says why.
    mode, memory, reason = await plan_local(scheduler, "acme", "bob", "tiny", A, Policy())
    assert (mode, memory, reason) == (X, None, MemoryReason.NO_MEMORIES)
    forbidden = Policy(memory=MemoryPolicy(allowed_modes=["plaintext", "off"]))
    assert (await plan_local(scheduler, "acme", "alice", "tiny", A, forbidden))[2] is MemoryReason.POLICY


async def test_a_memory_added_extends_the_cache_and_a_removed_one_rebuilds_from_it(env, loaded) -> None:  # type: ignore[no-untyped-def]
    import torch

    from memos.local.kvcache import common_prefix, prefill

    scheduler, vault, _audit, clock = env
    start = clock.now - timedelta(days=30)
    items = [
        vault.add("acme", "alice", text, observed_at=start + timedelta(days=i))
        for i, text in enumerate(FIVE_MEMORIES)
    ]

    async def activation() -> Any:
        mode, memory, _ = await plan_local(scheduler, "acme", "alice", "tiny", A, Policy())
        assert mode is A
        return memory.kv

    def assert_exact(block: Any) -> None:
        """The block equals a full rebuild of its ids, and so do the next-token logits after it."""
        rebuilt = prefill(loaded, block.token_ids)
        for a, b in zip((*block.keys, *block.values), (*rebuilt.keys, *rebuilt.values), strict=True):
            torch.testing.assert_close(a, b)
        with torch.inference_mode():
            probe = torch.tensor([block.token_ids[-3:]])
            on_block = loaded.model(input_ids=probe, past_key_values=block.new_cache(loaded.model.config))
            on_rebuilt = loaded.model(input_ids=probe, past_key_values=rebuilt.new_cache(loaded.model.config))
        torch.testing.assert_close(on_block.logits, on_rebuilt.logits)

    first = await activation()
    assert first.reused_tokens == 0
    # A newer memory goes to the end of the block: the stored cache is extended by the new line only.
    newest = vault.add("acme", "alice", "I run every morning.", observed_at=start + timedelta(days=10))
    grown = await activation()
    assert grown.reused_tokens == common_prefix(first.token_ids, grown.token_ids)
    # What was recomputed of the old block is its closing fence and end of turn, no memory line.
    redone = loaded.tokenizer.decode(list(first.token_ids[grown.reused_tokens :]))
    assert "</memories id=" in redone and "- [" not in redone and "I " not in redone
    assert torch.equal(grown.keys[0][:, :, : grown.reused_tokens], first.keys[0][:, :, : grown.reused_tokens])
    assert_exact(grown)
    # A removed memory: recomputed from its line on, the lines before it kept.
    vault.delete("acme", items[2].id)
    shrunk = await activation()
    assert 0 < shrunk.reused_tokens == common_prefix(grown.token_ids, shrunk.token_ids) < len(grown.token_ids)
    assert shrunk.reused_tokens > len(first.token_ids) // 3  # the header and the first two lines stay
    assert newest.id in scheduler.kv_store.load(KVKey("acme", "alice", loaded.fingerprint)).memory_ids
    assert_exact(shrunk)


async def test_activation_and_parametric_together(env, loaded, runtime) -> None:  # type: ignore[no-untyped-def]
    from memos.local.runtime import SamplingParams, build_prompt
    from tests.support.local_models import CONVERSATION

    scheduler, vault, _audit, _clock = env
    items = [vault.add("acme", "alice", text) for text in FIVE_MEMORIES]
    meta = scheduler.train("acme", "alice", "tiny", min_age_s=0)
    mode, memory, reason = await plan_local(scheduler, "acme", "alice", "tiny", A, Policy())
    assert mode is A and reason is None
    assert memory.adapter is not None and memory.adapter.adapter_id == meta.adapter_id
    assert memory.kv.adapter_id == meta.adapter_id  # the block's cache was built through the adapter
    assert set(memory.memory_ids) == {i.id for i in items}
    assert scheduler.kv_store.path(KVKey("acme", "alice", loaded.fingerprint, meta.adapter_id)).exists()

    prompt = build_prompt(loaded.tokenizer, CONVERSATION, memory.block)
    greedy = SamplingParams(max_tokens=24, temperature=0.0)
    both = runtime.generate(loaded, prompt, greedy, kv=memory.kv, adapter=memory.adapter)
    plain_with_adapter = runtime.generate(loaded, prompt, greedy, adapter=memory.adapter)
    plain = runtime.generate(loaded, prompt, greedy)
    assert both.cached_tokens == len(prompt.block_ids)
    assert both.token_ids == plain_with_adapter.token_ids != plain.token_ids

    # Reused on the next request; a policy without parametric memory gets the base cache instead.
    again = (await plan_local(scheduler, "acme", "alice", "tiny", A, Policy()))[1]
    assert torch_equal(again.kv, memory.kv)
    no_parametric = Policy(memory=MemoryPolicy(allowed_modes=["plaintext", "activation", "off"]))
    base = (await plan_local(scheduler, "acme", "alice", "tiny", A, no_parametric))[1]
    assert base.adapter is None and base.kv.adapter_id == "base"
    alone = runtime.generate(loaded, prompt, greedy, kv=base.kv)
    assert alone.token_ids == plain.token_ids


def torch_equal(a: Any, b: Any) -> bool:
    import torch

    return a.token_ids == b.token_ids and all(
        torch.equal(x, y) for x, y in zip((*a.keys, *a.values), (*b.keys, *b.values), strict=True)
    )
