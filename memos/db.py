"""The relational store shared by the vault, keys, audit and outbox: SQLite by default, PostgreSQL by URL.

Table modules define SQLModel tables on the shared metadata and are listed in TABLE_MODULES so that
`Database.create_all` sees every table without anything being imported at module import time.

Storage failures are told apart from contention here (`storage_failure`): a full disk (SQLite's
"database or disk is full", ENOSPC from the vector files, PostgreSQL's disk_full) is raised as
`StorageFull` at once, never retried like a busy lock; a lost database connection is
`StorageUnavailable`. `Database.health` remembers whether the last write transaction failed that way,
which is what readiness reports; `probe_write` is the small real write that tells when it works again.
"""

from __future__ import annotations

import errno
import importlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from sqlalchemy import Column, LargeBinary, Table, delete, event, insert, inspect
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlmodel import Field, Session, SQLModel, col, create_engine

from memos.errors import MemosError

SQLITE_BUSY_TIMEOUT_S = 30.0

# Every module that defines tables; add yours here.
TABLE_MODULES: tuple[str, ...] = (
    "memos.keys.keyring",
    "memos.governance.apikeys",
    "memos.governance.audit",
    "memos.writeback.outbox",
    "memos.storage.tables",
)


class StorageError(MemosError):
    """The storage refused a write or could not be reached (not contention, not bad input)."""

    kind = "unavailable"


class StorageFull(StorageError):
    """The disk (or the database's quota) is full: nothing more can be written until space is freed."""

    kind = "full"


class StorageUnavailable(StorageError):
    """The database cannot be reached (connection refused, lost or terminated)."""

    kind = "unavailable"


_FULL_PHRASES = ("database or disk is full", "no space left on device", "os error 28", "disk quota exceeded")
_SQLITE_FULL = 13
# PostgreSQL SQLSTATEs: 53100 disk_full; class 08 connection exceptions; 57P01-57P03 the server is
# shutting down or terminated this backend (pg_terminate_backend).
_PG_UNAVAILABLE = ("57P01", "57P02", "57P03")


def storage_failure(exc: BaseException) -> StorageError | None:
    """What `exc` says about the storage, if anything: StorageFull, StorageUnavailable, or None (the
    failure is something else: a lock wait, a constraint, a bug). Looks through wrapped causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    unavailable = False
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, StorageError):
            return current
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageFull(_describe(current))
        if (
            isinstance(current, sqlite3.Error)
            and ((getattr(current, "sqlite_errorcode", 0) or 0) & 0xFF) == _SQLITE_FULL
        ):
            return StorageFull(_describe(current))
        sqlstate = getattr(current, "sqlstate", None)
        if isinstance(sqlstate, str):
            if sqlstate == "53100":
                return StorageFull(_describe(current))
            if sqlstate.startswith("08") or sqlstate in _PG_UNAVAILABLE:
                unavailable = True
        elif _is_lost_pg_connection(current):
            unavailable = True
        if any(phrase in str(current).lower() for phrase in _FULL_PHRASES):
            return StorageFull(_describe(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            unavailable = True
        nxt = current.orig if isinstance(current, DBAPIError) else None
        current = nxt or current.__cause__ or current.__context__
    return StorageUnavailable("the database connection failed") if unavailable else None


def _is_lost_pg_connection(exc: BaseException) -> bool:
    # psycopg raises OperationalError without a SQLSTATE when the server went away mid-call.
    return type(exc).__module__.startswith("psycopg") and type(exc).__name__ == "OperationalError"


def _describe(exc: BaseException) -> str:
    # The error's kind and the engine's short reason (no statement, no parameters).
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


@dataclass(frozen=True)
class HealthState:
    failing: bool
    kind: str | None  # "full" | "unavailable" while failing
    since: float | None  # time.time() of the first failure of this run of failures
    last_ok_at: float | None
    failures: int  # write transactions that failed on storage since the process started


class StorageHealth:
    """Whether this process's last write transaction failed on storage (readiness). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failing_kind: str | None = None
        self._since: float | None = None
        self._last_ok_at: float | None = None
        self._failures = 0

    def ok(self) -> None:
        with self._lock:
            self._failing_kind, self._since = None, None
            self._last_ok_at = time.time()

    def failed(self, error: StorageError) -> None:
        with self._lock:
            if self._failing_kind is None:
                self._since = time.time()
            self._failing_kind = error.kind
            self._failures += 1

    @property
    def failing(self) -> bool:
        return self._failing_kind is not None

    def state(self) -> HealthState:
        with self._lock:
            return HealthState(
                failing=self._failing_kind is not None,
                kind=self._failing_kind,
                since=self._since,
                last_ok_at=self._last_ok_at,
                failures=self._failures,
            )


