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
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy import text as sql_text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from memos.embeddings import Embedder, normalise
from memos.errors import NotFound
from memos.item import Kind, MemoryItem, Scope, Source, State, bounded_sources, snapshot, source_dict
from memos.keys.keyring import Keyring
from memos.limits import metadata_problem
from memos.logsafe import exception_summary
from memos.storage.db import Database
from memos.storage.keyword import Bm25, DocTerms, doc_terms, normalise_for_duplicate, tokenize
from memos.storage.row_cache import OwnerRowCache
from memos.storage.tables import (
    MemoryRow,
    MemoryVersionRow,
    OwnerStatsRow,
    PostingRow,
    TermStatsRow,
    item_aad,
    version_aad,
)
from memos.storage.vectors import VectorIndex

log = logging.getLogger(__name__)


class MemoryNotFound(NotFound):
    """No such memory in this tenant (or it was deleted)."""

    param = "id"

    def __init__(self, memory_id: str) -> None:
        super().__init__(f"No memory found with id '{memory_id}'.")
        self.memory_id = memory_id


class VersionNotFound(NotFound):
    pass


def new_memory_id() -> str:
    """Time-ordered, unguessable: 12 hex digits of milliseconds + 16 random hex digits."""
    return f"mem_{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _aware(value).isoformat()


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _source_from(data: dict[str, Any]) -> Source:
    return Source(
        request_id=data.get("request_id"),
        message_index=data.get("message_index"),
        session=data.get("session"),
        metadata=dict(data.get("metadata") or {}),
    )


@dataclass
class NewMemory:
    """One memory to add. `vector` is the raw (unrotated) embedding if already computed."""

    text: str
    sources: list[Source] = field(default_factory=list)
    observed_at: datetime | None = None
    scope: Scope | str = Scope.USER
    kind: Kind | str = Kind.PLAINTEXT
    importance: float = 0.5
    valid_from: datetime | None = None
    expires_at: datetime | None = None
    vector: np.ndarray | None = None
    session: str | None = None  # defaults to the first source's session


