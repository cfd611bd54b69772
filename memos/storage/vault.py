"""MemVault: the versioned, encrypted store of memory items (SQL rows, LanceDB vectors, blind keyword index).

Blocking; the async service runs it off the event loop. Every call names the tenant, and every query
filters by it: an id of another tenant is simply not found.

Invariants
- Every change of an item writes a new version row (an encrypted snapshot of the whole item);
  `rollback` writes a new version equal to an old one.
- Text and sources are stored only as TenantCipher ciphertext bound to (tenant, id, version); the
  keyword index holds keyed term hashes; exact duplicates are found by a keyed hash of the normalised
  text; LanceDB holds rotated vectors, ids and the owner's blinded key.
- Only active items are in the indices (postings, vectors, BM25 statistics). Deleting an item empties
  the payload of the item and of all its versions (the text is gone; the version metadata stays).
  `erase_user` removes every row, version, posting, statistic and vector of the owner.
- Read-your-writes: the vector is written to LanceDB before the SQL transaction that makes the item
  active commits, and hits are always re-validated against SQL (state, owner, vector id).

The vault coordinates; the parts live beside it: memos.storage.codec (encryption, keyed hashes,
rows to items), .owners (the per-owner statistics row every write locks, and the change counter),
.postings (the keyword index as writes change it), .versions (version rows), .batch (what one
add_many batch becomes), .changes (what one update or rollback does to a row), .search (candidates
and rows for retrieval) and .vectors (LanceDB and its cache, told what each write changed).
"""

from __future__ import annotations

import base64
import builtins
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col

from memos.db import Database
from memos.embeddings import Embedder, normalise
from memos.errors import NotFound
from memos.item import Kind, MemoryItem, Scope, Source, State
from memos.keys.keyring import Keyring
from memos.logsafe import exception_summary
from memos.storage.batch import AddBatch, NewMemory
from memos.storage.changes import MemoryChange
from memos.storage.codec import MemoryCodec
from memos.storage.keyword import Bm25, DocTerms
from memos.storage.owners import OwnerLedger, OwnerStats
from memos.storage.postings import KeywordPostings
from memos.storage.search import CandidateSearch, StoredMemory
from memos.storage.tables import MemoryRow, MemoryVersionRow, OwnerStatsRow
from memos.storage.vector_log import VectorLog
from memos.storage.vectors import VectorIndex
from memos.storage.versions import VersionLog

log = logging.getLogger(__name__)


class MemoryNotFound(NotFound):
    """No such memory in this tenant (or it was deleted)."""

    param = "id"

    def __init__(self, memory_id: str) -> None:
        super().__init__(f"No memory found with id '{memory_id}'.")
        self.memory_id = memory_id


class VersionNotFound(NotFound):
    pass


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class _VectorWrite:
    """What one write does to an owner's vectors: adds them in LanceDB before its commit, removes them
    there after it, and tells the vector index's cache both (`VectorIndex.changed`)."""

    tenant: str
    owner_key: str
    added_ids: list[str] = field(default_factory=list)
    added: np.ndarray | None = None  # rotated, one row per added id
    removed_ids: list[str] = field(default_factory=list)


