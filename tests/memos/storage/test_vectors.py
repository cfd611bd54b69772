"""The vector index: LanceDB rows hold no text; the owner cache is validated by the change counter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memos.embeddings import normalise
from memos.storage.vectors import OwnerVectorCache, VectorIndex, _Entry, top_k_cosine


def _vecs(n: int, seed: int = 0) -> np.ndarray:
    return normalise(np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32))


def test_top_k_cosine_is_exact_and_orders_ties_by_id() -> None:
    m = _vecs(50)
    ids = [f"m{i:02d}" for i in range(50)]
    q = m[7]
    got = top_k_cosine(m, ids, q, 5)
    assert got[0][0] == "m07" and abs(got[0][1] - 1.0) < 1e-5
    brute = sorted(((ids[i], float(m[i] @ q)) for i in range(50)), key=lambda kv: (-kv[1], kv[0]))[:5]
    assert [g[0] for g in got] == [b[0] for b in brute]
    twins = np.stack([m[0], m[0], m[1]])
    assert [g[0] for g in top_k_cosine(twins, ["b", "a", "c"], m[0], 2)] == ["a", "b"]
    # duplicate ids collapse
    assert [g[0] for g in top_k_cosine(twins, ["x", "x", "c"], m[0], 3)] == ["x", "c"]
    assert top_k_cosine(np.zeros((0, 16), np.float32), [], q, 3) == []


def test_cache_validation_deltas_and_lru() -> None:
    cache = OwnerVectorCache(max_bytes=10_000)
    key = ("t", "o")
    cache.put(key, _Entry(3, ["a"], _vecs(1)))
    assert cache.get(key, 3) is not None
    assert cache.get(key, 4) is None  # another writer moved the counter: dropped
    assert cache.get(key, 3) is None
    cache.put(key, _Entry(3, ["a"], _vecs(1)))
    cache.apply(key, 3, 4, add_ids=["b"], add_vectors=_vecs(1, 1))
    entry = cache.get(key, 4)
    assert entry is not None and entry.ids == ["a", "b"]
    cache.apply(key, 4, 5, remove_ids=["a"])
    assert cache.get(key, 5).ids == ["b"]
    cache.apply(key, 9, 10, add_ids=["c"], add_vectors=_vecs(1))  # not one step behind: dropped
    assert cache.get(key, 10) is None and cache.get(key, 5) is None
    # LRU bound in bytes
    for i in range(50):
        cache.put(("t", f"o{i}"), _Entry(0, [str(j) for j in range(10)], _vecs(10)))
    assert cache._bytes <= cache.max_bytes
    assert cache.get(("t", "o49"), 0) is not None and cache.get(("t", "o0"), 0) is None
    cache.invalidate("t")
    assert cache.get(("t", "o49"), 0) is None


def test_a_search_during_our_own_write_keeps_the_entry() -> None:
    """Between a local write's commit (counter bumped) and its apply, a search uses the entry as it
    was; without a local write in flight, a newer counter means another replica wrote: dropped."""
    cache = OwnerVectorCache(max_bytes=100_000)
    key = ("t", "o")
    cache.put(key, _Entry(3, ["a"], _vecs(1)))
    with cache.writing(key):
        assert cache.get(key, 4) is not None  # our write committed, not yet applied
        cache.apply(key, 3, 4, add_ids=["b"], add_vectors=_vecs(1, 1))
    assert cache.get(key, 4).ids == ["a", "b"]
    assert cache.get(key, 3) is None  # a caller whose counter predates the entry: not served...
    assert cache.get(key, 4) is not None  # ...and the entry is kept for the caller's recheck
    assert cache.get(key, 5) is None  # nobody of ours is writing: another replica moved it
    assert cache.get(key, 4) is None  # dropped


def test_appends_grow_the_buffer_in_place_without_disturbing_older_entries() -> None:
    cache = OwnerVectorCache(max_bytes=10_000_000)
    key = ("t", "o")
    start = _vecs(100)
    cache.put(key, _Entry(0, [f"m{i}" for i in range(100)], start))
    older = cache.get(key, 0)
    added = _vecs(30, 7)
    for i in range(30):
        cache.apply(key, i, i + 1, add_ids=[f"n{i}"], add_vectors=added[i : i + 1])
    entry = cache.get(key, 30)
    assert entry is not None and len(entry.ids) == 130 and entry.matrix.shape == (130, start.shape[1])
    assert np.array_equal(entry.matrix[:100], start) and np.array_equal(entry.matrix[100:], added)
    assert entry.buffer.shape[0] < 130 * 2  # grown by half at a time, not per write
    assert older.matrix.shape[0] == 100 and np.array_equal(older.matrix, start)
    hits = top_k_cosine(entry.matrix, entry.ids, added[29], 1)
    assert hits[0][0] == "n29"


def test_index_roundtrip_and_no_text(tmp_path: Path) -> None:
    index = VectorIndex(str(tmp_path / "v"))
    m = _vecs(20)
    index.add("acme", "owner-key-1", [f"id{i}.1" for i in range(10)], m[:10])
    index.add("acme", "owner-key-2", [f"id{i}.1" for i in range(10, 20)], m[10:])
    got = index.search("acme", "owner-key-1", 1, m[3], 3)
    assert got[0][0] == "id3.1"
    assert all(g[0] in {f"id{i}.1" for i in range(10)} for g in got)
    assert index.search("globex", "owner-key-1", 1, m[3], 3) == []
    # the LanceDB path agrees with the cache path
    assert index.search_lance("acme", "owner-key-1", m[3], 1)[0][0] == "id3.1"
    index.delete("acme", ["id3.1"])
    assert "id3.1" not in [g[0] for g in index.search("acme", "owner-key-1", 2, m[3], 3)]
    index.delete_owner("acme", "owner-key-1")
    assert index.search("acme", "owner-key-1", 3, m[3], 3) == []
    assert index.search("acme", "owner-key-2", 1, m[12], 1)[0][0] == "id12.1"
    index.drop_tenant("acme")
    assert index.search("acme", "owner-key-2", 2, m[12], 1) == []


def test_the_index_applies_this_processs_writes_to_its_cache(tmp_path: Path) -> None:
    """The vault says what a committed write changed (`changed`); the cache takes it as a delta when
    it was at the counter before the write, keeps the entry meanwhile (`writing`), else drops it."""
    index = VectorIndex(str(tmp_path / "v"))
    m = _vecs(3)
    key = ("acme", "o")
    index.add("acme", "o", ["a.1", "b.1"], m[:2])
    index.warm("acme", "o", m.shape[1], 1)
    with index.writing("acme", "o"):
        index.add("acme", "o", ["c.1"], m[2:])
        assert index.cache.get(key, 2) is not None  # committed, not yet told: the entry is kept
        index.changed("acme", "o", 1, 2, added_ids=["c.1"], added=m[2:], removed_ids=["a.1"])
    assert index.cache.get(key, 2).ids == ["b.1", "c.1"]
    index.changed("acme", "o", 2, 2)  # nothing moved
    assert index.cache.get(key, 2) is not None
    index.changed("acme", "o", 5, 6)  # not one step behind: dropped
    assert index.cache.get(key, 6) is None and index.cache.get(key, 2) is None


def test_vectors_whose_discard_failed_are_deleted_at_the_retry(tmp_path: Path) -> None:
    index = VectorIndex(str(tmp_path / "v"))
    m = _vecs(3)
    index.add("acme", "o", ["a.1", "b.1", "c.1"], m)
    real_delete = index.delete

    def full_disk(tenant: str, ids: object) -> None:
        raise OSError(28, "No space left on device")

    index.delete = full_disk  # type: ignore[method-assign]
    index.discard("acme", ["a.1"])  # said (a warning), kept for the retry
    index.retry_discarded()  # fails again: kept again
    index.delete = real_delete  # type: ignore[method-assign]
    index.retry_discarded()
    ids, _ = index.load_owner("acme", "o", m.shape[1])
    assert sorted(ids) == ["b.1", "c.1"]
    with pytest.raises(RuntimeError), index.undone_on_failure("acme", written := ["b.1"]):
        raise RuntimeError("the transaction failed")
    assert written == ["b.1"] and index.load_owner("acme", "o", m.shape[1])[0] == ["c.1"]


def test_owner_too_large_for_the_cache_is_searched_in_lancedb(tmp_path: Path) -> None:
    index = VectorIndex(str(tmp_path / "v"), cache_bytes=100)
    m = _vecs(30)
    index.add("acme", "big", [f"id{i}.1" for i in range(30)], m)
    assert index.search("acme", "big", 1, m[5], 1)[0][0] == "id5.1"
    assert index.cache.get(("acme", "big"), 1) is None


def test_large_owner_is_served_from_lancedb_while_the_cache_loads(tmp_path: Path) -> None:
    import time

    index = VectorIndex(str(tmp_path / "v"), sync_load_max=5)
    m = _vecs(30)
    index.add("acme", "big", [f"id{i}.1" for i in range(30)], m)
    assert index.search("acme", "big", 7, m[9], 1)[0][0] == "id9.1"  # LanceDB, cache loading behind
    deadline = time.monotonic() + 10
    while index.cache.get(("acme", "big"), 7) is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert index.search("acme", "big", 7, m[11], 1)[0][0] == "id11.1"


def test_a_search_behind_the_cache_rechecks_the_counter_instead_of_reloading(tmp_path: Path) -> None:
    """A search whose counter was read just before a write landed finds the cache ahead: it reads the
    counter again and is served from the cache; without a recheck it loads from LanceDB."""
    index = VectorIndex(str(tmp_path / "v"))
    m = _vecs(10)
    index.add("acme", "o", [f"id{i}.1" for i in range(10)], m)
    entry = index.warm("acme", "o", m.shape[1], 5)
    loads: list[str] = []
    real_load = index.load_owner

    def counting_load(*args):  # type: ignore[no-untyped-def]
        loads.append("load")
        return real_load(*args)

    index.load_owner = counting_load  # type: ignore[method-assign]
    assert index.search("acme", "o", 4, m[2], 1, recheck=lambda: 5)[0][0] == "id2.1"
    assert loads == [] and index.cache.get(("acme", "o"), 5) is entry
    assert index.search("acme", "o", 4, m[2], 1)[0][0] == "id2.1"  # no recheck: loaded
    assert loads == ["load"]


def test_compaction_keeps_only_recent_table_versions(tmp_path: Path) -> None:
    """Every add is a table version and adds slow down as versions pile up: compaction drops those
    older than the retention."""
    from datetime import timedelta

    from memos.storage.vectors import table_name

    index = VectorIndex(
        str(tmp_path / "v"), compact_every=10_000, version_retention=timedelta(milliseconds=1)
    )
    m = _vecs(30)
    for i in range(30):
        index.add("acme", "o", [f"id{i}.1"], m[i : i + 1])
    table = index._table("acme", m.shape[1], create=False)
    assert len(table.list_versions()) > 30
    index.compact_now("acme")
    assert len(table.list_versions()) <= 2
    assert table.name == table_name("acme", m.shape[1])
    assert index.search_lance("acme", "o", m[7], 1)[0][0] == "id7.1"


def test_an_erasure_purge_beside_writes_and_compaction_leaves_a_working_table(tmp_path: Path) -> None:
    """The purge deletes files no committed version references; run beside an add or a compaction in
    flight it would delete their new files and break the table. Writes and the purge take turns."""
    import threading

    index = VectorIndex(str(tmp_path / "v"), compact_every=7)
    m = _vecs(80)
    index.add("acme", "gone", ["g0.1"], m[:1])
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            for i in range(60):
                index.add("acme", "keep", [f"k{i}.1"], m[i : i + 1])
            index.compact_now("acme")
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    def erase() -> None:
        try:
            while not done.is_set():
                index.add("acme", "gone", ["g1.1"], m[79:80])
                index.delete_owner("acme", "gone", purge=True)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write), threading.Thread(target=erase)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    ids, _ = index.load_owner("acme", "keep", m.shape[1])
    assert sorted(ids) == sorted(f"k{i}.1" for i in range(60))
    index.add("acme", "keep", ["after.1"], m[70:71])  # still writable
    assert index.search_lance("acme", "keep", m[70], 1)[0][0] == "after.1"


def test_an_erasure_purge_waits_for_another_process_writing_the_table(tmp_path: Path) -> None:
    """The purge deletes files no committed version references, so it must not run while another
    process (a replica, a worker) has an add in flight on the same local table: the guard is also a
    file lock. A child process holds the shared side; this process's exclusive side waits for it."""
    import subprocess
    import sys
    import threading

    uri, held, release = tmp_path / "vectors", tmp_path / "held", tmp_path / "release"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, pathlib\n"
            "from memos.storage.vectors import VectorIndex\n"
            "uri, held, release = sys.argv[1:4]\n"
            "with VectorIndex(uri)._guard('mem_t_16').shared():\n"
            "    pathlib.Path(held).touch()\n"
            "    while not pathlib.Path(release).exists():\n"
            "        time.sleep(0.01)\n",
            str(uri),
            str(held),
            str(release),
        ]
    )
    try:
        deadline = 60.0
        while not held.exists():
            assert child.poll() is None and deadline > 0
            deadline -= 0.01
            threading.Event().wait(0.01)
        acquired = threading.Event()

        def purge() -> None:
            with VectorIndex(str(uri))._guard("mem_t_16").exclusive():
                acquired.set()

        thread = threading.Thread(target=purge, daemon=True)
        thread.start()
        assert not acquired.wait(0.5)  # the other process's add is still in flight
        release.touch()
        assert acquired.wait(60)
        thread.join(10)
        # Shared holders of this process and another's coexist (adds never wait for each other).
        index = VectorIndex(str(uri))
        with index._guard("mem_t_16").shared(), VectorIndex(str(uri))._guard("mem_t_16").shared():
            pass
    finally:
        release.touch()
        assert child.wait(60) == 0
