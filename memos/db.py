"""The relational store shared by the vault, keys, audit and outbox: SQLite by default, PostgreSQL by URL.

Table modules define SQLModel tables on the shared metadata and are listed in TABLE_MODULES so that
`Database.create_all` sees every table without anything being imported at module import time.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, create_engine

SQLITE_BUSY_TIMEOUT_S = 30.0

# Every module that defines tables; add yours here.
TABLE_MODULES: tuple[str, ...] = (
    "memos.keyring",
    "memos.governance.apikeys",
    "memos.governance.audit",
    "memos.outbox",
    "memos.vault_tables",
)


def _normalise_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


class Database:
    """Owns the engine; hands out sessions. All calls are blocking: run them off the event loop."""

    def __init__(self, url: str) -> None:
        self.url = _normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self._sqlite_writer = threading.RLock()  # see write()
        if self.is_sqlite:
            path = self.url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                self.url, connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(self.url, pool_size=10, max_overflow=20, pool_pre_ping=True)

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

    def create_all(self) -> None:
        for name in TABLE_MODULES:
            importlib.import_module(name)
        SQLModel.metadata.create_all(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with Session(self.engine, expire_on_commit=False) as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction (commits on success). On SQLite it takes the write lock up front
        (BEGIN IMMEDIATE: what it reads is what it extends, no stale-snapshot failure), and this
        process's writers queue on one in-process lock first: SQLite admits one writer, and its busy
        handler waits by sleeping (1, 2, 5, 10... ms), which under concurrent writers (a chat's audit
        and outbox rows, the worker's write-back) cost more than the writes. Other processes (the
        CLI) still meet the busy timeout. On PostgreSQL, a plain session (row locks serialise)."""
        if not self.is_sqlite:
            with self.session() as session:
                yield session
            return
        # Bounded like SQLite's own busy timeout: a wedged writer fails the others, never hangs them.
        if not self._sqlite_writer.acquire(timeout=SQLITE_BUSY_TIMEOUT_S):
            raise OperationalError("waiting for this process's SQLite writer", None, TimeoutError())
        try:
            with self.session() as session:
                session.connection().exec_driver_sql("BEGIN IMMEDIATE")
                yield session
        finally:
            self._sqlite_writer.release()

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; synchronous=NORMAL is durable across process kills in WAL mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Deleted rows are overwritten with zeros, not left in free pages or free space inside pages: erasure
    # (a user's memories, a tenant) must not leave even ciphertext behind. The WAL is truncated by the
    # erasing code (wal_checkpoint(TRUNCATE)) so no earlier page image survives there either.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()
