"""The row cache never serves a row that SQL would not: every change of an owner's rows, in this
process or another replica, is seen by the next search."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from memos.item import Source
from memos.recall.retrieval import Retriever
from memos.storage.row_cache import OwnerRowCache
from tests.memos.vault_support import VaultEnv, db_url, env  # noqa: F401

T, U = "acme", "alice"
QUERY = "which tea does alice drink in the morning"


def search(env: VaultEnv, vault=None) -> dict[str, object]:
    vault = vault or env.vault
    vector = env.embedder.embed([QUERY])[0]
    return {h.item.id: h.item for h in Retriever(vault).search(T, U, QUERY, vector)}


def seeded(env: VaultEnv) -> str:
    items = env.vault.add_many(
        T,
        U,
        [
            _new("Alice drinks jasmine tea in the morning."),
            _new("Alice walks her dog in the evening."),
        ],
    )
    return items[0].id


def _new(text: str):
    from memos.storage.batch import NewMemory

    return NewMemory(text=text)


def test_a_search_sees_every_change_made_here(env: VaultEnv) -> None:
    tea = seeded(env)
    assert search(env)[tea].text == "Alice drinks jasmine tea in the morning."  # now cached
    env.vault.update(T, tea, metadata={"app": "crm"})
    assert search(env)[tea].sources[0].metadata == {"app": "crm"}
    env.vault.update(T, tea, importance=0.9)
    assert search(env)[tea].importance == 0.9
    env.vault.update(T, tea, text="Alice drinks green tea in the morning.")
    assert search(env)[tea].text == "Alice drinks green tea in the morning."
    env.vault.update(T, tea, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert tea not in search(env)
    env.vault.erase_user(T, U)
    assert search(env) == {}


def test_a_search_sees_another_replicas_changes(env: VaultEnv) -> None:
    tea = seeded(env)
    other = env.second_replica()
    try:
        assert tea in search(env)
        other.update(T, tea, text="Alice drinks oolong tea in the morning.")
        assert search(env)[tea].text == "Alice drinks oolong tea in the morning."
        other.update(T, tea, invalid_at=datetime.now(UTC) - timedelta(days=1))
        found = search(env)
        assert tea not in found or found[tea].invalid_at is not None
        other.delete(T, tea)
        assert tea not in search(env)
        other.erase_user(T, U)
        assert search(env) == {}
    finally:
        other.db.dispose()


def test_a_merge_that_adds_sources_is_seen(env: VaultEnv) -> None:
    tea = seeded(env)
    assert search(env)[tea].sources == []
    from memos.storage.batch import NewMemory

    merged = env.vault.add_many(
        T, U, [NewMemory(text="Alice drinks jasmine tea in the morning.", sources=[Source(request_id="r2")])]
    )
    assert merged[0].id == tea
    assert [s.request_id for s in search(env)[tea].sources] == ["r2"]


def test_hit_counts_are_seen(env: VaultEnv) -> None:
    tea = seeded(env)
    assert search(env)[tea].hits == 0  # cached, text decoded
    env.vault.record_hit_counts(T, {tea: 2})
    item = search(env)[tea]
    assert item.hits == 2 and item.last_hit_at is not None
    assert env.vault.get(T, tea).hits == 2


def test_the_cache_is_bounded_and_exact_per_counter() -> None:
    cache: OwnerRowCache[int] = OwnerRowCache(max_rows=3)
    cache.put((T, "a"), 1, {"m1": 1, "m2": 2})
    assert cache.get((T, "a"), 1, ["m1", "m3"]) == ({"m1": 1}, ["m3"])
    assert cache.get((T, "a"), 2, ["m1"]) == ({}, ["m1"])  # the counter moved: dropped
    assert cache.get((T, "a"), 1, ["m1"]) == ({}, ["m1"])
    cache.put((T, "a"), 5, {"m1": 1})
    cache.put((T, "a"), 4, {"m2": 2})  # an older reader's rows are not mixed in
    assert cache.get((T, "a"), 5, ["m2"]) == ({}, ["m2"])
    cache.put((T, "b"), 1, {"n1": 1, "n2": 2, "n3": 3})  # over the bound: the oldest owner goes
    assert cache.size == 3 and cache.get((T, "a"), 5, ["m1"]) == ({}, ["m1"])
    cache.update(["n2", "zz"], lambda mid, row: row * 10)
    assert cache.get((T, "b"), 1, ["n1", "n2"]) == ({"n1": 1, "n2": 20}, [])
