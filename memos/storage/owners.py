"""Per-owner statistics (memory_owner_stats): one row per (tenant, owner) holding the BM25 collection
statistics, the sequence counter and the change counter.

Every write to an owner's memories locks this row first, which serialises one owner's writers (on
PostgreSQL by SELECT ... FOR UPDATE; SQLite admits one writer anyway). The change counter moves with
every write that changes a row of the owner and never goes back; the in-process caches (the owner's
vectors in memos.storage.vectors, decoded rows in memos.storage.row_cache) are valid while it is
unchanged, which is what keeps replicas correct.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlmodel import Session, col

from memos.db import Database
from memos.storage.dialect import upsert
from memos.storage.tables import OwnerStatsRow


@dataclass(frozen=True)
class OwnerStats:
    doc_count: int
    total_len: int
    changes: int


class OwnerLedger:
    """Reads and locks the owners' statistics rows."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def read(self, tenant: str, owner: str) -> OwnerStats:
        with self.db.session() as session:
            row = session.get(OwnerStatsRow, (tenant, owner))
            if row is None:
                return OwnerStats(0, 0, 0)
            return OwnerStats(row.doc_count, row.total_len, row.changes)

    def lock(self, session: Session, tenant: str, owner: str) -> OwnerStatsRow:
        """The owner's statistics row, locked for this transaction (serialises writers per owner)."""
        session.execute(
            upsert(self.db, OwnerStatsRow)
            .values(tenant=tenant, owner=owner, doc_count=0, total_len=0, next_seq=0, changes=0)
            .on_conflict_do_nothing(index_elements=["tenant", "owner"])
        )
        stmt = select(OwnerStatsRow).where(
            col(OwnerStatsRow.tenant) == tenant, col(OwnerStatsRow.owner) == owner
        )
        if self.db.is_postgres:
            stmt = stmt.with_for_update()
        return session.execute(stmt).scalar_one()

    def erased(self, session: Session, tenant: str, owner: str) -> None:
        """The owner has no memories left (erasure)."""
        stats = session.get(OwnerStatsRow, (tenant, owner))
        if stats is not None:
            # keep the row (with a bumped counter) so other replicas' caches see the change
            stats.doc_count = 0
            stats.total_len = 0
            stats.changes += 1
            session.add(stats)
