"""The vault's relational tables: current items, every version, keyword postings, per-owner statistics.

Nothing here holds plaintext memory text:
- `memories.payload` and `memory_versions.payload` are TenantCipher ciphertext whose associated data
  binds the row (tenant, id, version), so a ciphertext copied onto another row fails to decrypt;
- `memories.content_hash` is a keyed hash (blind index) of the normalised text, for exact duplicates;
- `memories.session_key` is a keyed hash of the session id (neighbouring turns are found by it);
- `memory_postings.term` is a keyed hash of a term (the blind keyword index).

Owner and tenant are identifiers, not memory text. Deleting a memory empties its payload in every
version (the versions keep their metadata); erasing a user removes every row.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, LargeBinary, Text, text
from sqlmodel import Field, SQLModel


class MemoryRow(SQLModel, table=True):
    __tablename__ = "memories"
    __table_args__ = (
        Index("ix_memories_owner_seq", "tenant", "owner", "seq"),
        Index("ix_memories_owner_hash", "tenant", "owner", "content_hash"),
        Index("ix_memories_owner_session", "tenant", "owner", "session_key", "seq"),
    )

    id: str = Field(primary_key=True, max_length=40)
    tenant: str = Field(max_length=128)
    owner: str = Field(max_length=256)
    seq: int  # per-owner sequence number, in order of creation (list order, neighbours)
    scope: str = Field(default="user", max_length=16)
    kind: str = Field(default="plaintext", max_length=16)
    state: str = Field(default="active", max_length=16)
    version: int = 1
    # Ciphertext of {"text", "sources"}; aad = item_aad(tenant, id, version). None once deleted.
    payload: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    content_hash: str = Field(max_length=64)
    session_key: str | None = Field(default=None, max_length=64)
    # The LanceDB row of the active vector ("<id>.<version it was written at>"); None when not indexed.
    vector_id: str | None = Field(default=None, max_length=48)
    doc_len: int = 0  # number of indexed terms (BM25 document length)
    importance: float = 0.5
    observed_at: datetime | None = None
    valid_from: datetime | None = None
    invalid_at: datetime | None = None
    expires_at: datetime | None = None
    created_at: datetime
    updated_at: datetime
    hits: int = 0
    last_hit_at: datetime | None = None


class MemoryVersionRow(SQLModel, table=True):
    __tablename__ = "memory_versions"
    __table_args__ = (Index("ix_memory_versions_owner", "tenant", "owner"),)

    memory_id: str = Field(primary_key=True, max_length=40)
    version: int = Field(primary_key=True)
    tenant: str = Field(max_length=128)
    owner: str = Field(max_length=256)
    state: str = Field(max_length=16)
    # A short machine-readable reason ("create", "update", "rollback:3", "delete", ...), never text.
    reason: str = Field(default="", max_length=64)
    # Ciphertext of the whole item snapshot; aad = version_aad(tenant, id, version). None once deleted.
    payload: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    created_at: datetime


class PostingRow(SQLModel, table=True):
    """One (term hash, memory) pair of the blind keyword index. Only active memories have postings."""

    __tablename__ = "memory_postings"
    # Covering, impact-ordered: BM25 reads (memory_id, tf, dl) per term from the index alone.
    __table_args__ = (
        Index("ix_memory_postings_lookup", "tenant", "owner", "term", text("tf DESC"), "dl", "memory_id"),
    )

    memory_id: str = Field(primary_key=True, max_length=40)
    term: str = Field(primary_key=True, max_length=32)
    tenant: str = Field(max_length=128)
    owner: str = Field(max_length=256)
    tf: int
    dl: int  # the document's length, copied here so scoring needs no join


class TermStatsRow(SQLModel, table=True):
    """Document frequency of one blinded term among an owner's active memories (BM25 idf)."""

    __tablename__ = "memory_term_stats"

    tenant: str = Field(primary_key=True, max_length=128)
    owner: str = Field(primary_key=True, max_length=256)
    term: str = Field(primary_key=True, max_length=32)
    df: int = 0


class OwnerStatsRow(SQLModel, table=True):
    """Per (tenant, owner): BM25 collection statistics, the sequence counter and a change counter.

    `changes` increases with every change to the owner's set of active vectors; in-process caches of
    the owner's vectors are valid while it is unchanged (this is what keeps replicas correct).
    """

    __tablename__ = "memory_owner_stats"

    tenant: str = Field(primary_key=True, max_length=128)
    owner: str = Field(primary_key=True, max_length=256)
    doc_count: int = 0  # active memories
    total_len: int = 0  # sum of doc_len over active memories
    next_seq: int = 0
    changes: int = 0


def item_aad(tenant: str, memory_id: str, version: int) -> bytes:
    return f"memos:item:{tenant}:{memory_id}:{version}".encode()


def version_aad(tenant: str, memory_id: str, version: int) -> bytes:
    return f"memos:version:{tenant}:{memory_id}:{version}".encode()


class VectorChangeRow(SQLModel, table=True):
    """What one write did to an owner's active vectors, at the change counter it moved to: the vector
    ids it added and removed (comma-separated; ids, never text). Another replica whose cached vectors
    are a few changes behind applies these instead of reloading the owner
    (memos.storage.vector_log). Only the recent ones are kept."""

    __tablename__ = "memory_vector_changes"

    tenant: str = Field(primary_key=True, max_length=128)
    owner: str = Field(primary_key=True, max_length=256)
    changes: int = Field(primary_key=True)
    added: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    removed: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
