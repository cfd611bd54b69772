"""Another replica's writes reach this replica's cached vectors as deltas read from the vector log
(memos.storage.vector_log), not as a reload of the whole owner; a gap in the log (pruned, erased)
falls back to the reload. On SQLite and PostgreSQL, with real LanceDB."""

from __future__ import annotations

from sqlalchemy import func, select

from memos.storage.tables import VectorChangeRow
from memos.storage.vault import MemVault
from memos.storage.vectors import VectorIndex
from tests.memos.vault_support import VaultEnv, db_url, env  # noqa: F401 - fixtures


def _counting_loads(index: VectorIndex) -> list[str]:
    loads: list[str] = []
    real = index.load_owner

    def load(*args):  # type: ignore[no-untyped-def]
        loads.append("load")
        return real(*args)

    index.load_owner = load  # type: ignore[method-assign]
    return loads


def _dense_ids(vault: MemVault, query: str, env: VaultEnv, k: int = 10) -> list[str]:
    vec = env.embedder.embed([query])[0]
    return [mid for mid, _vid, _s in vault.dense("acme", "alice", vec, k)]


def test_another_replicas_writes_arrive_as_deltas(env: VaultEnv) -> None:
    a = env.vault
    b = env.second_replica()
    try:
        first = [a.add("acme", "alice", f"alice memory {i} about walruses") for i in range(5)]
        _dense_ids(b, "walruses", env)  # b caches alice's vectors
        loads = _counting_loads(b.vectors)
        # a adds, replaces a text (a new vector), deletes and changes metadata only
        new = a.add("acme", "alice", "the zebra stripes memory")
        edited = a.update("acme", first[0].id, text="alice now keeps kangaroos")
        a.delete("acme", first[1].id)
        a.update("acme", first[2].id, importance=0.9)
        got = _dense_ids(b, "zebra stripes", env)
        assert got[0] == new.id
        assert _dense_ids(b, "kangaroos", env)[0] == edited.id
        assert first[1].id not in _dense_ids(b, "walruses", env)
        assert loads == [] and b.vectors.catch_ups == 1  # four writes, one catch-up, no reload
        key = ("acme", b.owner_key("acme", "alice"))
        entry = b.vectors.cache.get(key, b.stats("acme", "alice").changes)
        assert entry is not None and len(entry) == 5
        vids = {vid for _m, vid, _s in b.dense("acme", "alice", env.embedder.embed(["x"])[0], 10)}
        assert f"{first[0].id}.1" not in vids  # the replaced vector left b's cache too
    finally:
        b.db.dispose()


def test_a_gap_in_the_log_reloads_the_owner(env: VaultEnv) -> None:
    a = env.vault
    b = env.second_replica()
    try:
        a.add("acme", "alice", "alice likes walruses")
        _dense_ids(b, "walruses", env)
        loads = _counting_loads(b.vectors)
        new = a.add("acme", "alice", "the zebra stripes memory")
        with a.db.session() as session:  # as pruning would
            session.execute(VectorChangeRow.__table__.delete())  # type: ignore[attr-defined]
        assert _dense_ids(b, "zebra stripes", env)[0] == new.id
        assert loads == ["load"] and b.vectors.catch_ups == 0
    finally:
        b.db.dispose()


def test_erasure_removes_the_owners_log_and_replicas_reload(env: VaultEnv) -> None:
    a = env.vault
    b = env.second_replica()
    try:
        for i in range(3):
            a.add("acme", "alice", f"alice memory {i}")
        a.add("acme", "bob", "bob memory")
        _dense_ids(b, "alice memory", env)
        a.erase_user("acme", "alice")
        with a.db.session() as session:
            left = session.execute(
                select(func.count()).select_from(VectorChangeRow).where(VectorChangeRow.owner == "alice")
            ).scalar_one()
        assert left == 0
        assert _dense_ids(b, "alice memory", env) == []
    finally:
        b.db.dispose()


def test_the_log_keeps_only_recent_changes(env: VaultEnv) -> None:
    log = env.vault._vector_log
    log.keep, log.prune_every = 10, 5
    for i in range(30):
        env.vault.add("acme", "alice", f"memory number {i}")
    with env.db.session() as session:
        kept = session.execute(select(func.count()).select_from(VectorChangeRow)).scalar_one()
    assert kept <= 15
    changes = env.vault.stats("acme", "alice").changes
    assert log.since("acme", "alice", changes - 3, changes) is not None
    assert log.since("acme", "alice", 0, changes) is None
