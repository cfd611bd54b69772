"""The owners' recent vector changes (memory_vector_changes), so that a replica whose cached vectors
are behind the change counter catches up by deltas instead of reloading the whole owner.

Every write that moves an owner's change counter writes one row at the counter's new value, in the
same transaction, naming the vector ids it added and removed (empty for a write that changed no
vector: a metadata update, a merge). So the rows between two counter values are complete exactly
when there is one for every value between them; a gap (rows pruned, an erasure) means a reload.
Only the last `keep` changes of an owner are kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlmodel import Session, col

from memos.db import Database
from memos.storage.tables import VectorChangeRow


@dataclass(frozen=True)
class VectorDelta:
    """One write's change of an owner's vectors: the counter moved from `prev` to `new`."""

    prev: int
    new: int
    added: list[str]
    removed: list[str]


def _split(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


class VectorLog:
    def __init__(self, db: Database, keep: int = 1000, prune_every: int = 100) -> None:
        self.db = db
        self.keep = keep
        self.prune_every = prune_every

    def record(
        self,
        session: Session,
        tenant: str,
        owner: str,
        changes: int,
        added: Sequence[str] = (),
        removed: Sequence[str] = (),
    ) -> None:
        """In the write's transaction: the counter moved to `changes` by adding and removing these."""
        session.add(
            VectorChangeRow(
                tenant=tenant, owner=owner, changes=changes, added=",".join(added), removed=",".join(removed)
            )
        )
        if changes % self.prune_every == 0 and changes > self.keep:
            session.execute(
                delete(VectorChangeRow).where(
                    col(VectorChangeRow.tenant) == tenant,
                    col(VectorChangeRow.owner) == owner,
                    col(VectorChangeRow.changes) <= changes - self.keep,
                )
            )

    def since(self, tenant: str, owner: str, have: int, want: int) -> list[VectorDelta] | None:
        """The deltas from counter `have` to `want`, or None when the log does not cover them all."""
        if want <= have or want - have > self.keep:
            return None
        with self.db.session() as session:
            rows = session.execute(
                select(col(VectorChangeRow.changes), col(VectorChangeRow.added), col(VectorChangeRow.removed))
                .where(
                    col(VectorChangeRow.tenant) == tenant,
                    col(VectorChangeRow.owner) == owner,
                    col(VectorChangeRow.changes) > have,
                    col(VectorChangeRow.changes) <= want,
                )
                .order_by(col(VectorChangeRow.changes))
            ).all()
        if [r[0] for r in rows] != list(range(have + 1, want + 1)):
            return None
        return [VectorDelta(c - 1, c, _split(a), _split(r)) for c, a, r in rows]

    def erase_owner(self, session: Session, tenant: str, owner: str) -> None:
        session.execute(
            delete(VectorChangeRow).where(
                col(VectorChangeRow.tenant) == tenant, col(VectorChangeRow.owner) == owner
            )
        )
