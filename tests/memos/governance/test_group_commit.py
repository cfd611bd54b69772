"""GroupCommitAudit: concurrent appends from the loop go in one transaction, each caller told of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.exc import OperationalError

from memos.db import Database
from memos.governance.audit import AuditEntry, AuditLog, AuditRecord
from memos.governance.group_commit import GroupCommitAudit
from memos.governance.policy import AuditLevel


class HeldAuditLog(AuditLog):
    """The real log; its first commit waits until released, and each commit's size is kept."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.started, self.release = threading.Event(), threading.Event()
        self.commits: list[int] = []

    def record_many(self, records: Sequence[AuditRecord], **kwargs: object) -> list[AuditEntry | None]:
        self.commits.append(len(records))
        if len(self.commits) == 1:
            self.started.set()
            assert self.release.wait(30)
        return super().record_many(records, **kwargs)  # type: ignore[arg-type]


def inject(n: int, level: AuditLevel | None = None) -> AuditRecord:
    return AuditRecord("t", "memory.inject", request_id=f"r{n}", user="u", memory_ids=(f"m{n}",), level=level)


@pytest.fixture
def held(db) -> HeldAuditLog:
    return HeldAuditLog(db, b"a" * 32)


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(max_workers=1)
    yield pool
    pool.shutdown(wait=True)


async def test_appends_made_during_a_commit_go_in_the_next_one(held: HeldAuditLog, executor) -> None:
    group = GroupCommitAudit(held, executor)
    first = asyncio.create_task(group.append(inject(0)))
    await asyncio.to_thread(held.started.wait, 30)
    rest = [asyncio.create_task(group.append(inject(n))) for n in range(1, 21)]
    await asyncio.sleep(0)  # one turn of the loop: every task has queued its entry
    held.release.set()
    entries = await asyncio.gather(first, *rest)
    assert held.commits == [1, 20]
    assert [e.seq for e in entries] == list(range(1, 22))  # in the order they were appended
    assert [e.request_id for e in entries] == [f"r{n}" for n in range(21)]
    assert held.verify("t").ok and held.count("t") == 21


async def test_an_entry_that_cannot_be_stored_fails_alone(audit: AuditLog) -> None:
    group = GroupCommitAudit(audit)
    bad = AuditRecord("t", "memory.inject", detail={"text": "a long sentence " * 20})
    results = await asyncio.gather(
        group.append(inject(1)), group.append(bad), group.append(inject(2)), return_exceptions=True
    )
    assert isinstance(results[1], ValueError)
    assert [r.request_id for r in (results[0], results[2])] == ["r1", "r2"]  # type: ignore[union-attr]
    assert audit.count("t") == 2 and audit.verify("t").ok


async def test_a_cancelled_caller_does_not_cancel_the_commit(held: HeldAuditLog, executor) -> None:
    group = GroupCommitAudit(held, executor)
    waiting = asyncio.create_task(group.append(inject(1)))
    await asyncio.to_thread(held.started.wait, 30)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    held.release.set()
    await group.aclose()
    assert held.count("t") == 1 and held.verify("t").ok


async def test_an_excluded_level_appends_nothing(audit: AuditLog) -> None:
    group = GroupCommitAudit(audit)
    assert await group.append(inject(1, level=AuditLevel.WRITES)) is None
    assert audit.count("t") == 0


async def test_a_failing_database_reaches_every_waiter(tmp_path) -> None:
    unreachable = Database(f"sqlite:///{tmp_path / 'memos.db'}")  # no tables: every write fails
    group = GroupCommitAudit(AuditLog(unreachable, b"a" * 32))
    results = await asyncio.gather(*(group.append(inject(n)) for n in range(3)), return_exceptions=True)
    assert all(isinstance(r, OperationalError) for r in results), results
    unreachable.dispose()
