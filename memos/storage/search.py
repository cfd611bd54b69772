"""What retrieval (memos.recall.retrieval) asks of the vault: dense and keyword candidates over an
owner's active memories, their rows, and their neighbouring turns.

Candidates are ids, unvalidated: the vector index and the postings may briefly hold what SQL no longer
does, so hits are always re-validated against the rows (state, owner, vector id) read here. Rows are
decoded once per owner and change counter (memos.storage.row_cache); their text only when read.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

import numpy as np
from sqlalchemy import select
from sqlalchemy import text as sql_text

from memos.clock import aware
from memos.db import Database, table_of
from memos.embeddings import normalise
from memos.item import MemoryItem, State
from memos.storage.codec import MemoryCodec, MemoryRecord
from memos.storage.keyword import Bm25
from memos.storage.owners import OwnerLedger, OwnerStats
from memos.storage.row_cache import OwnerRowCache
from memos.storage.tables import MemoryRow
from memos.storage.vector_log import VectorLog
from memos.storage.vectors import VectorIndex

_MEMORIES = table_of(MemoryRow)  # the memories table, for Core reads


class SearchRecord(MemoryRecord, Protocol):
    """A row as search reads it (a Core row of the `memories` table): the item's columns and the
    vault-side facts retrieval needs."""

    seq: int
    session_key: str | None
    vector_id: str | None
    doc_len: int


class StoredMemory:
    """A row with the vault-side facts retrieval needs (sequence number, session key, vector id) and
    its scalar fields; the text is decrypted only when `item` is first read (ranking needs no text)."""

    __slots__ = (
        "_codec",
        "_item",
        "_last_hit_at",
        "created_at",
        "doc_len",
        "expires_at",
        "hits",
        "id",
        "importance",
        "invalid_at",
        "observed_at",
        "row",
        "seq",
        "session_key",
        "vector_id",
    )

    def __init__(self, codec: MemoryCodec, row: SearchRecord) -> None:
        self._codec = codec
        self._item: MemoryItem | None = None
        self._last_hit_at: datetime | None = None  # set by with_hits: newer than the row's
        self.row = row
        self.id = row.id
        self.seq = row.seq
        self.session_key = row.session_key
        self.vector_id = row.vector_id
        self.doc_len = row.doc_len
        self.importance = row.importance
        self.hits = row.hits
        self.observed_at = aware(row.observed_at)
        self.created_at = aware(row.created_at)
        self.expires_at = aware(row.expires_at)
        self.invalid_at = aware(row.invalid_at)

    @property
    def item(self) -> MemoryItem:
        if self._item is None:
            item = self._codec.to_item(self.row)
            if self._last_hit_at is not None:
                item = dataclasses.replace(item, hits=self.hits, last_hit_at=self._last_hit_at)
            self._item = item
        return self._item

    def with_hits(self, added: int, when: datetime) -> StoredMemory:
        """This row after `record_hit_counts` added `added` hits at `when` (what SQL now holds)."""
        other = copy.copy(self)
        other.hits = self.hits + added
        other._last_hit_at = when
        if self._item is not None:
            other._item = dataclasses.replace(self._item, hits=other.hits, last_hit_at=when)
        return other


class CandidateSearch:
    """Reads only; the vault's writes reach it through the owner's change counter (and the two
    calls that change rows without moving it: `hits_recorded`, `forget_owner`)."""

    def __init__(
        self,
        db: Database,
        codec: MemoryCodec,
        vectors: VectorIndex,
        owners: OwnerLedger,
        bm25: Bm25,
        row_cache_rows: int,
        vector_log: VectorLog | None = None,
    ) -> None:
        self.db = db
        self.codec = codec
        self.vectors = vectors
        self.owners = owners
        self.bm25 = bm25
        self.vector_log = vector_log
        # Search candidates decoded once per owner and change counter (memos.storage.row_cache).
        self._rows: OwnerRowCache[StoredMemory] = OwnerRowCache(row_cache_rows)

    # ------------------------------------------------------------------ candidates

    def dense(
        self,
        tenant: str,
        owner: str,
        query_vector: np.ndarray,
        k: int,
        *,
        changes: int | None = None,
        exact: bool = False,
    ) -> list[tuple[str, str, float]]:
        """[(memory id, vector id, cosine)] best first over the owner's active vectors (unvalidated);
        `exact`: never through a large owner's approximate index."""
        if changes is None:
            changes = self.owners.read(tenant, owner).changes
        q = self.codec.rotate(tenant, normalise(np.asarray(query_vector, np.float32)))[0]
        log = self.vector_log
        hits = self.vectors.search(
            tenant,
            self.codec.owner_key(tenant, owner),
            changes,
            q,
            k,
            recheck=lambda: self.owners.read(tenant, owner).changes,
            exact=exact,
            catch_up=None if log is None else (lambda have, want: log.since(tenant, owner, have, want)),
        )
        return [(vid.rsplit(".", 1)[0], vid, score) for vid, score in hits]

    def warm_owner(self, tenant: str, owner: str, dim: int) -> None:
        """Load an owner's vectors into the search cache now (start-up, benchmarks)."""
        changes = self.owners.read(tenant, owner).changes
        self.vectors.warm(tenant, self.codec.owner_key(tenant, owner), dim, changes)

    def keyword(
        self, tenant: str, owner: str, query: str, k: int, *, stats: OwnerStats | None = None
    ) -> list[tuple[str, float]]:
        """[(memory id, BM25)] best first over the owner's active memories."""
        stats = stats or self.owners.read(tenant, owner)
        terms = self.codec.query_terms(tenant, query)
        with self.db.session() as session:
            return self.bm25.search(session, tenant, owner, terms, stats.doc_count, stats.total_len, k)

    def nearest(self, tenant: str, owner: str, vector: np.ndarray, k: int) -> list[tuple[MemoryItem, float]]:
        """The owner's active memories nearest to a raw vector: [(item, cosine)] best first."""
        hits = self.dense(tenant, owner, vector, k * 2 + 4)
        stored = self.get_many(tenant, [h[0] for h in hits], owner=owner)
        out: list[tuple[MemoryItem, float]] = []
        seen: set[str] = set()
        for mid, vid, score in hits:
            s = stored.get(mid)
            if s is None or s.vector_id != vid or mid in seen:
                continue
            seen.add(mid)
            out.append((s.item, score))
        return out[:k]

    # ------------------------------------------------------------------ rows

    def get_many(
        self,
        tenant: str,
        ids: Iterable[str],
        *,
        owner: str | None = None,
        active_only: bool = True,
        changes: int | None = None,
    ) -> dict[str, StoredMemory]:
        """The rows of `ids` that belong to the tenant (and owner). With `changes` (the owner's change
        counter, read before this call) the owner's rows are served from the row cache when it holds
        them at that counter, and what is read from SQL is kept there."""
        ids = sorted(set(ids))
        if not ids:
            return {}
        if changes is None or owner is None or not active_only:
            return self._read_many(tenant, ids, owner=owner, active_only=active_only)
        key = (tenant, owner)
        found, missing = self._rows.get(key, changes, ids)
        if missing:
            read = self._read_many(tenant, missing, owner=owner, active_only=True)
            self._rows.put(key, changes, read)
            found.update(read)
        return found

    def _read_many(
        self, tenant: str, ids: Sequence[str], *, owner: str | None, active_only: bool
    ) -> dict[str, StoredMemory]:
        # Primary-key lookups only (an owner/tenant condition in SQL can steer the planner into
        # scanning the owner's index); the other conditions are checked here.
        with self.db.session() as session:
            # Core rows (attribute access like the ORM rows, without the ORM's per-object cost).
            table = _MEMORIES
            rows = list(session.execute(select(table).where(table.c.id.in_(ids))).all())
        return {
            row.id: StoredMemory(self.codec, row)
            for row in rows
            if row.tenant == tenant
            and (owner is None or row.owner == owner)
            and (not active_only or row.state == State.ACTIVE.value)
        }

    def neighbours(
        self, tenant: str, owner: str, anchors: Sequence[StoredMemory], window: int = 1
    ) -> dict[str, list[StoredMemory]]:
        """For each anchor with a session: the active memories of the same session within `window`
        sequence numbers (excluding the anchor), in sequence order. One statement for all anchors
        (retrieval asks for the neighbours of a score of candidates per search); nothing decrypted."""
        wanted = [a for a in anchors if a.session_key]
        if not wanted or window <= 0:
            return {}
        # One indexed range read per anchor (tenant, owner, session_key, seq), in one statement.
        table = _MEMORIES
        columns = ", ".join(c.name for c in table.columns)
        statement = " UNION ALL ".join(
            f"SELECT {columns} FROM {table.name} WHERE tenant = :tenant AND owner = :owner AND state = :state"
            f" AND session_key = :k{i} AND seq BETWEEN :lo{i} AND :hi{i}"
            for i in range(len(wanted))
        )
        params: dict[str, str | int | None] = {"tenant": tenant, "owner": owner, "state": State.ACTIVE.value}
        for i, a in enumerate(wanted):
            params.update({f"k{i}": a.session_key, f"lo{i}": a.seq - window, f"hi{i}": a.seq + window})
        with self.db.session() as session:
            typed = sql_text(statement).columns(*table.columns)  # result types (datetimes) as in get_many
            found = {r.id: r for r in session.execute(typed, params).all()}
        rows = [StoredMemory(self.codec, r) for r in sorted(found.values(), key=lambda r: r.seq)]
        return {
            a.id: [r for r in rows if r.session_key == a.session_key and 0 < abs(r.seq - a.seq) <= window]
            for a in wanted
        }

    # ------------------------------------------------------------------ changes the counter does not show

    def hits_recorded(self, counts: Mapping[str, int], when: datetime) -> None:
        """`record_hit_counts` committed: cached rows take the increment."""
        self._rows.update(counts, lambda mid, stored: stored.with_hits(counts[mid], when))

    def forget_owner(self, tenant: str, owner: str) -> None:
        """The owner was erased in this process: drop its cached rows at once."""
        self._rows.drop((tenant, owner))
