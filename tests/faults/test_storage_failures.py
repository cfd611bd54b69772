"""The storage layer under a full disk, piece by piece: what is raised, what health says, what the
retry queue keeps and loses, and that a vault write that fails leaves nothing (SQL rows, vectors,
audit entry). The disk is a real small tmpfs, filled to the last byte (skipped where none can be
mounted)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from memos.db import Database, StorageFull, StorageUnavailable, storage_failure
from memos.embeddings import HashEmbedder
from memos.governance.audit import AuditLog
from memos.keys.crypto import MasterKey
from memos.keys.keyring import Keyring
from memos.storage.vault import MemVault, NewMemory
from memos.storage.vectors import VectorIndex
from memos.writeback.outbox import Outbox
from memos.writeback.write_retry import WriteRetryQueue
from tests.support.faults import fill


def test_full_disks_and_lost_connections_are_told_from_everything_else() -> None:
    lance = RuntimeError("lance error: LanceError(IO): No space left on device (os error 28), writer.rs:191")
    assert isinstance(storage_failure(OSError(errno.ENOSPC, "No space left on device")), StorageFull)
    assert isinstance(storage_failure(lance), StorageFull)
    wrapped = RuntimeError("write-back failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "full")
    assert isinstance(storage_failure(wrapped), StorageFull)
    assert isinstance(storage_failure(psycopg.errors.DiskFull()), StorageFull)
    assert isinstance(storage_failure(psycopg.errors.AdminShutdown()), StorageUnavailable)
    # Contention and bad input are not storage failures: they keep their own handling.
    assert storage_failure(OperationalError("UPDATE x", {}, Exception("database is locked"))) is None
    assert storage_failure(ValueError("`user` is too long")) is None
    assert storage_failure(OSError(errno.EACCES, "denied")) is None


@pytest.fixture
def full_disk(small_tmpfs) -> tuple[Path, Callable[[], Path]]:
    point = small_tmpfs(8)
    return point, lambda: fill(point)


def _db(point: Path) -> Database:
    db = Database(f"sqlite:///{point / 'memos.db'}")
    db.create_all()
    return db


def _truncate_wal(db: Database) -> None:
    with db.engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def test_a_full_disk_raises_storage_full_at_once_and_health_follows(full_disk) -> None:
    point, fill_up = full_disk
    db = _db(point)
    _truncate_wal(db)
    filler = fill_up()
    with pytest.raises(StorageFull) as raised, db.write() as session:
        session.execute(
            text("INSERT INTO storage_probe (id, pad) VALUES ('x', :pad)"), {"pad": os.urandom(65536)}
        )
    assert not isinstance(raised.value, OperationalError)  # busy-lock retry loops must not catch it
    assert db.health.failing and db.health.state().kind == "full"
    with pytest.raises(StorageFull):
        db.probe_write()
    filler.unlink()
    db.probe_write()
    assert not db.health.failing
    db.dispose()


async def test_the_retry_queue_keeps_exchanges_until_storage_returns_and_counts_what_it_loses(
    full_disk,
) -> None:
    point, fill_up = full_disk
    db = _db(point)
    outbox = Outbox(db, Keyring(db, MasterKey.generate()))
    queue = WriteRetryQueue(outbox, db.health, capacity=3, probe=db.probe_write)
    _truncate_wal(db)
    filler = fill_up()
    for i in range(4):
        accepted = queue.hold(
            "acme",
            "alice" if i % 2 else "bob",
            f"req-{i}",
            {"v": 1, "turns": [[0, {"role": "user", "content": f"fact {i}"}]]},
        )
        assert accepted is (i < 3)
    snap = queue.snapshot()
    assert (snap.waiting, snap.lost) == (3, 1) and queue.full and queue.losing
    with pytest.raises(StorageFull):
        queue.flush()
    assert queue.snapshot().waiting == 3 and queue.storage_failing
    assert queue.erase_user("acme", "bob") == 2  # erasure forgets what waits
    filler.unlink()
    assert queue.flush() == 1
    snap = queue.snapshot()
    assert (snap.waiting, snap.written, snap.lost) == (0, 1, 1) and not queue.losing
    assert outbox.pending() == 1 and not queue.storage_failing
    [record] = outbox.claim()
    assert (record.owner, record.request_id) == ("alice", "req-1")
    db.dispose()


def test_a_vault_write_that_fails_leaves_no_row_no_vector_and_no_audit_entry(full_disk) -> None:
    point, fill_up = full_disk
    db = _db(point)
    master = MasterKey.generate()
    keyring = Keyring(db, master)
    audit = AuditLog.from_master(db, master)
    vault = MemVault(db, keyring, VectorIndex(str(point / "vectors")), HashEmbedder())
    vault.add("acme", "alice", "The first memory, written while there was room.")  # tables exist

    def audited(session, items) -> None:
        audit.record("acme", "memory.write", user="alice", memory_ids=[i.id for i in items], session=session)

    news = [NewMemory(text=f"Memory number {i} of the batch about kites.") for i in range(50)]
    _truncate_wal(db)
    filler = fill_up()
    with pytest.raises(StorageFull):
        vault.add_many("acme", "alice", news, before_commit=audited)
    filler.unlink()
    items, _ = vault.list("acme", "alice", 100, None)
    assert [i.text for i in items] == ["The first memory, written while there was room."]
    assert audit.count("acme") == 0

    # With room again, the same call commits rows, vectors and its audit entry together, and vectors
    # the failed call could not delete on the full disk are gone after it.
    added = vault.add_many("acme", "alice", news, before_commit=audited)
    committed = vault.list("acme", "alice", 100, None)[0]
    assert len(committed) == 51
    ids, _vectors = vault.vectors.load_owner("acme", vault.owner_key("acme", "alice"), HashEmbedder().dim)
    assert sorted(ids) == sorted(f"{i.id}.1" for i in committed)
    [entry] = audit.list("acme", 10, None)[0]
    assert sorted(entry.memory_ids) == sorted(i.id for i in added)
    assert audit.verify("acme").ok
    db.dispose()
