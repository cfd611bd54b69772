"""Version rows (memory_versions): every change of an item writes one, an encrypted snapshot of the
whole item at that version (memos.storage.codec); `rollback` writes a new version equal to an old one.

Deleting an item empties the payload of all its versions (the text is gone; the version metadata
stays: state, reason, time). Erasing an owner removes the rows.
"""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict

from sqlalchemy import delete, select, update
from sqlmodel import Session, col

from memos.db import Database
from memos.item import MemoryItem, State
from memos.storage.codec import MemoryCodec, MemoryRecord
from memos.storage.tables import MemoryVersionRow


class VersionValues(TypedDict):
    """One memory_versions row, for a bulk insert (or the keyword arguments of a MemoryVersionRow)."""

    memory_id: str
    version: int
    tenant: str
    owner: str
    state: str
    reason: str
    payload: bytes | None
    created_at: datetime


class VersionLog:
    def __init__(self, db: Database, codec: MemoryCodec) -> None:
        self.db = db
        self.codec = codec

    def values(self, row: MemoryRecord, item: MemoryItem, reason: str) -> VersionValues:
        """The version row of `row` at its current version (`item` is the row decoded)."""
        payload = None
        if row.state != State.DELETED:
            payload = self.codec.seal_snapshot(row, item)
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

    def row(self, row: MemoryRecord, item: MemoryItem, reason: str) -> MemoryVersionRow:
        return MemoryVersionRow(**self.values(row, item, reason))

    def of(self, session: Session, tenant: str, memory_id: str) -> list[MemoryVersionRow]:
        """Every version row of the item, oldest first."""
        return list(
            session.execute(
                select(MemoryVersionRow)
                .where(col(MemoryVersionRow.tenant) == tenant, col(MemoryVersionRow.memory_id) == memory_id)
                .order_by(col(MemoryVersionRow.version))
            ).scalars()
        )

    def get(self, session: Session, tenant: str, memory_id: str, version: int) -> MemoryVersionRow | None:
        """That version of the item, if it exists in this tenant and still holds its snapshot."""
        v = session.get(MemoryVersionRow, (memory_id, int(version)))
        if v is None or v.tenant != tenant or v.payload is None:
            return None
        return v

    def reasons(self, tenant: str, memory_id: str) -> dict[int, str]:
        with self.db.session() as session:
            rows = session.execute(
                select(col(MemoryVersionRow.version), col(MemoryVersionRow.reason)).where(
                    col(MemoryVersionRow.tenant) == tenant, col(MemoryVersionRow.memory_id) == memory_id
                )
            ).all()
        return {int(v): r for v, r in rows}

    def forget_text(self, session: Session, tenant: str, memory_id: str) -> None:
        """Empty the payload of every version of the item (it is being deleted)."""
        session.execute(
            update(MemoryVersionRow)
            .where(col(MemoryVersionRow.tenant) == tenant, col(MemoryVersionRow.memory_id) == memory_id)
            .values(payload=None)
        )

    def erase_owner(self, session: Session, tenant: str, owner: str) -> None:
        session.execute(
            delete(MemoryVersionRow).where(
                col(MemoryVersionRow.tenant) == tenant, col(MemoryVersionRow.owner) == owner
            )
        )
