"""MemVault on SQLite and PostgreSQL: versions, history, rollback, delete, erase, read-your-writes,
tenant isolation, duplicates, cursors, replicas, and encryption at rest."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from memos.item import Source, State
from memos.keys.crypto import DecryptionError
from memos.recall.retrieval import RetrievalParams, Retriever
from memos.storage.batch import NewMemory
from memos.storage.tables import MemoryRow, MemoryVersionRow, OwnerStatsRow, PostingRow
from memos.storage.vault import MemoryNotFound, VersionNotFound
from tests.memos.vault_support import VaultEnv, db_url, env  # noqa: F401 - fixtures


def search(env: VaultEnv, tenant: str, owner: str, query: str, **kw) -> list[str]:
    vector = env.embedder.embed([query])[0]
    hits = Retriever(env.vault).search(tenant, owner, query, vector, RetrievalParams(**kw))
    return [h.item.text for h in hits]


def test_add_get_roundtrip(env: VaultEnv) -> None:
    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    item = env.vault.add(
        "acme",
        "alice",
        "Alice keeps bees on her roof",
        sources=[Source(request_id="r1", message_index=2, session="s1", metadata={"dia_id": "D1:3"})],
        observed_at=when,
        importance=0.8,
        expires_at=when + timedelta(days=400),
    )
    got = env.vault.get("acme", item.id)
    assert got is not None
    assert got.text == "Alice keeps bees on her roof"
    assert got.owner == "alice" and got.tenant == "acme"
    assert got.version == 1 and got.state == State.ACTIVE
    assert got.observed_at == when
    assert got.importance == pytest.approx(0.8)
    assert got.sources[0].metadata == {"dia_id": "D1:3"}
    assert got.sources[0].request_id == "r1" and got.sources[0].message_index == 2
    assert got.sources[0].session == "s1"


def test_read_your_writes_dense_and_keyword(env: VaultEnv) -> None:
    for i in range(20):
        env.vault.add("acme", "alice", f"filler memory number {i} about weather")
    item = env.vault.add("acme", "alice", "The secret launch code is zebra-quartz")
    assert search(env, "acme", "alice", "zebra-quartz launch code")[0] == item.text
    # keyword alone (no vector) finds it too
    hits = Retriever(env.vault).search("acme", "alice", "zebra quartz", None)
    assert hits[0].item.id == item.id


def test_versions_history_and_rollback(env: VaultEnv) -> None:
    v = env.vault
    item = v.add("acme", "alice", "Alice lives in Paris")
    v2 = v.update("acme", item.id, text="Alice lives in Berlin")
    assert v2.version == 2 and v2.text == "Alice lives in Berlin"
    v3 = v.update("acme", item.id, importance=0.9, metadata={"source": "form"})
    assert v3.version == 3 and v3.text == "Alice lives in Berlin"
    history = v.history("acme", item.id)
    assert [h.version for h in history] == [1, 2, 3]
    assert [h.text for h in history] == [
        "Alice lives in Paris",
        "Alice lives in Berlin",
        "Alice lives in Berlin",
    ]
    assert history[2].sources[0].metadata == {"source": "form"}
    # the index follows the current text
    assert search(env, "acme", "alice", "Berlin") == ["Alice lives in Berlin"]
    assert search(env, "acme", "alice", "Paris", min_score=0.3) == []
    rolled = v.rollback("acme", item.id, 1)
    assert rolled.version == 4 and rolled.text == "Alice lives in Paris"
    assert v.version_reasons("acme", item.id)[4] == "rollback:1"
    assert len(v.history("acme", item.id)) == 4
    assert search(env, "acme", "alice", "Paris")[0] == "Alice lives in Paris"
    with pytest.raises(VersionNotFound):
        v.rollback("acme", item.id, 99)


def test_state_changes_leave_and_reenter_the_indices(env: VaultEnv) -> None:
    v = env.vault
    item = v.add("acme", "alice", "Alice drives a red tractor")
    v.update("acme", item.id, state=State.SUPERSEDED, invalid_at=datetime.now(UTC))
    assert search(env, "acme", "alice", "red tractor") == []
    assert v.stats("acme", "alice").doc_count == 0
    assert v.list("acme", "alice")[0] == []
    assert [i.id for i in v.list("acme", "alice", states=["superseded"])[0]] == [item.id]
    v.rollback("acme", item.id, 1)
    assert search(env, "acme", "alice", "red tractor") == ["Alice drives a red tractor"]
    assert v.stats("acme", "alice").doc_count == 1


def test_delete_removes_text_everywhere(env: VaultEnv) -> None:
    v = env.vault
    item = v.add("acme", "alice", "Alice's locker combination is 4812")
    v.update("acme", item.id, text="Alice's locker combination is 9921")
    v.delete("acme", item.id)
    assert v.get("acme", item.id) is None
    with pytest.raises(MemoryNotFound):
        v.history("acme", item.id)
    with pytest.raises(MemoryNotFound):
        v.update("acme", item.id, text="x")
    with pytest.raises(MemoryNotFound):
        v.delete("acme", item.id)
    assert search(env, "acme", "alice", "locker combination") == []
    with env.db.session() as s:
        assert s.execute(select(PostingRow).where(PostingRow.memory_id == item.id)).all() == []
        versions = (
            s.execute(select(MemoryVersionRow).where(MemoryVersionRow.memory_id == item.id)).scalars().all()
        )
        assert len(versions) == 3 and all(r.payload is None for r in versions)
        assert s.get(MemoryRow, item.id).payload is None


def test_erase_user_removes_every_trace_and_spares_others(env: VaultEnv) -> None:
    v = env.vault
    for i in range(5):
        v.add("acme", "alice", f"alice fact {i} aardvark", sources=[Source(session="s")])
    keep = v.add("acme", "bob", "bob likes aardvark stew")
    assert v.erase_user("acme", "alice") == 5
    assert v.list("acme", "alice")[0] == []
    assert search(env, "acme", "alice", "aardvark") == []
    assert search(env, "acme", "bob", "aardvark") == [keep.text]
    with env.db.session() as s:
        for model in (MemoryRow, MemoryVersionRow, PostingRow):
            rows = s.execute(select(model).where(model.owner == "alice")).all()
            assert rows == [], model.__tablename__
    okey = v.owner_key("acme", "alice")
    assert v.vectors.owner_count_hint("acme", okey, 384) == 0


def test_tenant_isolation(env: VaultEnv) -> None:
    v = env.vault
    item = v.add("acme", "alice", "acme's alice owns a sailboat")
    other = v.add("globex", "alice", "globex's alice owns a sailboat")
    assert v.get("globex", item.id) is None
    with pytest.raises(MemoryNotFound):
        v.update("globex", item.id, text="hijack")
    with pytest.raises(MemoryNotFound):
        v.delete("globex", item.id)
    with pytest.raises(MemoryNotFound):
        v.history("globex", item.id)
    assert search(env, "acme", "alice", "sailboat") == [item.text]
    assert search(env, "globex", "alice", "sailboat") == [other.text]
    assert [i.id for i in v.list("globex", "alice")[0]] == [other.id]
    assert v.erase_user("globex", "alice") == 1
    assert v.get("acme", item.id) is not None


def test_owner_isolation_within_tenant(env: VaultEnv) -> None:
    env.vault.add("acme", "alice", "alice has a pet iguana")
    assert search(env, "acme", "bob", "iguana") == []


def test_exact_duplicates_merge_sources(env: VaultEnv) -> None:
    v = env.vault
    a = v.add("acme", "alice", "I love jazz.", sources=[Source(metadata={"dia_id": "D1:1"})])
    b = v.add("acme", "alice", "  i LOVE jazz ", sources=[Source(metadata={"dia_id": "D2:5"})])
    assert b.id == a.id and b.version == 2
    assert [s.metadata["dia_id"] for s in b.sources] == ["D1:1", "D2:5"]
    c = v.add("acme", "alice", "I love jazz.", sources=[Source(metadata={"dia_id": "D1:1"})])
    assert c.id == a.id and c.version == 2  # nothing new: no new version
    # duplicates inside one batch collapse too
    items = v.add_many(
        "acme",
        "alice",
        [
            NewMemory("Blue is nice", [Source(metadata={"n": 1})]),
            NewMemory("blue is nice", [Source(metadata={"n": 2})]),
        ],
    )
    assert items[0].id == items[1].id
    assert [s.metadata["n"] for s in v.get("acme", items[0].id).sources] == [1, 2]
    assert v.stats("acme", "alice").doc_count == 2
    d = v.add("acme", "alice", "I love jazz.", dedupe=False)
    assert d.id != a.id


def test_list_cursor_pages_newest_first(env: VaultEnv) -> None:
    v = env.vault
    ids = [v.add("acme", "alice", f"memory {i}").id for i in range(7)]
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = v.list("acme", "alice", limit=3, cursor=cursor)
        seen += [i.id for i in page]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    with pytest.raises(ValueError):
        v.list("acme", "alice", cursor="garbage!")


def test_record_hits_is_not_a_version(env: VaultEnv) -> None:
    item = env.vault.add("acme", "alice", "hit me")
    env.vault.record_hit_counts("acme", {item.id: 2, "mem_absent": 1})
    env.vault.record_hit_counts("globex", {item.id: 5})  # another tenant: no effect
    got = env.vault.get("acme", item.id)
    assert got.hits == 2 and got.last_hit_at is not None and got.version == 1


def test_replicas_stay_correct(env: VaultEnv) -> None:
    a = env.vault
    b = env.second_replica()
    a.add("acme", "alice", "the first memory about kiwis")
    assert search(env, "acme", "alice", "kiwis") == ["the first memory about kiwis"]
    vec = env.embedder.embed(["kiwis"])[0]
    assert [h.item.text for h in Retriever(b).search("acme", "alice", "kiwis", vec)] == [
        "the first memory about kiwis"
    ]
    # b writes and deletes; a (whose cache holds the owner's vectors) must see both at once
    new = b.add("acme", "alice", "kiwis are fuzzy fruit")
    got = [h.item.id for h in Retriever(a).search("acme", "alice", "kiwis fuzzy", vec)]
    assert new.id in got
    b.delete("acme", new.id)
    got = [h.item.id for h in Retriever(a).search("acme", "alice", "kiwis fuzzy", vec)]
    assert new.id not in got
    b.db.dispose()


def test_concurrent_adds_keep_statistics_consistent(env: VaultEnv) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(5):
                env.vault.add("acme", "alice", f"thread {n} memory {i} walrus")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with env.db.session() as s:
        seqs = [r[0] for r in s.execute(select(MemoryRow.seq).where(MemoryRow.owner == "alice")).all()]
        stats = s.get(OwnerStatsRow, ("acme", "alice"))
    assert sorted(seqs) == list(range(1, 21))
    assert stats.doc_count == 20
    assert len(search(env, "acme", "alice", "walrus", top_k=50, candidates=50)) == 20


def test_neighbouring_turns_as_context(env: VaultEnv) -> None:
    v = env.vault
    v.add("acme", "alice", "we talked about the trip", sources=[Source(session="s1")])
    v.add("acme", "alice", "it was to Kyoto in April", sources=[Source(session="s1")])
    v.add("acme", "alice", "the cherry blossoms were gorgeous", sources=[Source(session="s1")])
    v.add("acme", "alice", "unrelated other session", sources=[Source(session="s2")])
    vec = env.embedder.embed(["Kyoto"])[0]
    params = RetrievalParams(top_k=1, neighbours=1)
    hits = Retriever(v).search("acme", "alice", "Kyoto", vec, params)
    assert hits[0].item.text == "it was to Kyoto in April"
    assert [c.text for c in hits[0].context] == [
        "we talked about the trip",
        "the cherry blossoms were gorgeous",
    ]


def test_payloads_are_ciphertext_bound_to_their_row(env: VaultEnv) -> None:
    v = env.vault
    a = v.add("acme", "alice", "canary-7f3a lives here")
    b = v.add("acme", "alice", "another memory")
    with env.db.session() as s:
        row_a = s.get(MemoryRow, a.id)
        assert b"canary" not in row_a.payload
        ver = s.get(MemoryVersionRow, (a.id, 1))
        assert b"canary" not in ver.payload
        # a ciphertext moved onto another row does not decrypt
        s.execute(text("UPDATE memories SET payload = :p WHERE id = :id"), {"p": row_a.payload, "id": b.id})
    with pytest.raises(DecryptionError):
        v.get("acme", b.id)


def test_blind_index_holds_no_plaintext(env: VaultEnv) -> None:
    env.vault.add("acme", "alice", "marmalade xylophone canary-4b1e")
    with env.db.session() as s:
        terms = [r[0] for r in s.execute(select(PostingRow.term)).all()]
        hashes = [r[0] for r in s.execute(select(MemoryRow.content_hash)).all()]
    assert terms and all(t not in {"marmalade", "xylophone", "canary", "4b1e"} for t in terms)
    assert not any("marmalade" in t or "canary" in t for t in terms + hashes)


def test_no_plaintext_on_disk_sqlite(env: VaultEnv) -> None:
    if not env.db.is_sqlite:
        pytest.skip("byte scan of the data directory applies to the embedded store")
    canary = "zq-canary-5d2c91"
    item = env.vault.add(
        "acme", "alice", f"my passphrase is {canary}", sources=[Source(metadata={"note": canary})]
    )
    env.vault.update("acme", item.id, text=f"the passphrase is still {canary}")
    env.vault.vectors.compact_now("acme")
    env.db.dispose()
    found = [p for p in env.data_dir.rglob("*") if p.is_file() and canary.encode() in p.read_bytes()]
    assert found == []