class StoredMemory:
    """A row with the vault-side facts retrieval needs (sequence number, session key, vector id) and
    its scalar fields; the text is decrypted only when `item` is first read (ranking needs no text)."""

    __slots__ = (
        "_item",
        "_last_hit_at",
        "_vault",
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

    def __init__(self, vault: MemVault, row: Any) -> None:
        self._vault = vault
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
        self.observed_at = _aware(row.observed_at)
        self.created_at = _aware(row.created_at)
        self.expires_at = _aware(row.expires_at)
        self.invalid_at = _aware(row.invalid_at)

    @property
    def item(self) -> MemoryItem:
        if self._item is None:
            item = self._vault._to_item(self.row)
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


@dataclass(frozen=True)
class OwnerStats:
    doc_count: int
    total_len: int
    changes: int


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
        # Search candidates decoded once per owner and change counter (memos.storage.row_cache).
        self._rows: OwnerRowCache[StoredMemory] = OwnerRowCache(row_cache_rows)
        # Vectors whose deletion failed (a full disk fails the undo of a failed write too): deleted
        # again after the next write that commits.
        self._leftover_vectors: list[tuple[str, list[str]]] = []
        self._leftover_lock = threading.Lock()

    # ------------------------------------------------------------------ keys and codecs

    def owner_key(self, tenant: str, owner: str) -> str:
        return self.keyring.cipher(tenant).blind("owner\x00" + owner)

    def _content_hash(self, tenant: str, text: str) -> str:
        return self.keyring.cipher(tenant).blind("dup\x00" + normalise_for_duplicate(text))

    def _session_key(self, tenant: str, session: str | None) -> str | None:
        return None if not session else self.keyring.cipher(tenant).blind("session\x00" + session)

    def _terms(self, tenant: str, text: str) -> DocTerms:
        cipher = self.keyring.cipher(tenant)
        return doc_terms(tokenize(text), cipher.blind)

    def _query_terms(self, tenant: str, text: str) -> list[str]:
        cipher = self.keyring.cipher(tenant)
        return sorted({cipher.blind(t) for t in tokenize(text)})

    def _seal_payload(
        self, tenant: str, memory_id: str, version: int, text: str, sources: list[Source]
    ) -> bytes:
        # Never seal what could not be read back and answered as JSON (metadata nested too deep).
        for s in sources:
            if s.metadata and (problem := metadata_problem(s.metadata)) is not None:
                raise ValueError(f"source metadata {problem}: not stored")
        body = json.dumps({"text": text, "sources": [source_dict(s) for s in sources]}, ensure_ascii=False)
        return self.keyring.cipher(tenant).encrypt_text(body, item_aad(tenant, memory_id, version))

    def _open_payload(self, row: Any) -> tuple[str, list[Source]]:
        if row.payload is None:
            return "", []
        body = json.loads(
            self.keyring.cipher(row.tenant).decrypt_text(
                row.payload, item_aad(row.tenant, row.id, row.version)
            )
        )
        return body["text"], [_source_from(s) for s in body.get("sources", [])]

    def _to_item(
        self, row: MemoryRow, text: str | None = None, sources: list[Source] | None = None
    ) -> MemoryItem:
        if text is None:
            text, sources = self._open_payload(row)
        return MemoryItem(
            id=row.id,
            tenant=row.tenant,
            owner=row.owner,
            text=text,
            scope=Scope(row.scope),
            kind=Kind(row.kind),
            state=State(row.state),
            version=row.version,
            sources=list(sources or []),
            observed_at=_aware(row.observed_at),
            valid_from=_aware(row.valid_from),
            invalid_at=_aware(row.invalid_at),
            created_at=_aware(row.created_at),
            updated_at=_aware(row.updated_at),
            hits=row.hits,
            last_hit_at=_aware(row.last_hit_at),
            importance=row.importance,
            expires_at=_aware(row.expires_at),
        )

    def _stored(self, row: Any) -> StoredMemory:
        return StoredMemory(self, row)

    def _version_values(self, row: Any, item: MemoryItem, reason: str) -> dict[str, Any]:
        payload = None
        if row.state != State.DELETED:
            payload = self.keyring.cipher(row.tenant).encrypt_text(
                json.dumps(snapshot(item), ensure_ascii=False),
                version_aad(row.tenant, row.id, row.version),
            )
        return {
            "memory_id": row.id,
            "version": row.version,
            "tenant": row.tenant,
            "owner": row.owner,
            "state": row.state,
            "reason": reason[:64],
            "payload": payload,
            "created_at": row.updated_at,
        }

    def _version_row(self, row: Any, item: MemoryItem, reason: str) -> MemoryVersionRow:
        return MemoryVersionRow(**self._version_values(row, item, reason))

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if self.embedder is None:
            raise RuntimeError("this vault has no embedder: pass vectors")
        return normalise(self.embedder.embed(list(texts)))

    # ------------------------------------------------------------------ owner statistics

    def _lock_stats(self, session: Any, tenant: str, owner: str) -> OwnerStatsRow:
        """The owner's statistics row, locked for this transaction (serialises writers per owner)."""
        if self.db.is_postgres:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        session.execute(
            dialect_insert(OwnerStatsRow)
            .values(tenant=tenant, owner=owner, doc_count=0, total_len=0, next_seq=0, changes=0)
            .on_conflict_do_nothing(index_elements=["tenant", "owner"])
        )
        stmt = select(OwnerStatsRow).where(OwnerStatsRow.tenant == tenant, OwnerStatsRow.owner == owner)
        if self.db.is_postgres:
            stmt = stmt.with_for_update()
        return session.execute(stmt).scalar_one()

    def _upsert(self) -> Any:
        if self.db.is_postgres:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        return dialect_insert

    def _index_terms(
        self, session: Any, tenant: str, owner: str, docs: Sequence[tuple[str, DocTerms]]
    ) -> None:
        """Postings of these documents, and +1 document frequency per distinct term."""
        postings = [
            {"memory_id": mid, "term": term, "tenant": tenant, "owner": owner, "tf": tf, "dl": terms.length}
            for mid, terms in docs
            for term, tf in terms.tf.items()
        ]
        if not postings:
            return
        session.execute(insert(PostingRow), postings)
        df: dict[str, int] = {}
        for _mid, terms in docs:
            for term in terms.tf:
                df[term] = df.get(term, 0) + 1
        stmt = self._upsert()(TermStatsRow)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tenant", "owner", "term"], set_={"df": TermStatsRow.df + stmt.excluded.df}
        )
        session.execute(
            stmt, [{"tenant": tenant, "owner": owner, "term": t, "df": n} for t, n in sorted(df.items())]
        )

    def _unindex(self, session: Any, tenant: str, owner: str, memory_id: str) -> None:
        terms = [
            r[0]
            for r in session.execute(
                select(PostingRow.term).where(PostingRow.memory_id == memory_id, PostingRow.tenant == tenant)
            ).all()
        ]
        if not terms:
            return
        session.execute(
            delete(PostingRow).where(PostingRow.memory_id == memory_id, PostingRow.tenant == tenant)
        )
        session.execute(
            update(TermStatsRow)
            .where(
                TermStatsRow.tenant == tenant,
                TermStatsRow.owner == owner,
                TermStatsRow.term.in_(sorted(terms)),
            )
            .values(df=TermStatsRow.df - 1)
        )

    def stats(self, tenant: str, owner: str) -> OwnerStats:
        with self.db.session() as session:
            row = session.get(OwnerStatsRow, (tenant, owner))
            if row is None:
                return OwnerStats(0, 0, 0)
            return OwnerStats(row.doc_count, row.total_len, row.changes)

    # ------------------------------------------------------------------ writes

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
        cipher = self.keyring.cipher(tenant)
        okey = self.owner_key(tenant, owner)
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
        hashes = [self._content_hash(tenant, m.text) for m in memories]
        now = utcnow()
        results: list[MemoryItem | None] = [None] * len(memories)
        written_vids: list[str] = []
        with self.vectors.cache.writing((tenant, okey)):  # readers keep the cache meanwhile
            # the vectors of a transaction that did not commit are deleted again
            with self._vectors_undone_on_failure(tenant, written_vids), self.db.write() as session:
                stats = self._lock_stats(session, tenant, owner)
                existing: dict[str, MemoryRow] = {}
                if dedupe:
                    rows = session.execute(
                        select(MemoryRow).where(
                            MemoryRow.tenant == tenant,
                            MemoryRow.owner == owner,
                            MemoryRow.state == State.ACTIVE.value,
                            MemoryRow.content_hash.in_(sorted(set(hashes))),
                        )
                    ).scalars()
                    existing = {row.content_hash: row for row in rows}
                fresh: list[tuple[int, MemoryRow, MemoryItem, DocTerms]] = []
                merged: dict[str, tuple[MemoryRow, list[Source], str]] = {}
                seq = stats.next_seq
                for i, m in enumerate(memories):
                    target = existing.get(hashes[i]) if dedupe else None
                    if target is not None:
                        if target.id not in merged:
                            text, srcs = (
                                self._open_payload(target) if target.payload is not None else ("", [])
                            )
                            merged[target.id] = (target, srcs, text)
                        _row, srcs, _text = merged[target.id]
                        for s in m.sources:
                            if source_dict(s) not in [source_dict(x) for x in srcs]:
                                srcs.append(s)
                        srcs[:] = bounded_sources(srcs)
                        results[i] = None  # filled below
                        continue
                    memory_id = new_memory_id()
                    seq += 1
                    session_name = m.session or next((s.session for s in m.sources if s.session), None)
                    terms = self._terms(tenant, m.text)
                    # a plain namespace (bulk-inserted below): SQLModel objects cost ~1 ms each to build
                    row = SimpleNamespace(
                        id=memory_id,
                        tenant=tenant,
                        owner=owner,
                        seq=seq,
                        scope=str(Scope(m.scope)),
                        kind=str(Kind(m.kind)),
                        state=State.ACTIVE.value,
                        version=1,
                        payload=self._seal_payload(tenant, memory_id, 1, m.text, m.sources),
                        content_hash=hashes[i],
                        session_key=self._session_key(tenant, session_name),
                        vector_id=f"{memory_id}.1",
                        doc_len=terms.length,
                        importance=float(m.importance),
                        observed_at=_aware(m.observed_at) or now,
                        valid_from=_aware(m.valid_from),
                        expires_at=_aware(m.expires_at),
                        created_at=now,
                        updated_at=now,
                        invalid_at=None,
                        hits=0,
                        last_hit_at=None,
                    )
                    item = self._to_item(row, m.text, list(m.sources))
                    fresh.append((i, row, item, terms))
                    if dedupe:
                        existing[hashes[i]] = row
                        merged[row.id] = (row, item.sources, m.text)
                # fresh rows that absorbed duplicates from this same batch carry the merged sources
                for _i, row, item, _terms in fresh:
                    if len(item.sources) != len(memories[_i].sources):
                        row.payload = self._seal_payload(tenant, row.id, 1, item.text, item.sources)
                # merged sources into pre-existing rows: a new version each
                merged_items: dict[str, MemoryItem] = {}
                remerged = False
                fresh_ids = {f[1].id for f in fresh}
                for mid, (row, srcs, _text) in merged.items():
                    if mid in fresh_ids:
                        continue
                    old_text, old_sources = self._open_payload(row)
                    if [source_dict(s) for s in srcs] == [source_dict(s) for s in old_sources]:
                        merged_items[mid] = self._to_item(row, old_text, old_sources)
                        continue
                    row.version += 1
                    row.updated_at = now
                    row.payload = self._seal_payload(tenant, row.id, row.version, old_text, srcs)
                    item = self._to_item(row, old_text, srcs)
                    session.add(row)
                    session.add(self._version_row(row, item, "merge"))
                    merged_items[mid] = item
                    remerged = True
                # vectors first (read-your-writes), then rows
                if fresh:
                    vids = [f[1].vector_id for f in fresh]
                    vecs = np.stack([raw_vectors[f[0]] for f in fresh])
                    rotated = cipher.rotate(vecs)
                    written_vids.extend(vids)  # before the write: a partial write is undone too
                    self.vectors.add(tenant, okey, vids, rotated)  # type: ignore[arg-type]
                if fresh:
                    session.execute(insert(MemoryRow), [dict(vars(f[1])) for f in fresh])
                    session.execute(
                        insert(MemoryVersionRow),
                        [self._version_values(f[1], f[2], "create") for f in fresh],
                    )
                self._index_terms(
                    session, tenant, owner, [(row.id, terms) for _i, row, _item, terms in fresh]
                )
                prev_changes = stats.changes
                if fresh:
                    stats.next_seq = seq
                    stats.doc_count += len(fresh)
                    stats.total_len += sum(f[3].length for f in fresh)
                if fresh or remerged:  # every row change moves the counter (memos.storage.row_cache)
                    stats.changes += 1
                    session.add(stats)
                new_changes = stats.changes
                session.flush()
                out = self._added_in_order(memories, hashes, fresh, merged_items, existing)
                if before_commit is not None:
                    before_commit(session, out)
            if fresh:
                self.vectors.cache.apply(
                    (tenant, okey),
                    prev_changes,
                    new_changes,
                    add_ids=written_vids,
                    add_vectors=cipher.rotate(np.stack([raw_vectors[f[0]] for f in fresh])),
                )
            elif new_changes != prev_changes:
                self.vectors.cache.apply((tenant, okey), prev_changes, new_changes)
        if len(fresh) >= self.analyze_after:
            self.analyze()
        if self._leftover_vectors:
            self._forget_leftover_vectors()
        return out

    @staticmethod
    def _added_in_order(
        memories: Sequence[NewMemory],
        hashes: Sequence[str],
        fresh: Sequence[tuple[int, Any, MemoryItem, DocTerms]],
        merged_items: Mapping[str, MemoryItem],
        existing: Mapping[str, Any],
    ) -> list[MemoryItem]:
        """add_many's answer: per memory asked for, the item it became (new, or the one it merged into)."""
        by_id = {f[1].id: f[2] for f in fresh}
        by_id.update(merged_items)
        fresh_by_index = {f[0]: f[2] for f in fresh}
        out: list[MemoryItem] = []
        for i in range(len(memories)):
            if i in fresh_by_index:
                out.append(fresh_by_index[i])
            else:
                out.append(by_id[existing[hashes[i]].id])
        return out

    @contextmanager
    def _vectors_undone_on_failure(self, tenant: str, vids: list[str]) -> Iterator[None]:
        """Delete the vectors named in `vids` (filled while the block runs) when the block fails."""
        try:
            yield
        except BaseException:
            if vids:
                self._forget_vectors(tenant, vids)
            raise

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

    def _forget_vectors(self, tenant: str, vids: Sequence[str]) -> None:
        try:
            self.vectors.delete(tenant, vids)
        except Exception as exc:
            # Meanwhile they are never returned (every hit is re-checked against SQL by vector id), but
            # they would take candidate slots: try again after the next committed write.
            log.warning("deleting %d vectors failed: %s", len(vids), exception_summary(exc))
            with self._leftover_lock:
                self._leftover_vectors.append((tenant, list(vids)))

    def _forget_leftover_vectors(self) -> None:
        with self._leftover_lock:
            pending, self._leftover_vectors = self._leftover_vectors, []
        for tenant, vids in pending:
            self._forget_vectors(tenant, vids)  # put back if it fails again

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
        snapshot: dict[str, Any] = {}
        if text is not None:
            snapshot["text"] = text
        return self._change(
            tenant,
            memory_id,
            reason=reason,
            vector=vector,
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

    def _change(
        self,
        tenant: str,
        memory_id: str,
        *,
        reason: str,
        vector: np.ndarray | None,
        text: str | None,
        state: State | None,
        invalid_at: datetime | None,
        importance: float | None,
        kind: Kind | str | None,
        scope: Scope | str | None,
        expires_at: datetime | None,
        valid_from: datetime | None,
        observed_at: datetime | None,
        sources: list[Source] | None,
        metadata: dict[str, Any] | None,
        clear: frozenset[str],
        created_at: datetime | None = None,
    ) -> MemoryItem:
        # Peek (without locks) to know the owner and whether a new vector is needed, then embed
        # outside the transaction.
        peek = self._live_row(tenant, memory_id)
        owner = peek.owner
        old_text_peek, _ = self._open_payload(peek)
        new_text = text if text is not None else old_text_peek
        target_state = state if state is not None else State(peek.state)
        need_vector = target_state == State.ACTIVE and (
            peek.state != State.ACTIVE.value or new_text != old_text_peek
        )
        raw_vector = None
        if need_vector:
            raw_vector = (
                normalise(np.asarray(vector, np.float32))[0]
                if vector is not None
                else self._embed([new_text])[0]
            )
        cipher = self.keyring.cipher(tenant)
        okey = self.owner_key(tenant, owner)
        now = utcnow()
        added_vid: str | None = None
        removed_vid: str | None = None
        with self.vectors.cache.writing((tenant, okey)):  # readers keep the cache meanwhile
            with self.db.write() as session:
                stats = self._lock_stats(session, tenant, owner)
                row = self._live_row(tenant, memory_id, session)
                old_text, old_sources = self._open_payload(row)
                was_active = row.state == State.ACTIVE.value
                new_text = text if text is not None else old_text
                new_sources = list(sources) if sources is not None else list(old_sources)
                if metadata:
                    if not new_sources:
                        new_sources = [Source()]
                    first = new_sources[0]
                    new_sources[0] = Source(
                        request_id=first.request_id,
                        message_index=first.message_index,
                        session=first.session,
                        metadata={**(first.metadata or {}), **metadata},
                    )
                new_state = state if state is not None else State(row.state)
                text_changed = new_text != old_text
                now_active = new_state == State.ACTIVE
                leave_index = was_active and (not now_active or text_changed)
                enter_index = now_active and (not was_active or text_changed)
                if enter_index and raw_vector is None:
                    # the row changed between peek and lock; embed now (rare)
                    raw_vector = self._embed([new_text])[0]
                row.version += 1
                row.updated_at = now
                row.state = new_state.value
                if importance is not None:
                    row.importance = float(importance)
                if kind is not None:
                    row.kind = str(Kind(kind))
                if scope is not None:
                    row.scope = str(Scope(scope))
                for name, value in (
                    ("invalid_at", invalid_at),
                    ("expires_at", expires_at),
                    ("valid_from", valid_from),
                    ("observed_at", observed_at),
                ):
                    if value is not None:
                        setattr(row, name, _aware(value))
                    elif name in clear:
                        setattr(row, name, None)
                if created_at is not None:
                    row.created_at = created_at
                if text_changed:
                    row.content_hash = self._content_hash(tenant, new_text)
                row.payload = self._seal_payload(tenant, row.id, row.version, new_text, new_sources)
                prev_changes = stats.changes
                if leave_index:
                    self._unindex(session, tenant, owner, row.id)
                    stats.doc_count -= 1
                    stats.total_len -= row.doc_len
                    removed_vid = row.vector_id
                    row.vector_id = None
                if enter_index:
                    terms = self._terms(tenant, new_text)
                    row.doc_len = terms.length
                    added_vid = f"{row.id}.{row.version}"
                    self.vectors.add(tenant, okey, [added_vid], cipher.rotate(raw_vector[None, :]))  # type: ignore[index]
                    row.vector_id = added_vid
                    session.flush()
                    self._index_terms(session, tenant, owner, [(row.id, terms)])
                    stats.doc_count += 1
                    stats.total_len += terms.length
                stats.changes += 1  # every change, metadata and validity too (memos.storage.row_cache)
                new_changes = stats.changes
                item = self._to_item(row, new_text, new_sources)
                session.add(row)
                session.add(stats)
                session.add(self._version_row(row, item, reason))
                try:
                    session.flush()
                except BaseException:
                    if added_vid:
                        self._forget_vectors(tenant, [added_vid])
                    raise
            if removed_vid:
                self._forget_vectors(tenant, [removed_vid])
            self.vectors.cache.apply(
                (tenant, okey),
                prev_changes,
                new_changes,
                add_ids=[added_vid] if added_vid else (),
                add_vectors=cipher.rotate(raw_vector[None, :]) if added_vid else None,  # type: ignore[index]
                remove_ids=[removed_vid] if removed_vid else (),
            )
        return item

    def _live_row(self, tenant: str, memory_id: str, session: Session | None = None) -> MemoryRow:
        """The item's current row (in `session`, else in a short one of its own); MemoryNotFound if
        absent, deleted or another tenant's."""
        if session is None:
            with self.db.session() as own:
                return self._live_row(tenant, memory_id, own)
        row = session.execute(
            select(MemoryRow).where(MemoryRow.tenant == tenant, MemoryRow.id == memory_id)
        ).scalar_one_or_none()
        if row is None or row.state == State.DELETED.value:
            raise MemoryNotFound(memory_id)
        return row

    def delete(self, tenant: str, memory_id: str, *, reason: str = "delete") -> MemoryItem:
        """Delete one memory: it leaves every index, and its text is removed from the item and from
        every version (the versions keep their metadata). Returns the tombstone (no text)."""
        peek = self._live_row(tenant, memory_id)
        owner = peek.owner
        okey = self.owner_key(tenant, owner)
        now = utcnow()
        with self.vectors.cache.writing((tenant, okey)):  # readers keep the cache meanwhile
            with self.db.write() as session:
                stats = self._lock_stats(session, tenant, owner)
                row = self._live_row(tenant, memory_id, session)
                was_active = row.state == State.ACTIVE.value
                prev_changes = stats.changes
                removed_vid = row.vector_id
                if was_active:
                    self._unindex(session, tenant, row.owner, row.id)
                    stats.doc_count -= 1
                    stats.total_len -= row.doc_len
                    stats.changes += 1
                new_changes = stats.changes
                session.execute(
                    update(MemoryVersionRow)
                    .where(MemoryVersionRow.tenant == tenant, MemoryVersionRow.memory_id == row.id)
                    .values(payload=None)
                )
                row.version += 1
                row.state = State.DELETED.value
                row.payload = None
                row.vector_id = None
                row.updated_at = now
                item = self._to_item(row, "", [])
                session.add(row)
                session.add(stats)
                session.add(self._version_row(row, item, reason))
            if removed_vid:
                self._forget_vectors(tenant, [removed_vid])
            if was_active:
                self.vectors.cache.apply(
                    (tenant, okey), prev_changes, new_changes, remove_ids=[removed_vid] if removed_vid else ()
                )
        return item

    def rollback(
        self, tenant: str, memory_id: str, version: int, *, vector: np.ndarray | None = None
    ) -> MemoryItem:
        """A new version equal to `version` (text, sources, state and the other fields)."""
        snap = self.version(tenant, memory_id, version)
        return self._change(
            tenant,
            memory_id,
            reason=f"rollback:{version}",
            vector=vector,
            text=snap.text,
            state=snap.state,
            invalid_at=snap.invalid_at,
            importance=snap.importance,
            kind=snap.kind,
            scope=snap.scope,
            expires_at=snap.expires_at,
            valid_from=snap.valid_from,
            observed_at=snap.observed_at,
            sources=snap.sources,
            metadata=None,
            clear=frozenset(
                name for name in ("invalid_at", "expires_at", "valid_from") if getattr(snap, name) is None
            ),
        )

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
                    .where(MemoryRow.tenant == tenant, MemoryRow.id.in_(ids))
                    .values(hits=MemoryRow.hits + n, last_hit_at=stamp)
                )
        # After the commit (a reader meanwhile may cache the old count). Not a change of the row's
        # content, so the counter stays: the cached rows take the increment (another replica's hits
        # show here at the owner's next change).
        self._rows.update(counts, lambda mid, stored: stored.with_hits(counts[mid], stamp))

    def erase_user(self, tenant: str, owner: str) -> int:
        """Remove every trace of an owner: rows, versions, postings, statistics and vectors."""
        okey = self.owner_key(tenant, owner)
        with self.db.write() as session:
            count = session.execute(
                select(func.count())
                .select_from(MemoryRow)
                .where(MemoryRow.tenant == tenant, MemoryRow.owner == owner)
            ).scalar_one()
            session.execute(delete(PostingRow).where(PostingRow.tenant == tenant, PostingRow.owner == owner))
            session.execute(
                delete(TermStatsRow).where(TermStatsRow.tenant == tenant, TermStatsRow.owner == owner)
            )
            session.execute(
                delete(MemoryVersionRow).where(
                    MemoryVersionRow.tenant == tenant, MemoryVersionRow.owner == owner
                )
            )
            session.execute(delete(MemoryRow).where(MemoryRow.tenant == tenant, MemoryRow.owner == owner))
            stats = session.get(OwnerStatsRow, (tenant, owner))
            if stats is not None:
                # keep the row (with a bumped counter) so other replicas' caches see the change
                stats.doc_count = 0
                stats.total_len = 0
                stats.changes += 1
                session.add(stats)
        self.vectors.delete_owner(tenant, okey, purge=True)
        self._rows.drop((tenant, owner))
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

    # ------------------------------------------------------------------ reads

    def get(self, tenant: str, memory_id: str, *, include_deleted: bool = False) -> MemoryItem | None:
        with self.db.session() as session:
            row = session.execute(
                select(MemoryRow).where(MemoryRow.tenant == tenant, MemoryRow.id == memory_id)
            ).scalar_one_or_none()
            if row is None or (row.state == State.DELETED.value and not include_deleted):
                return None
            return self._to_item(row)

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
            table = MemoryRow.__table__
            rows = list(session.execute(select(table).where(table.c.id.in_(ids))).all())
        return {
            row.id: self._stored(row)
            for row in rows
            if row.tenant == tenant
            and (owner is None or row.owner == owner)
            and (not active_only or row.state == State.ACTIVE.value)
        }

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
            MemoryRow.tenant == tenant,
            MemoryRow.owner == owner,
            MemoryRow.state.in_([str(State(s)) for s in states]),
        )
        if cursor:
            stmt = stmt.where(MemoryRow.seq < decode_cursor(cursor))
        stmt = stmt.order_by(MemoryRow.seq.desc()).limit(limit + 1)
        with self.db.session() as session:
            rows = list(session.execute(stmt).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].seq) if more and rows else None
        return [self._to_item(r) for r in rows], next_cursor

    def history(self, tenant: str, memory_id: str) -> list[MemoryItem]:
        """Every version, oldest first (a deleted item has no history to show: MemoryNotFound)."""
        with self.db.session() as session:
            row = self._live_row(tenant, memory_id, session)
            versions = list(
                session.execute(
                    select(MemoryVersionRow)
                    .where(MemoryVersionRow.tenant == tenant, MemoryVersionRow.memory_id == memory_id)
                    .order_by(MemoryVersionRow.version)
                ).scalars()
            )
        return [self._version_item(row, v) for v in versions]

    def version(self, tenant: str, memory_id: str, version: int) -> MemoryItem:
        with self.db.session() as session:
            row = self._live_row(tenant, memory_id, session)
            v = session.get(MemoryVersionRow, (memory_id, int(version)))
            if v is None or v.tenant != tenant or v.payload is None:
                raise VersionNotFound(f"{memory_id} has no version {version}")
        return self._version_item(row, v)

    def _version_item(self, row: MemoryRow, v: MemoryVersionRow) -> MemoryItem:
        snap: dict[str, Any] = {}
        if v.payload is not None:
            snap = json.loads(
                self.keyring.cipher(v.tenant).decrypt_text(
                    v.payload, version_aad(v.tenant, v.memory_id, v.version)
                )
            )
        return MemoryItem(
            id=v.memory_id,
            tenant=v.tenant,
            owner=v.owner,
            text=snap.get("text", ""),
            scope=Scope(snap.get("scope", row.scope)),
            kind=Kind(snap.get("kind", row.kind)),
            state=State(v.state),
            version=v.version,
            sources=[_source_from(s) for s in snap.get("sources", [])],
            observed_at=_from_iso(snap.get("observed_at")),
            valid_from=_from_iso(snap.get("valid_from")),
            invalid_at=_from_iso(snap.get("invalid_at")),
            created_at=_from_iso(snap.get("created_at")) or _aware(row.created_at),
            updated_at=_aware(v.created_at),
            importance=float(snap.get("importance", row.importance)),
            expires_at=_from_iso(snap.get("expires_at")),
        )

    def version_reasons(self, tenant: str, memory_id: str) -> dict[int, str]:
        with self.db.session() as session:
            rows = session.execute(
                select(MemoryVersionRow.version, MemoryVersionRow.reason).where(
                    MemoryVersionRow.tenant == tenant, MemoryVersionRow.memory_id == memory_id
                )
            ).all()
        return {int(v): r for v, r in rows}

    # ------------------------------------------------------------------ search primitives

    def dense(
        self, tenant: str, owner: str, query_vector: np.ndarray, k: int, *, changes: int | None = None
    ) -> list[tuple[str, str, float]]:
        """[(memory id, vector id, cosine)] best first over the owner's active vectors (unvalidated)."""
        if changes is None:
            changes = self.stats(tenant, owner).changes
        cipher = self.keyring.cipher(tenant)
        q = cipher.rotate(normalise(np.asarray(query_vector, np.float32)))[0]
        hits = self.vectors.search(
            tenant,
            self.owner_key(tenant, owner),
            changes,
            q,
            k,
            recheck=lambda: self.stats(tenant, owner).changes,
        )
        return [(vid.rsplit(".", 1)[0], vid, score) for vid, score in hits]

    def warm_owner(self, tenant: str, owner: str, dim: int) -> None:
        """Load an owner's vectors into the search cache now (start-up, benchmarks)."""
        changes = self.stats(tenant, owner).changes
        self.vectors.warm(tenant, self.owner_key(tenant, owner), dim, changes)

    def keyword(
        self, tenant: str, owner: str, query: str, k: int, *, stats: OwnerStats | None = None
    ) -> list[tuple[str, float]]:
        """[(memory id, BM25)] best first over the owner's active memories."""
        stats = stats or self.stats(tenant, owner)
        terms = self._query_terms(tenant, query)
        with self.db.session() as session:
            return self.bm25.search(session, tenant, owner, terms, stats.doc_count, stats.total_len, k)

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
        table = MemoryRow.__table__
        columns = ", ".join(c.name for c in table.columns)
        statement = " UNION ALL ".join(
            f"SELECT {columns} FROM {table.name} WHERE tenant = :tenant AND owner = :owner AND state = :state"
            f" AND session_key = :k{i} AND seq BETWEEN :lo{i} AND :hi{i}"
            for i in range(len(wanted))
        )
        params: dict[str, Any] = {"tenant": tenant, "owner": owner, "state": State.ACTIVE.value}
        for i, a in enumerate(wanted):
            params.update({f"k{i}": a.session_key, f"lo{i}": a.seq - window, f"hi{i}": a.seq + window})
        with self.db.session() as session:
            typed = sql_text(statement).columns(*table.columns)  # result types (datetimes) as in get_many
            found = {r.id: r for r in session.execute(typed, params).all()}
        rows = [self._stored(r) for r in sorted(found.values(), key=lambda r: r.seq)]
        return {
            a.id: [r for r in rows if r.session_key == a.session_key and 0 < abs(r.seq - a.seq) <= window]
            for a in wanted
        }

    def nearest(
        self, tenant: str, owner: str, text_or_vector: str | np.ndarray, k: int = 5
    ) -> list[tuple[MemoryItem, float]]:
        """The owner's active memories nearest to a text or a raw vector: [(item, cosine)] best first."""
        if isinstance(text_or_vector, str):
            vector = self._embed([text_or_vector])[0]
        else:
            vector = np.asarray(text_or_vector, np.float32)
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

    def find_duplicate(self, tenant: str, owner: str, text: str) -> MemoryItem | None:
        """The owner's active memory with exactly this (normalised) text, if any."""
        h = self._content_hash(tenant, text)
        with self.db.session() as session:
            row = session.execute(
                select(MemoryRow)
                .where(
                    MemoryRow.tenant == tenant,
                    MemoryRow.owner == owner,
                    MemoryRow.state == State.ACTIVE.value,
                    MemoryRow.content_hash == h,
                )
                .order_by(MemoryRow.seq)
                .limit(1)
            ).scalar_one_or_none()
            return None if row is None else self._to_item(row)

    def reindex_keywords(self, tenant: str, owner: str) -> int:
        """Rebuild the owner's postings and BM25 statistics (after a tokenizer change)."""
        with self.db.write() as session:
            stats = self._lock_stats(session, tenant, owner)
            session.execute(delete(PostingRow).where(PostingRow.tenant == tenant, PostingRow.owner == owner))
            session.execute(
                delete(TermStatsRow).where(TermStatsRow.tenant == tenant, TermStatsRow.owner == owner)
            )
            rows = list(
                session.execute(
                    select(MemoryRow).where(
                        MemoryRow.tenant == tenant,
                        MemoryRow.owner == owner,
                        MemoryRow.state == State.ACTIVE.value,
                    )
                ).scalars()
            )
            total = 0
            docs: list[tuple[str, DocTerms]] = []
            for row in rows:
                text, _ = self._open_payload(row)
                terms = self._terms(tenant, text)
                row.doc_len = terms.length
                total += terms.length
                session.add(row)
                docs.append((row.id, terms))
            session.flush()
            self._index_terms(session, tenant, owner, docs)
            stats.doc_count = len(rows)
            stats.total_len = total
            prev_changes = stats.changes
            stats.changes += 1  # doc_len changed (memos.storage.row_cache)
            new_changes = stats.changes
            session.add(stats)
        self.vectors.cache.apply((tenant, self.owner_key(tenant, owner)), prev_changes, new_changes)
        return len(rows)

    def owners(self, tenant: str) -> list[str]:
        with self.db.session() as session:
            return [
                r[0]
                for r in session.execute(
                    select(MemoryRow.owner)
                    .where(MemoryRow.tenant == tenant)
                    .distinct()
                    .order_by(MemoryRow.owner)
                ).all()
            ]


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
