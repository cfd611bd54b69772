"""The blind keyword index as the vault's writes change it (memos.storage.keyword scores it).

Only active memories are indexed. Per indexed memory: one posting per blinded term (with its term
frequency and the document's length); per term, the number of the owner's memories holding it (the
document frequency, for idf); and in the owner's statistics row, the number of indexed memories and
the sum of their lengths (BM25's collection statistics). The three change together, here.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, insert, select, update
from sqlmodel import Session, col

from memos.db import Database
from memos.storage.dialect import upsert
from memos.storage.keyword import DocTerms
from memos.storage.tables import OwnerStatsRow, PostingRow, TermStatsRow


class KeywordPostings:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, session: Session, stats: OwnerStatsRow, docs: Sequence[tuple[str, DocTerms]]) -> None:
        """Index these memories of the owner of `stats` (locked): their postings, +1 document
        frequency per distinct term, and the documents counted in the owner's statistics."""
        tenant, owner = stats.tenant, stats.owner
        postings = [
            {"memory_id": mid, "term": term, "tenant": tenant, "owner": owner, "tf": tf, "dl": terms.length}
            for mid, terms in docs
            for term, tf in terms.tf.items()
        ]
        if postings:
            session.execute(insert(PostingRow), postings)
            df: dict[str, int] = {}
            for _mid, terms in docs:
                for term in terms.tf:
                    df[term] = df.get(term, 0) + 1
            stmt = upsert(self.db, TermStatsRow)
            stmt = stmt.on_conflict_do_update(
                index_elements=["tenant", "owner", "term"],
                set_={"df": col(TermStatsRow.df) + stmt.excluded.df},
            )
            session.execute(
                stmt, [{"tenant": tenant, "owner": owner, "term": t, "df": n} for t, n in sorted(df.items())]
            )
        stats.doc_count += len(docs)
        stats.total_len += sum(terms.length for _mid, terms in docs)

    def remove(self, session: Session, stats: OwnerStatsRow, memory_id: str, doc_len: int) -> None:
        """Take one memory (of `doc_len` indexed terms) of the owner of `stats` out of the index."""
        tenant, owner = stats.tenant, stats.owner
        terms = [
            r[0]
            for r in session.execute(
                select(col(PostingRow.term)).where(
                    col(PostingRow.memory_id) == memory_id, col(PostingRow.tenant) == tenant
                )
            ).all()
        ]
        if terms:
            session.execute(
                delete(PostingRow).where(
                    col(PostingRow.memory_id) == memory_id, col(PostingRow.tenant) == tenant
                )
            )
            session.execute(
                update(TermStatsRow)
                .where(
                    col(TermStatsRow.tenant) == tenant,
                    col(TermStatsRow.owner) == owner,
                    col(TermStatsRow.term).in_(sorted(terms)),
                )
                .values(df=col(TermStatsRow.df) - 1)
            )
        stats.doc_count -= 1
        stats.total_len -= doc_len

    def clear_owner(self, session: Session, tenant: str, owner: str) -> None:
        """Every posting and term statistic of the owner (the statistics row is the caller's)."""
        session.execute(
            delete(PostingRow).where(col(PostingRow.tenant) == tenant, col(PostingRow.owner) == owner)
        )
        session.execute(
            delete(TermStatsRow).where(col(TermStatsRow.tenant) == tenant, col(TermStatsRow.owner) == owner)
        )
