"""The vector index: LanceDB at `settings.resolved_vector_uri`, plus a bounded, validated in-process cache.

What LanceDB holds: memory ids, the owner's blinded key, and vectors already passed through the
tenant's secret rotation (`TenantCipher.rotate`). No text, no plaintext owner names. Only active
memories have a vector row; deactivating a memory deletes its row.

One table per tenant (and embedding dimension): a tenant's vectors are physically apart, a
tenant's deletion drops one table, and a search scans one tenant's rows only.

Search speed. A LanceDB flat search with an owner filter costs ~4 ms at 1k rows but ~105-145 ms at 100k
(measured, bench/scale.py and .notes); an IVF_HNSW_SQ index brings 100k to ~13 ms but takes a minute
to build and misses rows added since. A brute-force dot product over the owner's vectors held in
memory costs ~10 ms at 100k on a 2-core box, and ~1 ms at 10k. So searches go to an in-process
cache of each owner's vectors (LRU, bounded in bytes) that is *validated on every search* by the
owner's change counter in SQL (`memory_owner_stats.changes`, bumped in the same transaction as every
change to the owner's active set): another replica's write makes the counter differ and the cache
reloads from LanceDB. The vault tells the index what each of its own writes changed (`writing`,
`changed`), applied to the cache as deltas, so the common case never reloads. Owners too large for
the cache are searched in LanceDB directly (with an ANN index once the table passes `lance_index_rows`
rows).

Large owners (issue #17). An owner with at least `ann_threshold` vectors is held in the cache with
4-bit product-quantised codes of its vectors (memos.storage.ann): a search scans the codes (1/32 of
the vectors' bytes) for its best few thousand rows and scores those exactly; the index takes writes
as deltas, is rebuilt in the background when its unencoded tail outgrows it, and is never written to
disk (erasing the owner drops it with the cache entry). Smaller owners stay exact.
Another replica's writes no longer drop the entry: the vault logs the vector ids each write added and
removed (memos.storage.vector_log), and a search whose entry is behind applies those deltas, reading
only the added vectors from LanceDB; only a gap in the log reloads the owner.

Every hit is re-checked against SQL by the caller (state, owner, tenant), so a stale vector row can
cost a candidate slot but never return a wrong memory.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from memos.logsafe import exception_summary
from memos.storage.ann import PqParams, PqScan
from memos.storage.vector_log import VectorDelta

log = logging.getLogger(__name__)


def table_name(tenant: str, dim: int) -> str:
    return f"mem_{hashlib.sha256(tenant.encode()).hexdigest()[:24]}_{dim}"


@dataclass
class _Entry:
    changes: int
    ids: list[str]
    buffer: np.ndarray  # (capacity, dim) float32; the first len(ids) rows are the vectors (unit norm)

    @property
    def matrix(self) -> np.ndarray:
        return self.buffer[: len(self.ids)]

    @property
    def nbytes(self) -> int:
        return int(self.buffer.nbytes) + 48 * len(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: np.ndarray, k: int, *, exact: bool = False) -> list[tuple[str, float]]:
        return top_k_cosine(self.matrix, self.ids, query, k)

    def applied(
        self, changes: int, add_ids: Sequence[str], add_vectors: np.ndarray | None, remove_ids: Sequence[str]
    ) -> _Entry:
        entry = self
        if remove_ids:
            gone = set(remove_ids)
            keep = [i for i, mid in enumerate(entry.ids) if mid not in gone]
            if len(keep) != len(entry.ids):
                entry = _Entry(entry.changes, [entry.ids[i] for i in keep], entry.matrix[keep])
        if add_ids and add_vectors is not None:
            return entry.appended(changes, add_ids, add_vectors.astype(np.float32))
        return _Entry(changes, entry.ids, entry.buffer)

    def appended(self, changes: int, ids: Sequence[str], vectors: np.ndarray) -> _Entry:
        """This entry with rows added, in place when the buffer has room (amortised: the buffer grows
        by half), so a write does not copy a large owner's whole matrix. Rows past len(ids) are no
        entry's, so readers of this entry are unaffected."""
        n, extra = len(self.ids), len(ids)
        buffer = self.buffer
        if n + extra > buffer.shape[0]:
            grown = np.empty((max(n + extra, n + n // 2, 64), buffer.shape[1]), np.float32)
            grown[:n] = buffer[:n]
            buffer = grown
        buffer[n : n + extra] = vectors
        return _Entry(changes, self.ids + list(ids), buffer)


@dataclass
class _AnnEntry:
    """A large owner's vectors held in an approximate index (memos.storage.ann), at one counter."""

    changes: int
    index: PqScan

    @property
    def nbytes(self) -> int:
        return self.index.nbytes

    def __len__(self) -> int:
        return len(self.index)

    def search(self, query: np.ndarray, k: int, *, exact: bool = False) -> list[tuple[str, float]]:
        if exact:  # the exact answer over the same vectors (the benchmark's recall reference)
            ids, matrix = self.index.vectors()
            return top_k_cosine(matrix, ids, query, k)
        return self.index.search(query, k)

    def applied(
        self, changes: int, add_ids: Sequence[str], add_vectors: np.ndarray | None, remove_ids: Sequence[str]
    ) -> _AnnEntry:
        return _AnnEntry(changes, _with_delta(self.index, add_ids, add_vectors, remove_ids))


AnyEntry = _Entry | _AnnEntry


def _with_delta(
    index: PqScan, add_ids: Sequence[str], add_vectors: np.ndarray | None, remove_ids: Sequence[str]
) -> PqScan:
    """One write applied to an index: its removals, then its additions (a live entry's and a replay's)."""
    index = index.removed(remove_ids) if remove_ids else index
    if add_ids and add_vectors is not None:
        index = index.added(add_ids, add_vectors.astype(np.float32))
    return index


@dataclass
class _Delta:
    prev: int
    new: int
    add_ids: Sequence[str]
    add_vectors: np.ndarray | None
    remove_ids: Sequence[str]


@dataclass
class IndexStats:
    """What the approximate indices cost (read by bench/scale.py)."""

    builds: int = 0
    last_build_ms: float = 0.0
    last_build_rows: int = 0
    failures: int = 0


class OwnerVectorCache:
    """LRU of (tenant, owner key) -> the owner's active vectors, labelled with the change counter.

    An owner with at least `ann_threshold` vectors is held in an approximate index (`_AnnEntry`,
    memos.storage.ann) instead of the exact matrix; below it the search is exact. The index is built
    (and rebuilt when its unindexed tail outgrows it) by a background thread from a snapshot; the
    deltas applied meanwhile are replayed onto it before it replaces the entry, so no search waits
    for a build. An index whose owner shrinks below half the threshold goes back to exact."""

    def __init__(self, max_bytes: int, ann_threshold: int = 0, index_params: PqParams | None = None) -> None:
        self.max_bytes = max_bytes
        self.ann_threshold = ann_threshold  # 0: always exact
        self.index_params = index_params or PqParams()
        self.index_stats = IndexStats()
        self._entries: OrderedDict[tuple[str, str], AnyEntry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._writing: dict[tuple[str, str], int] = {}  # this process's writes in flight, per owner
        self._building: dict[tuple[str, str], tuple[int, list[_Delta]]] = {}  # key -> (from, deltas)
        self._builders: list[threading.Thread] = []

    @contextmanager
    def writing(self, key: tuple[str, str]) -> Iterator[None]:
        """Around one of this process's writes to the owner's vectors, up to its `apply`.

        Between the write's commit (which bumps the SQL counter) and its `apply`, a search reads the
        new counter while the entry still has the old one; it then uses the entry as it was before
        the write (as if it had searched a moment earlier) rather than dropping it and reloading the
        owner from LanceDB."""
        with self._lock:
            self._writing[key] = self._writing.get(key, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._writing[key] - 1
                if left:
                    self._writing[key] = left
                else:
                    del self._writing[key]

    def get(self, key: tuple[str, str], changes: int) -> AnyEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.changes > changes:
                return None  # the caller's counter is older than the entry: kept (the caller rechecks)
            if entry.changes < changes:
                if key in self._writing:
                    return entry  # behind by a write of ours that is about to be applied
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[str, str], entry: AnyEntry) -> None:
        with self._lock:
            self._put(key, entry)

    def behind(self, key: tuple[str, str], changes: int) -> int | None:
        """The counter of the owner's entry when it is behind `changes` by another process's writes
        (none of ours in flight): what a catch-up by deltas starts from."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry.changes >= changes or key in self._writing:
                return None
            return entry.changes

    def apply_remote(
        self,
        key: tuple[str, str],
        prev_changes: int,
        new_changes: int,
        add_ids: Sequence[str] = (),
        add_vectors: np.ndarray | None = None,
        remove_ids: Sequence[str] = (),
    ) -> None:
        """Another process's write, read back from the vector log: applied like `apply`, except that
        an entry already past it (a concurrent catch-up got there first) is kept as it is."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.changes >= new_changes:
                return
        self.apply(key, prev_changes, new_changes, add_ids, add_vectors, remove_ids)

    def _put(self, key: tuple[str, str], entry: AnyEntry) -> None:
        self._drop(key)
        if entry.nbytes > self.max_bytes:
            return
        self._entries[key] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.max_bytes and self._entries:
            oldest = next(iter(self._entries))
            self._drop(oldest)
        if key in self._entries:
            self._maintain(key, entry)

    def indexed(self, ids: list[str], matrix: np.ndarray, changes: int) -> AnyEntry:
        """An entry for these vectors: exact below the threshold, else an index built now (blocking;
        the loads of large owners run in a background thread)."""
        if not self.ann_threshold or len(ids) < self.ann_threshold:
            return _Entry(changes, ids, matrix)
        return _AnnEntry(changes, self._build(ids, matrix))

    def apply(
        self,
        key: tuple[str, str],
        prev_changes: int,
        new_changes: int,
        add_ids: Sequence[str] = (),
        add_vectors: np.ndarray | None = None,
        remove_ids: Sequence[str] = (),
    ) -> None:
        """Apply a write this process made, if the cache is exactly one step behind; else drop it."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            if entry.changes != prev_changes:
                self._drop(key)
                return
            self._bytes -= entry.nbytes
            entry = entry.applied(new_changes, add_ids, add_vectors, remove_ids)
            self._entries[key] = entry
            self._bytes += entry.nbytes
            if entry.nbytes > self.max_bytes:
                self._drop(key)
                return
            building = self._building.get(key)
            if building is not None:
                building[1].append(_Delta(prev_changes, new_changes, add_ids, add_vectors, remove_ids))
            self._maintain(key, entry)

    # ------------------------------------------------------------------ the approximate index

    def _maintain(self, key: tuple[str, str], entry: AnyEntry) -> None:
        """(Under the lock.) Start an index build when an exact entry reached the threshold or an
        index outgrew its build; turn an index whose owner shrank back into an exact entry."""
        if not self.ann_threshold:
            return
        if isinstance(entry, _AnnEntry):
            if len(entry) < self.ann_threshold // 2:
                ids, matrix = entry.index.vectors()
                self._bytes -= entry.nbytes
                exact = self._entries[key] = _Entry(entry.changes, ids, matrix)
                self._bytes += exact.nbytes
                return
            due = entry.index.wants_rebuild()
        else:
            due = len(entry) >= self.ann_threshold
        if due and key not in self._building:
            self._building[key] = (entry.changes, [])
            thread = threading.Thread(
                target=self._build_in_background, args=(key, entry), name="vector-index-build", daemon=True
            )
            self._builders = [t for t in self._builders if t.is_alive()] + [thread]
            thread.start()

    def _build(self, ids: list[str], matrix: np.ndarray) -> PqScan:
        t0 = time.perf_counter()
        index = PqScan.build(ids, matrix, self.index_params)
        self.index_stats.builds += 1
        self.index_stats.last_build_ms = (time.perf_counter() - t0) * 1000
        self.index_stats.last_build_rows = len(ids)
        return index

    def _build_in_background(self, key: tuple[str, str], snapshot: AnyEntry) -> None:
        try:
            if isinstance(snapshot, _AnnEntry):
                ids, matrix = snapshot.index.vectors()
            else:
                ids, matrix = snapshot.ids, snapshot.matrix
            index = self._build(ids, matrix)
        except Exception as exc:  # said and counted; the owner stays on its current (working) entry
            self.index_stats.failures += 1
            log.warning("building an owner's vector index failed: %s", exception_summary(exc))
            with self._lock:
                self._building.pop(key, None)
            return
        with self._lock:
            start, deltas = self._building.pop(key, (snapshot.changes, []))
            current = self._entries.get(key)
            if current is None:
                return  # evicted or invalidated meanwhile: nothing to replace
            at = start
            for d in deltas:
                if d.prev != at:  # a gap (the entry was dropped and reloaded meanwhile): again
                    self._maintain(key, current)
                    return
                index = _with_delta(index, d.add_ids, d.add_vectors, d.remove_ids)
                at = d.new
            if at != current.changes:
                self._maintain(key, current)  # built from what is no longer the owner's: again
                return
            self._put(key, _AnnEntry(at, index))

    def wait_for_builds(self, timeout: float = 600.0) -> None:
        """Wait for the index builds in flight (benchmarks and tests)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = [t for t in self._builders if t.is_alive()]
            if not pending:
                return
            pending[0].join(max(0.0, deadline - time.monotonic()))
            if time.monotonic() >= deadline:
                return

    def invalidate(self, tenant: str, owner_key: str | None = None) -> None:
        with self._lock:
            for key in [
                k for k in self._entries if k[0] == tenant and (owner_key is None or k[1] == owner_key)
            ]:
                self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.nbytes


class _SharedExclusive:
    """Per table: writes and compaction share it; an erasure's purge holds it alone.

    The purge deletes every file no committed version references (`delete_unverified`), including the
    data file of an add or compaction still in flight, whose commit then points at a missing file and
    breaks the table. A purge waiting keeps new shared holders out, so erasure is not starved.

    With `lock_file` (tables in a local directory), the hold also covers the other processes on this
    host that write the same tables (replicas, a `memos-proxy worker`): a shared or exclusive `flock`
    on that file, taken after this process's own turn."""

    def __init__(self, lock_file: Path | None = None) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0
        self._lock_file = lock_file

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            with self._across_processes(fcntl.LOCK_SH):
                yield
        finally:
            with self._cond:
                self._shared -= 1
                if self._shared == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            with self._across_processes(fcntl.LOCK_EX):
                yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

    @contextmanager
    def _across_processes(self, mode: int) -> Iterator[None]:
        if self._lock_file is None:
            yield
            return
        # One descriptor per holder: flock locks belong to the open file, so this process's shared
        # holders coexist and its purge waits for them like another process's.
        fd = os.open(self._lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # releases the lock


def _local_dir(uri: str) -> Path | None:
    """The directory of a local LanceDB URI (a path or file://); None for object storage."""
    if uri.startswith("file://"):
        return Path(uri.removeprefix("file://"))
    return None if "://" in uri else Path(uri)


def top_k_cosine(
    matrix: np.ndarray, ids: Sequence[str], query: np.ndarray, k: int
) -> list[tuple[str, float]]:
    """Exact top-k by cosine over unit vectors; ties by id; duplicate ids collapse to their best."""
    if len(ids) == 0 or k <= 0:
        return []
    scores = matrix @ query.astype(np.float32)
    n = len(ids)
    take = min(n, k * 2 + 8)
    if take < n:
        idx = np.argpartition(-scores, take - 1)[:take]
    else:
        idx = np.arange(n)
    best: dict[str, float] = {}
    for i in idx:
        mid, s = ids[int(i)], float(scores[int(i)])
        if s > best.get(mid, -2.0):
            best[mid] = s
    return sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


class VectorIndex:
    """LanceDB vectors per tenant, with the validated owner cache. Blocking: call off the event loop."""

    def __init__(
        self,
        uri: str,
        *,
        cache_bytes: int = 2048 * 1024 * 1024,
        compact_every: int = 100,
        version_retention: timedelta = timedelta(seconds=15),
        ann_threshold: int = 50_000,
        index_params: PqParams | None = None,
        lance_index_rows: int = 200_000,
        sync_load_max: int = 20_000,
    ) -> None:
        self.uri = uri
        # Every write is a table version, and each write lists the versions kept: measured, a one-row
        # add costs 3.1 ms with 200 versions kept and 7.3 ms with 1,200 (5 minutes of write-back at 4
        # writes/s). Old versions only serve readers that opened them; ours finish within seconds.
        self.version_retention = version_retention
        self.sync_load_max = sync_load_max
        self._loading: set[tuple[str, str]] = set()
        self.catch_ups = 0  # entries brought up to date from the vector log (not reloaded)
        # Owners with at least `ann_threshold` vectors are searched through an approximate index in
        # the cache (memos.storage.ann); smaller ones exactly. Measured on bench/scale.py's corpus on
        # a 2-core box (dense top 200, the retriever's depth): the exact scan takes ~1.5 ms at 20k and
        # ~3.5 ms at 50k, the codes' scan ~0.5 ms at 100k (recall@12 0.998): from 50k it pays.
        self.cache = OwnerVectorCache(cache_bytes, ann_threshold, index_params)
        self.compact_every = compact_every
        self.lance_index_rows = lance_index_rows  # a LanceDB index for owners searched in LanceDB
        self._db: Any = None
        self._tables: dict[str, Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._writes: dict[str, int] = {}
        self._compacting: set[str] = set()
        self._guards: dict[str, _SharedExclusive] = {}
        self._lock = threading.Lock()
        # Vectors whose deletion failed (a full disk fails the undo of a failed write too): deleted
        # again at `retry_discarded`, which the vault calls after its next write that commits.
        self._leftovers: list[tuple[str, list[str]]] = []
        self._leftovers_lock = threading.Lock()

    # ------------------------------------------------------------------ tables

    def _connect(self) -> Any:
        if self._db is None:
            with self._lock:
                if self._db is None:
                    import lancedb

                    # Strong consistency: every read sees other processes' (replicas') latest commits.
                    self._db = lancedb.connect(self.uri, read_consistency_interval=timedelta(0))
        return self._db

    def answers(self) -> bool:
        """Whether the store answers now (one page of its table listing; opens no table). Blocking."""
        try:
            db = self._connect()
            if hasattr(db, "list_tables"):
                db.list_tables(limit=1)
            else:
                db.table_names(limit=1)
        except Exception as exc:  # any backend failure (a missing bucket, a network error): not ready
            log.warning("the vector store does not answer: %s", exception_summary(exc))
            return False
        return True

    def _guard(self, name: str) -> _SharedExclusive:
        with self._lock:
            guard = self._guards.get(name)
            if guard is None:
                local = _local_dir(self.uri)
                lock_file = None
                if local is not None:
                    # Beside the table directories, not among them (LanceDB lists that directory).
                    locks = local.parent / f"{local.name}.locks"
                    try:
                        locks.mkdir(parents=True, exist_ok=True)
                        lock_file = locks / name
                    except OSError as exc:  # a read-only parent: writes still work, guarded in-process
                        log.warning("no lock directory beside the vector tables: %s", exception_summary(exc))
                guard = self._guards[name] = _SharedExclusive(lock_file)
            return guard

    def _table_lock(self, name: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(name, threading.Lock())

    def _table(self, tenant: str, dim: int, *, create: bool) -> Any:
        name = table_name(tenant, dim)
        table = self._tables.get(name)
        if table is not None:
            return table
        db = self._connect()
        with self._table_lock(name):
            table = self._tables.get(name)
            if table is not None:
                return table
            try:
                table = db.open_table(name)
            except (FileNotFoundError, ValueError):
                if not create:
                    return None
                import pyarrow as pa

                schema = pa.schema(
                    [
                        pa.field("id", pa.string()),
                        pa.field("owner", pa.string()),
                        pa.field("vector", pa.list_(pa.float32(), dim)),
                    ]
                )
                table = db.create_table(name, schema=schema, exist_ok=True)
            self._tables[name] = table
            return table

    def _tenant_tables(self, tenant: str) -> list[tuple[str, Any]]:
        prefix = table_name(tenant, 0).rsplit("_", 1)[0] + "_"
        db = self._connect()
        out = []
        for name in _all_table_names(db):
            if name.startswith(prefix):
                try:
                    out.append((name, self._tables.get(name) or db.open_table(name)))
                except (FileNotFoundError, ValueError):
                    continue
        return out

    # ------------------------------------------------------------------ writes

    def add(self, tenant: str, owner_key: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Store rotated unit vectors for these ids (call before the SQL commit that activates them)."""
        if not ids:
            return
        import pyarrow as pa

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = int(vectors.shape[1])
        table = self._table(tenant, dim, create=True)
        data = pa.table(
            {
                "id": pa.array(list(ids), pa.string()),
                "owner": pa.array([owner_key] * len(ids), pa.string()),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()), dim),
            }
        )
        name = table_name(tenant, dim)
        with self._guard(name).shared():
            table.add(data)
        self._wrote(name, table)

    def delete(self, tenant: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        quoted = ", ".join(_quote(i) for i in ids)
        for name, table in self._tenant_tables(tenant):
            with self._guard(name).shared():
                table.delete(f"id IN ({quoted})")
            self._wrote(name, table)

    def delete_owner(self, tenant: str, owner_key: str, *, purge: bool = True) -> None:
        """Remove every vector of an owner; with purge, old table versions holding them are removed too."""
        for name, table in self._tenant_tables(tenant):
            if not purge:
                with self._guard(name).shared():
                    table.delete(f"owner = {_quote(owner_key)}")
                continue
            with self._guard(name).exclusive():  # no write of this process is in flight meanwhile
                table.delete(f"owner = {_quote(owner_key)}")
                try:
                    # Erasure outranks a concurrent reader of an old table version (it would retry).
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", UserWarning)
                        table.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
                except Exception as exc:
                    log.warning("vector table compaction after erase failed: %s", exception_summary(exc))
        self.cache.invalidate(tenant, owner_key)

    def discard(self, tenant: str, ids: Sequence[str]) -> None:
        """Delete vectors no committed row refers to (an undone write, a replaced or deleted memory's);
        when that fails they are kept for `retry_discarded`."""
        try:
            self.delete(tenant, ids)
        except Exception as exc:
            # Meanwhile they are never returned (every hit is re-checked against SQL by vector id), but
            # they would take candidate slots: try again after the next committed write.
            log.warning("deleting %d vectors failed: %s", len(ids), exception_summary(exc))
            with self._leftovers_lock:
                self._leftovers.append((tenant, list(ids)))

    def retry_discarded(self) -> None:
        """Delete again the vectors whose `discard` failed."""
        if not self._leftovers:
            return
        with self._leftovers_lock:
            pending, self._leftovers = self._leftovers, []
        for tenant, ids in pending:
            self.discard(tenant, ids)  # put back if it fails again

    @contextmanager
    def undone_on_failure(self, tenant: str, ids: list[str]) -> Iterator[None]:
        """Discard the vectors named in `ids` (filled while the block runs) when the block fails."""
        try:
            yield
        except BaseException:
            if ids:
                self.discard(tenant, ids)
            raise

    def drop_tenant(self, tenant: str) -> None:
        db = self._connect()
        for name, _table in self._tenant_tables(tenant):
            self._tables.pop(name, None)
            db.drop_table(name)
        self.cache.invalidate(tenant)

    def _wrote(self, name: str, table: Any) -> None:
        with self._lock:
            self._writes[name] = self._writes.get(name, 0) + 1
            due = self._writes[name] >= self.compact_every and name not in self._compacting
            if due:
                self._writes[name] = 0
                self._compacting.add(name)
        if due:
            threading.Thread(target=self._compact, args=(name, table), daemon=True).start()

    def _compact(self, name: str, table: Any) -> None:
        """Merge small fragments (one per write) and drop old versions; index large tables."""
        try:
            with self._guard(name).shared():
                table.optimize(cleanup_older_than=self.version_retention)
                if (
                    self.lance_index_rows
                    and table.count_rows() >= self.lance_index_rows
                    and not table.list_indices()
                ):
                    rows = table.count_rows()
                    table.create_index(
                        metric="cosine", index_type="IVF_HNSW_SQ", num_partitions=max(1, rows // 50_000)
                    )
        except Exception as exc:
            log.warning("vector table maintenance failed: %s", exception_summary(exc))
        finally:
            with self._lock:
                self._compacting.discard(name)

    def compact_now(self, tenant: str) -> None:
        for name, table in self._tenant_tables(tenant):
            with self._lock:
                self._compacting.add(name)
            self._compact(name, table)

    # ------------------------------------------------------------------ this process's writes, for the cache

    @contextmanager
    def writing(self, tenant: str, owner_key: str) -> Iterator[None]:
        """Around one of this process's writes to the owner's vectors, from before its transaction up
        to its `changed`: searches meanwhile keep the cached entry (OwnerVectorCache.writing)."""
        with self.cache.writing((tenant, owner_key)):
            yield

    def changed(
        self,
        tenant: str,
        owner_key: str,
        before: int,
        after: int,
        *,
        added_ids: Sequence[str] = (),
        added: np.ndarray | None = None,
        removed_ids: Sequence[str] = (),
    ) -> None:
        """A write of this process committed: it moved the owner's change counter from `before` to
        `after`, added the vectors `added` (rotated, one per id of `added_ids`) and removed
        `removed_ids`. The cached entry takes the delta when it was at `before`; else it is dropped."""
        if after == before:
            return  # nothing of the owner's changed
        self.cache.apply(
            (tenant, owner_key), before, after, add_ids=added_ids, add_vectors=added, remove_ids=removed_ids
        )

    # ------------------------------------------------------------------ reads

    def load_owner(self, tenant: str, owner_key: str, dim: int) -> tuple[list[str], np.ndarray]:
        table = self._table(tenant, dim, create=False)
        if table is None:
            return [], np.zeros((0, dim), np.float32)
        where = f"owner = {_quote(owner_key)}"
        count = table.count_rows(where)
        if count == 0:
            return [], np.zeros((0, dim), np.float32)
        arrow = table.search().where(where).select(["id", "vector"]).limit(count + 1024).to_arrow()
        ids = arrow.column("id").to_pylist()
        flat = arrow.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False)
        return ids, np.asarray(flat, dtype=np.float32).reshape(len(ids), dim)

    def owner_count_hint(self, tenant: str, owner_key: str, dim: int) -> int:
        table = self._table(tenant, dim, create=False)
        return 0 if table is None else int(table.count_rows(f"owner = {_quote(owner_key)}"))

    def search(
        self,
        tenant: str,
        owner_key: str,
        changes: int,
        query: np.ndarray,
        k: int,
        *,
        recheck: Callable[[], int] | None = None,
        exact: bool = False,
        catch_up: Callable[[int, int], Sequence[VectorDelta] | None] | None = None,
    ) -> list[tuple[str, float]]:
        """[(id, cosine)] best first over the owner's vectors; `changes` is the owner's SQL counter.

        Served from the cache when it is current. When the cache is ahead of `changes` (a write landed
        after the caller read its counter), `recheck` reads the counter again. Otherwise a small owner
        is loaded at once; a large one (more than `sync_load_max` vectors, e.g. after another replica
        wrote) is searched in LanceDB directly while a background thread reloads the cache, so no
        search waits seconds. An owner held in an approximate index is searched through it unless
        `exact` (the benchmark's reference answer).

        When the cached entry is behind `changes` (another replica wrote), `catch_up(have, want)`
        gives the writes in between (memos.storage.vector_log); their vectors are read from LanceDB
        by id and applied as deltas, so the owner is not reloaded. Without it, or when the log does
        not cover them, the entry is dropped and reloaded as above."""
        dim = int(query.shape[-1])
        key = (tenant, owner_key)
        if catch_up is not None:
            have = self.cache.behind(key, changes)
            if have is not None:
                self._catch_up(tenant, owner_key, dim, have, changes, catch_up)
        entry = self.cache.get(key, changes)
        if entry is None and recheck is not None:
            latest = recheck()
            if latest != changes:
                changes = latest
                entry = self.cache.get(key, changes)
        if entry is None:
            count = self.owner_count_hint(tenant, owner_key, dim)
            if count * (dim * 4 + 48) > self.cache.max_bytes:
                return self.search_lance(tenant, owner_key, query, k)
            if count > self.sync_load_max:
                self._load_in_background(tenant, owner_key, dim, changes)
                return self.search_lance(tenant, owner_key, query, k)
            entry = self.warm(tenant, owner_key, dim, changes, index_now=False)
        return entry.search(query, k, exact=exact)

    def _catch_up(
        self,
        tenant: str,
        owner_key: str,
        dim: int,
        have: int,
        want: int,
        catch_up: Callable[[int, int], Sequence[VectorDelta] | None],
    ) -> None:
        deltas = catch_up(have, want)
        if deltas is None:
            return
        added = [vid for d in deltas for vid in d.added]
        found = self.fetch(tenant, owner_key, dim, added) if added else {}
        key = (tenant, owner_key)
        for d in deltas:
            # a vector missing from LanceDB was discarded by a later write (which removes it anyway)
            ids = [vid for vid in d.added if vid in found]
            vectors = np.stack([found[vid] for vid in ids]) if ids else None
            self.cache.apply_remote(key, d.prev, d.new, ids, vectors, d.removed)
        self.catch_ups += 1

    def fetch(self, tenant: str, owner_key: str, dim: int, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The owner's stored (rotated) vectors of these ids, by id."""
        table = self._table(tenant, dim, create=False)
        if table is None or not ids:
            return {}
        quoted = ", ".join(_quote(i) for i in sorted(set(ids)))
        arrow = (
            table.search()
            .where(f"owner = {_quote(owner_key)} AND id IN ({quoted})")
            .select(["id", "vector"])
            .limit(len(ids) + 1024)
            .to_arrow()
        )
        got = arrow.column("id").to_pylist()
        flat = arrow.column("vector").combine_chunks().values.to_numpy(zero_copy_only=False)
        matrix = np.asarray(flat, dtype=np.float32).reshape(len(got), dim)
        return {vid: matrix[i] for i, vid in enumerate(got)}

    def warm(
        self, tenant: str, owner_key: str, dim: int, changes: int, *, index_now: bool = True
    ) -> AnyEntry:
        """Load the owner's vectors into the cache, labelled with `changes` (read before loading);
        an owner past the approximate index's threshold gets its index built here, or with
        `index_now=False` (a search waiting) in the background while it is searched exactly."""
        ids, matrix = self.load_owner(tenant, owner_key, dim)
        entry = self.cache.indexed(ids, matrix, changes) if index_now else _Entry(changes, ids, matrix)
        self.cache.put((tenant, owner_key), entry)
        return entry

    def _load_in_background(self, tenant: str, owner_key: str, dim: int, changes: int) -> None:
        key = (tenant, owner_key)
        with self._lock:
            if key in self._loading:
                return
            self._loading.add(key)

        def load() -> None:
            try:
                self.warm(tenant, owner_key, dim, changes)
            except Exception as exc:
                log.warning("loading an owner's vectors failed: %s", exception_summary(exc))
            finally:
                with self._lock:
                    self._loading.discard(key)

        threading.Thread(target=load, name="vector-cache-load", daemon=True).start()

    def search_lance(self, tenant: str, owner_key: str, query: np.ndarray, k: int) -> list[tuple[str, float]]:
        """A search in LanceDB itself (for owners too large for the cache)."""
        table = self._table(tenant, int(query.shape[-1]), create=False)
        if table is None:
            return []
        rows = (
            table.search(query.astype(np.float32))
            .metric("cosine")
            .where(f"owner = {_quote(owner_key)}", prefilter=True)
            .select(["id", "_distance"])
            .limit(k)
            .to_list()
        )
        return [(r["id"], 1.0 - float(r["_distance"])) for r in rows]


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _all_table_names(db: Any) -> list[str]:
    names: list[str] = []
    if hasattr(db, "list_tables"):
        token = None
        while True:
            result = db.list_tables(page_token=token, limit=1000)
            page = list(getattr(result, "tables", result))
            names.extend(page)
            token = getattr(result, "page_token", None)
            if not token or not page:
                break
        return names
    return list(db.table_names(limit=100000))