class MemVault:
    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        vectors: VectorIndex,
        embedder: Embedder | None = None,
        bm25: Bm25 | None = None,
        row_cache_rows: int = 50_000,
    ) -> None:
        self.db = db
        self.keyring = keyring
        self.vectors = vectors
        self.embedder = embedder
        self.bm25 = bm25 or Bm25()
        self.analyze_after = 1000  # a batch this large refreshes the planner's statistics
        self._codec = MemoryCodec(keyring)
        self._owners = OwnerLedger(db)
        self._postings = KeywordPostings(db)
        self._versions = VersionLog(db, self._codec)
        self._vector_log = VectorLog(db)  # what each write did to the vectors, for other replicas
        self._search = CandidateSearch(
            db, self._codec, vectors, self._owners, self.bm25, row_cache_rows, self._vector_log
        )

    def owner_key(self, tenant: str, owner: str) -> str:
        return self._codec.owner_key(tenant, owner)

    def stats(self, tenant: str, owner: str) -> OwnerStats:
        return self._owners.read(tenant, owner)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.embedder is None:
            raise RuntimeError("this vault has no embedder: pass vectors")
        return normalise(self.embedder.embed(list(texts)))

    # ------------------------------------------------------------------ adds

    def add(
        self,
        tenant: str,
        owner: str,
        text: str,
        *,
        sources: Sequence[Source] = (),
        observed_at: datetime | None = None,
        scope: Scope | str = Scope.USER,
        importance: float = 0.5,
        kind: Kind | str = Kind.PLAINTEXT,
        valid_from: datetime | None = None,
        expires_at: datetime | None = None,
        vector: np.ndarray | None = None,
        session: str | None = None,
        dedupe: bool = True,
    ) -> MemoryItem:
        new = NewMemory(
            text=text,
            sources=list(sources),
            observed_at=observed_at,
            scope=scope,
            kind=kind,
            importance=importance,
            valid_from=valid_from,
            expires_at=expires_at,
            vector=vector,
            session=session,
        )
        return self.add_many(tenant, owner, [new], dedupe=dedupe)[0]

    def add_many(
        self,
        tenant: str,
        owner: str,
        memories: Sequence[NewMemory],
        *,
        dedupe: bool = True,
        before_commit: Callable[[Session, list[MemoryItem]], None] | None = None,
    ) -> list[MemoryItem]:
        """Add memories of one owner in one transaction. An exact duplicate of an active memory (same
        normalised text) is not stored twice: its sources are merged into the existing item (a new
        version when a source is new) and that item is returned in its place.

        All or nothing: when anything fails (the vector write, a row, the commit) no row is committed
        and the vectors already written are deleted again. `before_commit(session, items)` runs inside
        the transaction (the memory API writes its audit entry there, so both commit or neither)."""
        if not memories:
            return []
        for m in memories:
            if not m.text or not m.text.strip():
                raise ValueError("a memory needs text")
        raw_vectors = self._raw_vectors(memories)
        write = _VectorWrite(tenant, self._codec.owner_key(tenant, owner))
        batch = AddBatch(self._codec, tenant, owner, memories, dedupe=dedupe, now=utcnow())
        with self.vectors.writing(tenant, write.owner_key):  # readers keep the cache meanwhile
            # the vectors of a transaction that did not commit are deleted again
            with self.vectors.undone_on_failure(tenant, write.added_ids), self.db.write() as session:
                stats = self._owners.lock(session, tenant, owner)
                batch.plan(self._duplicated(session, batch) if dedupe else {}, stats.next_seq)
                before = stats.changes
                self._write_batch(session, stats, batch, raw_vectors, write)
                after = stats.changes
                out = batch.items()
                if before_commit is not None:
                    before_commit(session, out)
            self._vectors_changed(write, before, after)
        if len(batch.fresh) >= self.analyze_after:
            self.analyze()
        self.vectors.retry_discarded()
        return out

    def _raw_vectors(self, memories: Sequence[NewMemory]) -> list[np.ndarray]:
        """Each memory's unit vector: its own, else embedded (the missing ones in one call)."""
        missing = [i for i, m in enumerate(memories) if m.vector is None]
        computed = self._embed([memories[i].text for i in missing]) if missing else None
        raw_vectors: list[np.ndarray] = []
        j = 0
        for m in memories:
            if m.vector is None:
                assert computed is not None
                raw_vectors.append(computed[j])
                j += 1
            else:
                raw_vectors.append(normalise(np.asarray(m.vector, np.float32))[0])
        return raw_vectors

    def _duplicated(self, session: Session, batch: AddBatch) -> dict[str, MemoryRow]:
        """The owner's active rows with the texts of the batch, by content hash."""
        rows = session.execute(
            select(MemoryRow).where(
                col(MemoryRow.tenant) == batch.tenant,
                col(MemoryRow.owner) == batch.owner,
                col(MemoryRow.state) == State.ACTIVE.value,
                col(MemoryRow.content_hash).in_(sorted(set(batch.hashes))),
            )
        ).scalars()
        return {row.content_hash: row for row in rows}

    def _write_batch(
        self,
        session: Session,
        stats: OwnerStatsRow,
        batch: AddBatch,
        raw_vectors: Sequence[np.ndarray],
        write: _VectorWrite,
    ) -> None:
        """The planned batch: merged versions, new vectors, rows, versions and postings, counters."""
        for row, item in batch.merged:
            session.add(row)
            session.add(self._versions.row(row, item, "merge"))
        if batch.fresh:
            fresh = batch.fresh
            # vectors first (read-your-writes), then rows
            vids = [f.row.vector_id for f in fresh]
            write.added = self._codec.rotate(write.tenant, np.stack([raw_vectors[f.index] for f in fresh]))
            write.added_ids.extend(vids)  # before the write: a partial write is undone too
            self.vectors.add(write.tenant, write.owner_key, vids, write.added)
            session.execute(insert(MemoryRow), [dict(vars(f.row)) for f in fresh])
            session.execute(
                insert(MemoryVersionRow), [self._versions.values(f.row, f.item, "create") for f in fresh]
            )
            self._postings.add(session, stats, [(f.row.id, f.terms) for f in fresh])
            stats.next_seq = batch.last_seq
        if batch.fresh or batch.merged:  # every row change moves the counter (memos.storage.row_cache)
            stats.changes += 1
            self._vector_log.record(session, stats.tenant, stats.owner, stats.changes, write.added_ids)
            session.add(stats)
        session.flush()

    def _vectors_changed(self, write: _VectorWrite, before: int, after: int) -> None:
        """After the commit: the vector index's cache follows the write (a no-op when `after == before`)."""
        self.vectors.changed(
            write.tenant,
            write.owner_key,
            before,
            after,
            added_ids=write.added_ids,
            added=write.added,
            removed_ids=write.removed_ids,
        )

    # ------------------------------------------------------------------ changes

    def update(
        self,
        tenant: str,
        memory_id: str,
        *,
        text: str | None = None,
        state: State | str | None = None,
        invalid_at: datetime | None = None,
        importance: float | None = None,
        kind: Kind | str | None = None,
        scope: Scope | str | None = None,
        expires_at: datetime | None = None,
        valid_from: datetime | None = None,
        observed_at: datetime | None = None,
        sources: Sequence[Source] | None = None,
        metadata: dict[str, Any] | None = None,
        reason: str = "update",
        vector: np.ndarray | None = None,
        clear: Iterable[str] = (),
    ) -> MemoryItem:
        """Write a new version with the given fields changed. `metadata` is merged into the first
        source's metadata; `clear` names nullable fields to reset (invalid_at, expires_at, valid_from)."""
        if text is not None and not text.strip():
            raise ValueError("a memory needs text")
        change = MemoryChange(
            text=text,
            state=State(state) if state is not None else None,
            invalid_at=invalid_at,
            importance=importance,
            kind=kind,
            scope=scope,
            expires_at=expires_at,
            valid_from=valid_from,
            observed_at=observed_at,
            sources=list(sources) if sources is not None else None,
            metadata=metadata,
            clear=frozenset(clear),
        )
        return self._change(tenant, memory_id, change, reason=reason, vector=vector)

    def rollback(
        self, tenant: str, memory_id: str, version: int, *, vector: np.ndarray | None = None
    ) -> MemoryItem:
        """A new version equal to `version` (text, sources, state and the other fields)."""
        snap = self.version(tenant, memory_id, version)
        return self._change(
            tenant, memory_id, MemoryChange.back_to(snap), reason=f"rollback:{version}", vector=vector
        )

    def _change(
        self, tenant: str, memory_id: str, change: MemoryChange, *, reason: str, vector: np.ndarray | None
    ) -> MemoryItem:
        # Peek (without locks) to know the owner and whether a new vector is needed, then embed
        # outside the transaction.
        peek = self._live_row(tenant, memory_id)
        raw_vector = self._vector_for(peek, change, vector)
        owner = peek.owner
        write = _VectorWrite(tenant, self._codec.owner_key(tenant, owner))
        now = utcnow()
        with self.vectors.writing(tenant, write.owner_key):  # readers keep the cache meanwhile
            with self.db.write() as session:
                stats = self._owners.lock(session, tenant, owner)
                row = self._live_row(tenant, memory_id, session)
                before = stats.changes
                item = self._write_change(session, stats, row, change, reason, raw_vector, now, write)
                after = stats.changes
            if write.removed_ids:
                self.vectors.discard(tenant, write.removed_ids)
            self._vectors_changed(write, before, after)
        return item

    def _vector_for(
        self, peek: MemoryRow, change: MemoryChange, vector: np.ndarray | None
    ) -> np.ndarray | None:
        """The raw vector of the new text when the change makes the (peeked) row enter the indices."""
        text, sources = self._codec.open_payload(peek)
        edit = change.edit(peek.state, text, sources)
        if not edit.enters_index:
            return None
        if vector is not None:
            return normalise(np.asarray(vector, np.float32))[0]
        return self._embed([edit.text])[0]

    def _write_change(
        self,
        session: Session,
        stats: OwnerStatsRow,
        row: MemoryRow,
        change: MemoryChange,
        reason: str,
        raw_vector: np.ndarray | None,
        now: datetime,
        write: _VectorWrite,
    ) -> MemoryItem:
        """The row's next version (fields, payload, version row), the indices it leaves or enters,
        and the owner's counter."""
        old_text, old_sources = self._codec.open_payload(row)
        edit = change.edit(row.state, old_text, old_sources)
        if edit.enters_index and raw_vector is None:
            # the row changed between peek and lock; embed now (rare)
            raw_vector = self._embed([edit.text])[0]
        change.apply(row, edit, now)
        if edit.text_changed:
            row.content_hash = self._codec.content_hash(row.tenant, edit.text)
        row.payload = self._codec.seal_payload(row.tenant, row.id, row.version, edit.text, edit.sources)
        if edit.leaves_index:
            self._postings.remove(session, stats, row.id, row.doc_len)
            if row.vector_id:
                write.removed_ids.append(row.vector_id)  # from LanceDB after the commit
            row.vector_id = None
        if edit.enters_index:
            assert raw_vector is not None  # embedded above at the latest
            self._enter_indices(session, stats, row, edit.text, raw_vector, write)
        stats.changes += 1  # every change, metadata and validity too (memos.storage.row_cache)
        self._vector_log.record(
            session, stats.tenant, stats.owner, stats.changes, write.added_ids, write.removed_ids
        )
        item = self._codec.to_item(row, edit.text, edit.sources)
        session.add(row)
        session.add(stats)
        session.add(self._versions.row(row, item, reason))
        try:
            session.flush()
        except BaseException:
            if write.added_ids:
                self.vectors.discard(row.tenant, write.added_ids)
            raise
        return item

    def _enter_indices(
        self,
        session: Session,
        stats: OwnerStatsRow,
        row: MemoryRow,
        text: str,
        raw_vector: np.ndarray,
        write: _VectorWrite,
    ) -> None:
        """The row's text enters the indices at its new version: its vector (before the commit:
        read-your-writes), its postings and the owner's statistics."""
        terms = self._codec.terms(row.tenant, text)
        row.doc_len = terms.length
        vid = f"{row.id}.{row.version}"
        write.added = self._codec.rotate(row.tenant, raw_vector[None, :])
        self.vectors.add(row.tenant, write.owner_key, [vid], write.added)
        write.added_ids.append(vid)
        row.vector_id = vid
        session.flush()
        self._postings.add(session, stats, [(row.id, terms)])

    def _live_row(self, tenant: str, memory_id: str, session: Session | None = None) -> MemoryRow:
        """The item's current row (in `session`, else in a short one of its own); MemoryNotFound if
        absent, deleted or another tenant's."""
        if session is None:
            with self.db.session() as own:
                return self._live_row(tenant, memory_id, own)
        row = session.execute(
            select(MemoryRow).where(col(MemoryRow.tenant) == tenant, col(MemoryRow.id) == memory_id)
        ).scalar_one_or_none()
        if row is None or row.state == State.DELETED.value:
            raise MemoryNotFound(memory_id)
        return row

    # ------------------------------------------------------------------ deletion and erasure

    def delete(self, tenant: str, memory_id: str, *, reason: str = "delete") -> MemoryItem:
        """Delete one memory: it leaves every index, and its text is removed from the item and from
        every version (the versions keep their metadata). Returns the tombstone (no text)."""
        peek = self._live_row(tenant, memory_id)
        owner = peek.owner
        write = _VectorWrite(tenant, self._codec.owner_key(tenant, owner))
        now = utcnow()
        with self.vectors.writing(tenant, write.owner_key):  # readers keep the cache meanwhile
            with self.db.write() as session:
                stats = self._owners.lock(session, tenant, owner)
                row = self._live_row(tenant, memory_id, session)
                before = stats.changes
                if row.vector_id:
                    write.removed_ids.append(row.vector_id)  # from LanceDB after the commit
                if row.state == State.ACTIVE.value:
                    self._postings.remove(session, stats, row.id, row.doc_len)
                    stats.changes += 1
                    self._vector_log.record(
                        session, tenant, owner, stats.changes, removed=write.removed_ids
                    )
                after = stats.changes
                self._versions.forget_text(session, tenant, row.id)
                row.version += 1
                row.state = State.DELETED.value
                row.payload = None
                row.vector_id = None
                row.updated_at = now
                item = self._codec.to_item(row, "", [])
                session.add(row)
                session.add(stats)
                session.add(self._versions.row(row, item, reason))
            if write.removed_ids:
                self.vectors.discard(tenant, write.removed_ids)
            self._vectors_changed(write, before, after)
        return item

    def erase_user(self, tenant: str, owner: str) -> int:
        """Remove every trace of an owner: rows, versions, postings, statistics and vectors."""
        okey = self._codec.owner_key(tenant, owner)
        with self.db.write() as session:
            count = session.execute(
                select(func.count())
                .select_from(MemoryRow)
                .where(col(MemoryRow.tenant) == tenant, col(MemoryRow.owner) == owner)
            ).scalar_one()
            self._postings.clear_owner(session, tenant, owner)
            self._versions.erase_owner(session, tenant, owner)
            self._vector_log.erase_owner(session, tenant, owner)  # other replicas reload instead
            session.execute(
                delete(MemoryRow).where(col(MemoryRow.tenant) == tenant, col(MemoryRow.owner) == owner)
            )
            self._owners.erased(session, tenant, owner)
        self.vectors.delete_owner(tenant, okey, purge=True)
        self._search.forget_owner(tenant, owner)
        if self.db.is_sqlite:
            self._sqlite_scrub()
        return int(count)

    def _sqlite_scrub(self) -> None:
        """Overwrite freed pages (deleted ciphertext) and fold the WAL back into the main file."""
        try:
            with self.db.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA secure_delete=ON")
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except SQLAlchemyError as exc:
            # The erasure stands (rows are gone and freed pages zeroed); only the WAL may still hold
            # page images until the next checkpoint. Said, not swallowed.
            log.warning("erasure: folding the WAL back failed (%s)", exception_summary(exc))

    # ------------------------------------------------------------------ usage and maintenance

    def record_hit_counts(self, tenant: str, counts: Mapping[str, int], when: datetime | None = None) -> None:
        """Usage statistics (not a new version): hits += counts[id] and last_hit_at = now for each id,
        in one transaction."""
        by_count: dict[int, list[str]] = {}
        for mid, n in sorted(counts.items()):
            if n > 0:
                by_count.setdefault(n, []).append(mid)
        if not by_count:
            return
        stamp = when or utcnow()
        with self.db.write() as session:
            for n, ids in sorted(by_count.items()):
                session.execute(
                    update(MemoryRow)
                    .where(col(MemoryRow.tenant) == tenant, col(MemoryRow.id).in_(ids))
                    .values(hits=col(MemoryRow.hits) + n, last_hit_at=stamp)
                )
        # After the commit (a reader meanwhile may cache the old count). Not a change of the row's
        # content, so the counter stays: the cached rows take the increment (another replica's hits
        # show here at the owner's next change).
        self._search.hits_recorded(counts, stamp)

    def analyze(self) -> None:
        """Refresh the query planner's statistics (after bulk loads: without them PostgreSQL plans the
        keyword queries as scans, ~10x slower). add_many calls it after large batches."""
        try:
            with self.db.engine.connect() as conn:
                if self.db.is_postgres:
                    conn.exec_driver_sql("ANALYZE memories, memory_postings, memory_term_stats")
                else:
                    conn.exec_driver_sql("PRAGMA optimize")
                conn.commit()
        except Exception as exc:
            log.warning("refreshing planner statistics failed: %s", exception_summary(exc))

    def reindex_keywords(self, tenant: str, owner: str) -> int:
        """Rebuild the owner's postings and BM25 statistics (after a tokenizer change)."""
        with self.db.write() as session:
            stats = self._owners.lock(session, tenant, owner)
            self._postings.clear_owner(session, tenant, owner)
            rows = list(
                session.execute(
                    select(MemoryRow).where(
                        col(MemoryRow.tenant) == tenant,
                        col(MemoryRow.owner) == owner,
                        col(MemoryRow.state) == State.ACTIVE.value,
                    )
                ).scalars()
            )
            docs: list[tuple[str, DocTerms]] = []
            for row in rows:
                text, _ = self._codec.open_payload(row)
                terms = self._codec.terms(tenant, text)
                row.doc_len = terms.length
                session.add(row)
                docs.append((row.id, terms))
            session.flush()
            stats.doc_count = 0  # counted again as the postings are added
            stats.total_len = 0
            self._postings.add(session, stats, docs)
            before = stats.changes
            stats.changes += 1  # doc_len changed (memos.storage.row_cache)
            self._vector_log.record(session, tenant, owner, stats.changes)
            after = stats.changes
            session.add(stats)
        self.vectors.changed(tenant, self._codec.owner_key(tenant, owner), before, after)
        return len(rows)

    # ------------------------------------------------------------------ reads

    def get(self, tenant: str, memory_id: str, *, include_deleted: bool = False) -> MemoryItem | None:
        with self.db.session() as session:
            row = session.execute(
                select(MemoryRow).where(col(MemoryRow.tenant) == tenant, col(MemoryRow.id) == memory_id)
            ).scalar_one_or_none()
            if row is None or (row.state == State.DELETED.value and not include_deleted):
                return None
            return self._codec.to_item(row)

    def list(
        self,
        tenant: str,
        owner: str,
        limit: int = 50,
        cursor: str | None = None,
        *,
        states: Sequence[State | str] = (State.ACTIVE,),
    ) -> tuple[list[MemoryItem], str | None]:
        """Newest first. The cursor is opaque (the last item's sequence number)."""
        limit = max(1, min(int(limit), 1000))
        stmt = select(MemoryRow).where(
            col(MemoryRow.tenant) == tenant,
            col(MemoryRow.owner) == owner,
            col(MemoryRow.state).in_([str(State(s)) for s in states]),
        )
        if cursor:
            stmt = stmt.where(col(MemoryRow.seq) < decode_cursor(cursor))
        stmt = stmt.order_by(col(MemoryRow.seq).desc()).limit(limit + 1)
        with self.db.session() as session:
            rows = list(session.execute(stmt).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].seq) if more and rows else None
        return [self._codec.to_item(r) for r in rows], next_cursor

    def history(self, tenant: str, memory_id: str) -> builtins.list[MemoryItem]:
        """Every version, oldest first (a deleted item has no history to show: MemoryNotFound)."""
        with self.db.session() as session:
            row = self._live_row(tenant, memory_id, session)
            versions = self._versions.of(session, tenant, memory_id)
        return [self._codec.version_item(row, v) for v in versions]

    def version(self, tenant: str, memory_id: str, version: int) -> MemoryItem:
        with self.db.session() as session:
            row = self._live_row(tenant, memory_id, session)
            v = self._versions.get(session, tenant, memory_id, version)
            if v is None:
                raise VersionNotFound(f"{memory_id} has no version {version}")
        return self._codec.version_item(row, v)

    def version_reasons(self, tenant: str, memory_id: str) -> dict[int, str]:
        return self._versions.reasons(tenant, memory_id)

    def find_duplicate(self, tenant: str, owner: str, text: str) -> MemoryItem | None:
        """The owner's active memory with exactly this (normalised) text, if any."""
        h = self._codec.content_hash(tenant, text)
        with self.db.session() as session:
            row = session.execute(
                select(MemoryRow)
                .where(
                    col(MemoryRow.tenant) == tenant,
                    col(MemoryRow.owner) == owner,
                    col(MemoryRow.state) == State.ACTIVE.value,
                    col(MemoryRow.content_hash) == h,
                )
                .order_by(col(MemoryRow.seq))
                .limit(1)
            ).scalar_one_or_none()
            return None if row is None else self._codec.to_item(row)

    def owners(self, tenant: str) -> builtins.list[str]:
        with self.db.session() as session:
            return [
                r[0]
                for r in session.execute(
                    select(col(MemoryRow.owner))
                    .where(col(MemoryRow.tenant) == tenant)
                    .distinct()
                    .order_by(col(MemoryRow.owner))
                ).all()
            ]

    # ------------------------------------------------------------------ search primitives

    def dense(
        self,
        tenant: str,
        owner: str,
        query_vector: np.ndarray,
        k: int,
        *,
        changes: int | None = None,
        exact: bool = False,
    ) -> builtins.list[tuple[str, str, float]]:
        """[(memory id, vector id, cosine)] best first over the owner's active vectors (unvalidated);
        `exact` bypasses a large owner's approximate index (the benchmark's recall reference)."""
        return self._search.dense(tenant, owner, query_vector, k, changes=changes, exact=exact)

    def warm_owner(self, tenant: str, owner: str, dim: int) -> None:
        """Load an owner's vectors into the search cache now (start-up, benchmarks)."""
        self._search.warm_owner(tenant, owner, dim)

    def keyword(
        self, tenant: str, owner: str, query: str, k: int, *, stats: OwnerStats | None = None
    ) -> builtins.list[tuple[str, float]]:
        """[(memory id, BM25)] best first over the owner's active memories."""
        return self._search.keyword(tenant, owner, query, k, stats=stats)

    def get_many(
        self,
        tenant: str,
        ids: Iterable[str],
        *,
        owner: str | None = None,
        active_only: bool = True,
        changes: int | None = None,
    ) -> dict[str, StoredMemory]:
        """The rows of `ids` that belong to the tenant (and owner); with `changes`, through the row
        cache (CandidateSearch.get_many)."""
        return self._search.get_many(tenant, ids, owner=owner, active_only=active_only, changes=changes)

    def neighbours(
        self, tenant: str, owner: str, anchors: Sequence[StoredMemory], window: int = 1
    ) -> dict[str, builtins.list[StoredMemory]]:
        """For each anchor with a session: the active memories of the same session within `window`
        sequence numbers (excluding the anchor), in sequence order."""
        return self._search.neighbours(tenant, owner, anchors, window)

    def nearest(
        self, tenant: str, owner: str, text_or_vector: str | np.ndarray, k: int = 5
    ) -> builtins.list[tuple[MemoryItem, float]]:
        """The owner's active memories nearest to a text or a raw vector: [(item, cosine)] best first."""
        if isinstance(text_or_vector, str):
            vector = self._embed([text_or_vector])[0]
        else:
            vector = np.asarray(text_or_vector, np.float32)
        return self._search.nearest(tenant, owner, vector, k)


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"s:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("s:"):
            raise ValueError
        return int(raw[2:])
    except Exception as exc:
        raise ValueError("invalid cursor") from exc
