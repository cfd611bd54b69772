"""Whether memory can serve now: the vault's database answers a read, the vector store answers, and
the embedding model is ready (loaded, for the bundled model; started, for an upstream one).

Blocking (a query each): the proxy's /readyz calls it off the event loop. Counts and states only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from memos.db import Database, StorageError
from memos.embeddings import Embedder
from memos.logsafe import exception_summary
from memos.storage.vectors import VectorIndex

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryReadiness:
    vault: bool  # the database answered a read
    vectors: bool  # the vector store answered
    embedder: bool  # the embedding model embeds without loading first
    embedder_name: str

    @property
    def ready(self) -> bool:
        return self.vault and self.vectors and self.embedder


def check_readiness(db: Database, vectors: VectorIndex, embedder: Embedder) -> MemoryReadiness:
    return MemoryReadiness(
        vault=_database_answers(db),
        vectors=vectors.answers(),
        # Embedders that load nothing (hash) have no `ready`: always ready.
        embedder=bool(getattr(embedder, "ready", True)),
        embedder_name=str(getattr(embedder, "name", type(embedder).__name__)),
    )


def _database_answers(db: Database) -> bool:
    try:
        with db.session() as session:
            session.connection().exec_driver_sql("SELECT 1")
    except (SQLAlchemyError, StorageError) as exc:
        log.warning("the database does not answer: %s", exception_summary(exc))
        return False
    return True
