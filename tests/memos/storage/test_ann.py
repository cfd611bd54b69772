"""The approximate index for large owners (memos.storage.ann) and how the owner cache uses it: exact
below the threshold, product-quantised codes with an exact refine above it, which take writes as
deltas, are built in the background without losing the writes made meanwhile, and leave nothing on
disk when the owner is erased."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from memos.db import Database
from memos.embeddings import HashEmbedder, normalise
from memos.keys.crypto import MasterKey
from memos.keys.keyring import Keyring
from memos.storage.ann import PqParams, PqScan
from memos.storage.batch import NewMemory
from memos.storage.vault import MemVault
from memos.storage.vectors import OwnerVectorCache, VectorIndex, _AnnEntry, _Entry, top_k_cosine
from tests.support.bytescan import describe, scan

DIM = 32


def _clustered(n: int, seed: int = 0, centres: int = 40) -> np.ndarray:
    """Unit vectors around `centres` random directions (embeddings cluster by topic)."""
    rng = np.random.default_rng(seed)
    c = normalise(rng.standard_normal((centres, DIM)).astype(np.float32))
    pick = rng.integers(0, centres, n)
    return normalise(c[pick] + 0.08 * rng.standard_normal((n, DIM)).astype(np.float32))


def _ids(n: int, prefix: str = "m") -> list[str]:
    return [f"{prefix}{i}.1" for i in range(n)]


def _recall(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> float:
    return len({g[0] for g in got} & {w[0] for w in want}) / max(1, len(want))


def test_scoring_every_row_is_the_exact_search() -> None:
    m, ids = _clustered(3000), _ids(3000)
    index = PqScan.build(ids, m, PqParams(seed=3))
    for q in _clustered(20, seed=9):
        got = index.search(q, 12, depth=3000)
        want = top_k_cosine(m, ids, q, 12)
        assert [g[0] for g in got] == [w[0] for w in want]
        assert np.allclose([g[1] for g in got], [w[1] for w in want], atol=1e-5)


def test_the_default_depth_finds_the_exact_top_12_scoring_a_fraction() -> None:
    m, ids = _clustered(20_000), _ids(20_000)
    index = PqScan.build(ids, m)
    queries = _clustered(50, seed=5)
    recall = [_recall(index.search(q, 12), top_k_cosine(m, ids, q, 12)) for q in queries]
    assert float(np.mean(recall)) >= 0.98
    assert index.depth(12) < 20_000 / 4  # it really scores only the codes' best rows exactly


def test_the_codes_pick_candidates_where_few_rows_are_scored() -> None:
    """At a shallow depth the codes alone choose which rows are scored: many of the right ones even
    from 8 codes of 4 bits (dimension 32), where codes that meant nothing would find ~100/20,000."""
    m, ids = _clustered(20_000, centres=400), _ids(20_000)
    index = PqScan.build(ids, m, PqParams(depth=100, depth_per_k=1))
    queries = _clustered(50, seed=5, centres=400)
    recall = [_recall(index.search(q, 12), top_k_cosine(m, ids, q, 12)) for q in queries]
    assert float(np.mean(recall)) >= 0.4


def test_a_dimension_the_codes_do_not_divide_is_padded() -> None:
    rng = np.random.default_rng(4)
    m = normalise(rng.standard_normal((3000, 30)).astype(np.float32))
    ids = _ids(3000)
    index = PqScan.build(ids, m)
    q = m[17]
    assert index.search(q, 1)[0][0] == ids[17]
    assert index.codes.d == 32


def test_adds_and_removals_are_deltas_older_readers_do_not_see() -> None:
    m, ids = _clustered(2000), _ids(2000)
    index = PqScan.build(ids, m)
    new = _clustered(3, seed=11)
    grown = index.added(["n0.1", "n1.1", "n2.1"], new)
    assert grown.search(new[1], 1)[0][0] == "n1.1"
    assert len(grown) == 2003 and len(index) == 2000
    assert "n1.1" not in [h[0] for h in index.search(new[1], 5)]
    gone = grown.removed(["m7.1", "n1.1"])
    assert "m7.1" not in [h[0] for h in gone.search(m[7], 20, depth=2000)]
    assert "n1.1" not in [h[0] for h in gone.search(new[1], 20)]
    assert len(gone) == 2001
    row = ids.index("m7.1")
    assert not np.any(gone.base[~gone.alive]), row  # a removed vector is zeroed, not only masked
    live, matrix = gone.vectors()
    assert "m7.1" not in live and "n1.1" not in live and matrix.shape == (2001, DIM)


def test_small_owners_stay_exact_and_large_ones_get_an_index_in_the_background() -> None:
    cache = OwnerVectorCache(max_bytes=100_000_000, ann_threshold=1000)
    small, big = ("t", "small"), ("t", "big")
    m = _clustered(1500)
    cache.put(small, cache.indexed(_ids(999), m[:999], 1))
    assert isinstance(cache.get(small, 1), _Entry)
    q = m[3]
    assert cache.get(small, 1).search(q, 12) == top_k_cosine(m[:999], _ids(999), q, 12)  # bit for bit
    cache.put(big, _Entry(1, _ids(1500), m))  # e.g. grown past the threshold by writes
    cache.wait_for_builds(60)
    entry = cache.get(big, 1)
    assert isinstance(entry, _AnnEntry) and len(entry) == 1500
    assert cache.index_stats.builds == 1 and cache.index_stats.last_build_rows == 1500
    # the index shrinking below half the threshold goes back to exact
    cache.apply(big, 1, 2, remove_ids=_ids(1500)[:1100])
    assert isinstance(cache.get(big, 2), _Entry) and len(cache.get(big, 2)) == 400


def test_writes_during_a_build_are_replayed_onto_the_new_index() -> None:
    cache = OwnerVectorCache(max_bytes=100_000_000, ann_threshold=1000)
    key = ("t", "o")
    m = _clustered(1200)
    release = threading.Event()
    real_build = cache._build

    def slow_build(ids: list[str], matrix: np.ndarray) -> PqScan:
        release.wait(30)  # hold the build until the writes below have been applied
        return real_build(ids, matrix)

    cache._build = slow_build  # type: ignore[method-assign]
    cache.put(key, _Entry(1, _ids(1200), m))  # starts the build
    new = _clustered(2, seed=4)
    cache.apply(key, 1, 2, add_ids=["n0.1"], add_vectors=new[:1])
    cache.apply(key, 2, 3, add_ids=["n1.1"], add_vectors=new[1:], remove_ids=["m5.1", "n0.1"])
    assert isinstance(cache.get(key, 3), _Entry)  # still exact while the build runs
    release.set()
    cache.wait_for_builds(60)
    entry = cache.get(key, 3)
    assert isinstance(entry, _AnnEntry) and entry.changes == 3 and len(entry) == 1200
    assert entry.search(new[1], 1)[0][0] == "n1.1"
    assert "m5.1" not in entry.index.vectors()[0] and "n0.1" not in entry.index.vectors()[0]


def test_a_build_is_dropped_when_the_owner_changed_elsewhere_meanwhile() -> None:
    cache = OwnerVectorCache(max_bytes=100_000_000, ann_threshold=1000)
    key = ("t", "o")
    m = _clustered(1200)
    release = threading.Event()
    real_build = cache._build

    def slow_build(ids: list[str], matrix: np.ndarray) -> PqScan:
        release.wait(30)
        return real_build(ids, matrix)

    cache._build = slow_build  # type: ignore[method-assign]
    cache.put(key, _Entry(1, _ids(1200), m))
    assert cache.get(key, 2) is None  # another replica wrote: dropped
    cache.put(key, _Entry(2, _ids(1100), m[:1100]))  # reloaded (starts no second build meanwhile)
    release.set()
    cache.wait_for_builds(60)
    entry = cache.get(key, 2)
    assert entry is not None and len(entry) == 1100  # the stale build did not replace it


def test_erasing_an_indexed_owner_leaves_no_vector_bytes(tmp_path: Path) -> None:
    """The erasure byte scan with the approximate index on: the owner's index is in memory only and
    dropped with it; LanceDB's files hold none of its vectors afterwards."""
    db = Database(f"sqlite:///{tmp_path / 'memos.db'}")
    db.create_all()
    try:
        index = VectorIndex(str(tmp_path / "vectors"), ann_threshold=150, sync_load_max=10_000)
        vault = MemVault(db, Keyring(db, MasterKey.generate()), index, HashEmbedder())
        texts = [f"alice note {i} about the zorblatt number {i * 7}" for i in range(200)]
        vault.add_many("acme", "alice", [_new(t) for t in texts])
        vault.add_many("acme", "bob", [_new("bob restores klaxifor motorcycles")])
        assert vault.nearest("acme", "alice", texts[17], 1)[0][0].text == texts[17]  # exact meanwhile
        index.cache.wait_for_builds(60)  # the index, built behind the first search
        assert vault.nearest("acme", "alice", texts[17], 1)[0][0].text == texts[17]
        okey = vault.owner_key("acme", "alice")
        assert isinstance(index.cache.get(("acme", okey), vault.stats("acme", "alice").changes), _AnnEntry)
        stored = index.load_owner("acme", okey, HashEmbedder().dim)[1]
        secrets: dict[str, str | bytes] = {
            f"alice vector {i}": np.asarray(v, "<f4").tobytes()[:64] for i, v in enumerate(stored[:40])
        }
        assert scan(tmp_path, secrets)  # the scan sees them before
        assert vault.erase_user("acme", "alice") == 200
        assert index.cache.get(("acme", okey), vault.stats("acme", "alice").changes) is None
        leftover = scan(tmp_path, secrets)
        assert not leftover, describe(leftover)
        assert vault.nearest("acme", "alice", texts[17], 1) == []
        assert vault.nearest("acme", "bob", "klaxifor motorcycles", 1)[0][0].owner == "bob"
    finally:
        db.dispose()


def _new(text: str) -> NewMemory:
    return NewMemory(text=text)
