"""Activation memory at rest: encrypted safetensors (never pickled), bound to its key, erasable;
rebuilding after a change reuses the common token prefix."""

from __future__ import annotations

import pytest
import torch

from memos.keys.crypto import DecryptionError
from memos.local.kvcache import KVBlock, KVCacheStore, KVKey, prefill, safetensors_metadata
from memos.local.runtime import SamplingParams, block_ids, build_prompt
from tests.support.local_models import BLOCK, CONVERSATION


def _same(a: KVBlock, b: KVBlock, exact: bool = True) -> bool:
    pairs = zip((*a.keys, *a.values), (*b.keys, *b.values), strict=True)
    if exact:
        return all(torch.equal(x, y) for x, y in pairs)
    return all(torch.allclose(x, y, atol=1e-5) for x, y in pairs)


def test_cache_is_ciphertext_on_disk_and_round_trips(loaded, keyring, tmp_path) -> None:  # type: ignore[no-untyped-def]
    ids = block_ids(loaded.tokenizer, BLOCK)
    block = prefill(loaded, ids, memory_ids=["m1", "m2"])
    assert len(block.keys) == loaded.model.config.num_hidden_layers
    assert block.keys[0].shape[2] == len(ids)
    plain = block.to_safetensors()
    assert safetensors_metadata(plain)["model_fingerprint"] == loaded.fingerprint  # what a plain file shows

    store = KVCacheStore(tmp_path / "kv", keyring)
    key = KVKey("acme", "alice", loaded.fingerprint)
    path = store.save(key, block)
    raw = path.read_bytes()
    # No safetensors header, metadata or tensor bytes are readable.
    assert raw[:1] == b"\x01" and len(raw) >= len(plain)
    for needle in (b"layers.0.keys", b"__metadata__", b"token_ids", b"memos-kv", loaded.fingerprint.encode()):
        assert needle not in raw
    first_tensor_bytes = block.keys[0].contiguous().numpy().tobytes()[:64]
    assert first_tensor_bytes not in raw
    assert "alice" not in str(path) and "acme" not in str(path)  # paths are hashes, not identities

    fresh = KVCacheStore(tmp_path / "kv", keyring).load(key)
    assert fresh is not None and fresh.token_ids == ids and fresh.memory_ids == ("m1", "m2")
    assert _same(fresh, block)