def table_of(model: type[SQLModel]) -> Table:
    """The Core table of a table model (its `__table__`, which SQLModel does not declare to type
    checkers), for Core statements that skip the ORM's per-object cost."""
    return cast(Table, inspect(model).local_table)


class StorageProbeRow(SQLModel, table=True):
    """Scratch rows of `Database.probe_write` (written and deleted in one transaction)."""

    __tablename__ = "storage_probe"

    id: str = Field(primary_key=True, max_length=64)
    pad: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


# A probe writes a few pages, like a small real write would (a one-byte write may fit a full disk).
PROBE_BYTES = 16 * 1024


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
        self.health = StorageHealth()
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
            except BaseException as exc:
                session.rollback()
                failure = storage_failure(exc) if isinstance(exc, Exception) else None
                if isinstance(failure, StorageFull) and failure is not exc:
                    # Not an OperationalError: the retry loops for busy locks must not wait on it.
                    raise failure from exc
                raise

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction (commits on success). On SQLite it takes the write lock up front
        (BEGIN IMMEDIATE: what it reads is what it extends, no stale-snapshot failure), and this
        process's writers queue on one in-process lock first: SQLite admits one writer, and its busy
        handler waits by sleeping (1, 2, 5, 10... ms), which under concurrent writers (a chat's audit
        and outbox rows, the worker's write-back) cost more than the writes. Other processes (the
        CLI) still meet the busy timeout. On PostgreSQL, a plain session (row locks serialise).
        A storage failure (full disk, lost connection) marks `health` failing; a commit marks it ok."""
        try:
            with self._write() as session:
                yield session
        except Exception as exc:
            failure = storage_failure(exc)
            if failure is not None:
                self.health.failed(failure)
            raise
        self.health.ok()

    @contextmanager
    def _write(self) -> Iterator[Session]:
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

    def probe_write(self) -> None:
        """A small real write, rolled forward and deleted in one transaction: raises while storage
        fails, and through `write` turns `health` ok again when it works."""
        probe_id = f"probe-{os.getpid()}-{threading.get_ident()}"
        with self.write() as session:
            session.execute(insert(StorageProbeRow).values(id=probe_id, pad=os.urandom(PROBE_BYTES)))
            session.execute(delete(StorageProbeRow).where(col(StorageProbeRow.id) == probe_id))

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; synchronous=NORMAL is durable across process kills in WAL mode.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # Deleted rows are overwritten with zeros, not left in free pages or free space inside pages: erasure
    # (a user's memories, a tenant) must not leave even ciphertext behind. The WAL is truncated by the
    # erasing code (wal_checkpoint(TRUNCATE)) so no earlier page image survives there either.
    cursor.execute("PRAGMA secure_delete=ON")
    # Reads through a memory map of the file (up to 1 GiB) instead of a read() per page: a search
    # whose candidates miss the row cache reads a few hundred rows scattered over the file, which at
    # 200k memories took ~80 ms p50 in page reads and ~23 ms mapped (bench/scale.py's corpus).
    cursor.execute("PRAGMA mmap_size=1073741824")
    cursor.close()
