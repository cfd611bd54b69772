"""Adding memories: what a caller asks to add (NewMemory), and the rows one `MemVault.add_many`
batch of an owner becomes.

An exact duplicate of an active memory (same normalised text, found by its keyed hash) is not stored
twice: its sources are merged into the existing item (a new version when a source is new) and that
item answers in its place; duplicates inside one batch collapse the same way onto the first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from memos.clock import aware
from memos.item import Kind, MemoryItem, Scope, Source, State, bounded_sources, source_dict
from memos.storage.codec import MemoryCodec
from memos.storage.keyword import DocTerms
from memos.storage.tables import MemoryRow


def new_memory_id() -> str:
    """Time-ordered, unguessable: 12 hex digits of milliseconds + 16 random hex digits."""
    return f"mem_{int(time.time() * 1000):012x}{os.urandom(8).hex()}"


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


@dataclass
class NewRow:
    """A new `memories` row: a plain record, bulk-inserted (SQLModel objects cost ~1 ms each to build)."""

    id: str
    tenant: str
    owner: str
    seq: int
    scope: str
    kind: str
    state: str
    version: int
    payload: bytes | None
    content_hash: str
    session_key: str | None
    vector_id: str
    doc_len: int
    importance: float
    observed_at: datetime | None
    valid_from: datetime | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    invalid_at: datetime | None = None
    hits: int = 0
    last_hit_at: datetime | None = None


@dataclass
class FreshMemory:
    """A memory of the batch that becomes a new row."""

    index: int  # in the batch
    row: NewRow
    item: MemoryItem
    terms: DocTerms


@dataclass
class _Merge:
    """The active row (existing, or new in this batch) that duplicates of the batch merge into."""

    row: MemoryRow | NewRow
    text: str
    stored: list[Source]  # the sources as stored before this batch
    sources: list[Source]  # with the duplicates' sources merged in


class AddBatch:
    """Plans the batch inside its transaction, once the owner's statistics row is locked; writes
    nothing itself. After `plan`: `fresh` (the new rows), `merged` (existing rows at a new version
    with merged sources, for the caller to write with their version rows), `items()` (the answer)."""

    def __init__(
        self,
        codec: MemoryCodec,
        tenant: str,
        owner: str,
        memories: Sequence[NewMemory],
        *,
        dedupe: bool,
        now: datetime,
    ) -> None:
        self.codec = codec
        self.tenant = tenant
        self.owner = owner
        self.memories = memories
        self.dedupe = dedupe
        self.now = now
        self.hashes = [codec.content_hash(tenant, m.text) for m in memories]
        self.fresh: list[FreshMemory] = []
        self.merged: list[tuple[MemoryRow, MemoryItem]] = []
        self.last_seq = 0
        self._by_hash: dict[str, MemoryRow | NewRow] = {}  # the active row holding each text
        self._merges: dict[str, _Merge] = {}
        self._merged_items: dict[str, MemoryItem] = {}

    def plan(self, active: Mapping[str, MemoryRow], seq: int) -> None:
        """`active`: the owner's active rows with the batch's texts, by content hash (with dedupe);
        `seq`: the owner's last sequence number (new rows take the next ones)."""
        self._by_hash = dict(active)
        for i, m in enumerate(self.memories):
            target = self._by_hash.get(self.hashes[i]) if self.dedupe else None
            if target is not None:
                self._merge_sources(target, m.sources)
                continue
            seq += 1
            fresh = self._new_row(i, m, seq)
            self.fresh.append(fresh)
            if self.dedupe:
                self._by_hash[self.hashes[i]] = fresh.row
                self._merges[fresh.row.id] = _Merge(fresh.row, m.text, list(m.sources), fresh.item.sources)
        self.last_seq = seq
        # fresh rows that absorbed duplicates from this same batch carry the merged sources
        for f in self.fresh:
            if len(f.item.sources) != len(self.memories[f.index].sources):
                f.row.payload = self.codec.seal_payload(self.tenant, f.row.id, 1, f.item.text, f.item.sources)
        self._version_merges()

    def items(self) -> list[MemoryItem]:
        """add_many's answer: per memory asked for, the item it became (new, or the one it merged into)."""
        by_id = {f.row.id: f.item for f in self.fresh}
        by_id.update(self._merged_items)
        fresh_by_index = {f.index: f.item for f in self.fresh}
        out: list[MemoryItem] = []
        for i in range(len(self.memories)):
            if i in fresh_by_index:
                out.append(fresh_by_index[i])
            else:
                out.append(by_id[self._by_hash[self.hashes[i]].id])
        return out

    def _merge_sources(self, target: MemoryRow | NewRow, sources: Sequence[Source]) -> None:
        merge = self._merges.get(target.id)
        if merge is None:
            text, stored = self.codec.open_payload(target)
            merge = self._merges[target.id] = _Merge(target, text, stored, list(stored))
        for s in sources:
            if source_dict(s) not in [source_dict(x) for x in merge.sources]:
                merge.sources.append(s)
        # in place: a fresh row's merge shares its item's list
        merge.sources[:] = bounded_sources(merge.sources)

    def _new_row(self, index: int, m: NewMemory, seq: int) -> FreshMemory:
        tenant = self.tenant
        memory_id = new_memory_id()
        session_name = m.session or next((s.session for s in m.sources if s.session), None)
        terms = self.codec.terms(tenant, m.text)
        row = NewRow(
            id=memory_id,
            tenant=tenant,
            owner=self.owner,
            seq=seq,
            scope=str(Scope(m.scope)),
            kind=str(Kind(m.kind)),
            state=State.ACTIVE.value,
            version=1,
            payload=self.codec.seal_payload(tenant, memory_id, 1, m.text, m.sources),
            content_hash=self.hashes[index],
            session_key=self.codec.session_key(tenant, session_name),
            vector_id=f"{memory_id}.1",
            doc_len=terms.length,
            importance=float(m.importance),
            observed_at=aware(m.observed_at) or self.now,
            valid_from=aware(m.valid_from),
            expires_at=aware(m.expires_at),
            created_at=self.now,
            updated_at=self.now,
        )
        item = self.codec.to_item(row, m.text, list(m.sources))
        return FreshMemory(index, row, item, terms)

    def _version_merges(self) -> None:
        """Merged sources into pre-existing rows: a new version each (where a source is new)."""
        for mid, merge in self._merges.items():
            row = merge.row
            if not isinstance(row, MemoryRow):
                continue  # new in this batch: its payload holds the merged sources already
            if [source_dict(s) for s in merge.sources] == [source_dict(s) for s in merge.stored]:
                self._merged_items[mid] = self.codec.to_item(row, merge.text, merge.stored)
                continue
            row.version += 1
            row.updated_at = self.now
            row.payload = self.codec.seal_payload(self.tenant, row.id, row.version, merge.text, merge.sources)
            item = self.codec.to_item(row, merge.text, merge.sources)
            self.merged.append((row, item))
            self._merged_items[mid] = item