def test_cache_is_bound_to_its_user_and_model(loaded, keyring, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = KVCacheStore(tmp_path / "kv", keyring)
    key = KVKey("acme", "alice", loaded.fingerprint)
    path = store.save(key, prefill(loaded, block_ids(loaded.tokenizer, BLOCK)))
    bob = KVKey("acme", "bob", loaded.fingerprint)
    other_path = store.path(bob)
    other_path.parent.mkdir(parents=True, exist_ok=True)
    other_path.write_bytes(path.read_bytes())  # alice's file planted as bob's
    with pytest.raises(DecryptionError):
        KVCacheStore(tmp_path / "kv", keyring).load(bob)


def test_erase_user_removes_caches(loaded, keyring, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = KVCacheStore(tmp_path / "kv", keyring)
    block = prefill(loaded, block_ids(loaded.tokenizer, BLOCK))
    alice, bob = KVKey("acme", "alice", loaded.fingerprint), KVKey("acme", "bob", loaded.fingerprint)
    store.save(alice, block)
    store.save(bob, block)
    assert store.erase_user("acme", "alice") == 1
    assert store.load(alice) is None and not store.path(alice).exists()
    assert store.load(bob) is not None


def test_rebuild_reuses_the_common_prefix(loaded, runtime) -> None:  # type: ignore[no-untyped-def]
    tok = loaded.tokenizer
    old = prefill(loaded, block_ids(tok, BLOCK))
    longer = BLOCK + "\n- [2026-01-04] plays the piano"
    new_ids = block_ids(tok, longer)
    extended = prefill(loaded, new_ids, reuse=old)
    rebuilt = prefill(loaded, new_ids)
    assert extended.token_ids == rebuilt.token_ids == new_ids
    assert _same(extended, rebuilt, exact=False)
    # The reused prefix is the old cache's own numbers; the old cache is untouched.
    keep = next(i for i, (a, b) in enumerate(zip(old.token_ids, new_ids, strict=False)) if a != b)
    assert torch.equal(extended.keys[0][:, :, :keep], old.keys[0][:, :, :keep])
    assert old.keys[0].shape[2] == len(old.token_ids)
    # And the extended cache serves the new block like a fresh one.
    prompt = build_prompt(tok, CONVERSATION, longer)
    greedy = SamplingParams(max_tokens=16, temperature=0.0)
    assert (
        runtime.generate(loaded, prompt, greedy, kv=extended).token_ids
        == runtime.generate(loaded, prompt, greedy).token_ids
    )
    # A block that is a prefix of the old one needs no compute at all.
    assert prefill(loaded, old.token_ids[:10], reuse=old).token_ids == old.token_ids[:10]


def test_a_local_block_keeps_its_fence_when_memories_are_appended() -> None:
    from datetime import UTC, datetime, timedelta

    from memos.local.runtime import cacheable_block
    from memos.recall import injection

    start = datetime(2026, 1, 1, tzinfo=UTC)
    memories = [injection.RenderedMemory(f"m{i}", f"fact {i}", start + timedelta(days=i)) for i in range(4)]
    three, four = injection.render(memories[:3]), injection.render(memories)
    assert three.split("\n")[1] != four.split("\n")[1]  # the shared fence id changes with the set ...
    local3, local4 = cacheable_block(three), cacheable_block(four)
    # ... the local one does not: all but the closing line is a prefix of the longer block.
    assert local4.startswith(local3.rsplit("\n", 1)[0] + "\n")
    opening, closing = local4.split("\n")[1], local4.split("\n")[-1]
    assert opening.replace("<", "</") == closing and opening != four.split("\n")[1]
    # Nothing but the fence id differs from the shared rendering.
    fence = opening.split('"')[1]
    assert local4.replace(fence, four.split("\n")[1].split('"')[1]) == four
    assert cacheable_block(BLOCK) == BLOCK  # not a fenced memory block: unchanged


def test_caches_in_memory_stay_under_their_byte_limit(loaded, keyring, tmp_path) -> None:  # type: ignore[no-untyped-def]
    block = prefill(loaded, block_ids(loaded.tokenizer, BLOCK))
    store = KVCacheStore(tmp_path / "kv", keyring, memory_entries=100, memory_bytes=2 * block.nbytes)
    keys = [KVKey("acme", f"user{i}", loaded.fingerprint) for i in range(3)]
    for key in keys:
        store.save(key, block)
    assert store.memory_bytes == 2 * block.nbytes  # the oldest was dropped from memory ...
    assert store.peek(keys[0]) is None and store.peek(keys[2]) is not None
    assert store.load(keys[0]) is not None  # ... and is read back from disk when asked for
    assert store.peek(keys[1]) is None and store.memory_bytes == 2 * block.nbytes
    tiny = KVCacheStore(tmp_path / "kv", keyring, memory_bytes=block.nbytes - 1)
    assert tiny.load(keys[0]) is not None and tiny.memory_bytes == 0  # too large to keep: disk only
    store.delete(keys[2])
    assert store.memory_bytes == block.nbytes


def test_a_tenants_caches_on_disk_stay_under_its_quota(loaded, keyring, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os

    block = prefill(loaded, block_ids(loaded.tokenizer, BLOCK))
    probe = KVCacheStore(tmp_path / "probe", keyring)
    size = probe.save(KVKey("acme", "probe", loaded.fingerprint), block).stat().st_size
    store = KVCacheStore(tmp_path / "kv", keyring, tenant_disk_bytes=2 * size + size // 2)
    alice, bob, carol = (KVKey("acme", u, loaded.fingerprint) for u in ("alice", "bob", "carol"))
    other = KVKey("globex", "dave", loaded.fingerprint)
    for when, key in enumerate((alice, bob, other)):
        os.utime(store.save(key, block), (1_000 + when, 1_000 + when))  # in this order of use
    assert store.load(alice) is not None  # used again (from memory): now the newest on disk too
    store.save(carol, block)
    # Bob's was the least recently used of acme's: removed. globex has its own quota.
    assert not store.path(bob).exists()
    assert store.path(alice).exists() and store.path(carol).exists() and store.path(other).exists()
    assert store.tenant_disk_bytes("acme") <= 2 * size + size // 2
    # A cache larger than the whole quota is served (kept in memory) but not kept on disk.
    small = KVCacheStore(tmp_path / "small", keyring, tenant_disk_bytes=size // 2)
    small.save(alice, block)
    assert not small.path(alice).exists() and small.load(alice) is not None
