"""Audit appends from the event loop in group commits: what concurrent requests append while one
commit runs goes in the next, as one transaction.

Why: every injected chat appends an audit entry before its memories reach the upstream. One
transaction per entry serialises all chats of a tenant on its chain head (and, on SQLite, on the one
writer lock): under 32 concurrent clients that append was most of a memory request's time. A batch
moves each tenant's head once (memos.governance.audit.AuditLog.record_many).

The caller still waits until its own entry is committed: nothing is disclosed before it is audited.
One commit is in flight at a time, on the executor given; nothing in that pool waits on this one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import Executor

from memos.governance.audit import AuditEntry, AuditLog, AuditRecord

MAX_BATCH = 256  # entries per transaction: bounds one commit's time while a burst drains


class GroupCommitAudit:
    """The async face of an AuditLog for the request path (`append`), batching concurrent appends."""

    def __init__(self, audit: AuditLog, executor: Executor | None = None, max_batch: int = MAX_BATCH) -> None:
        self._audit = audit
        self._executor = executor  # None: the loop's default executor
        self._max_batch = max(1, max_batch)
        self._pending: list[tuple[AuditRecord, asyncio.Future[AuditEntry | None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, record: AuditRecord) -> AuditEntry | None:
        """Append `record` (None when its level excludes it); returns once it is committed."""
        done: asyncio.Future[AuditEntry | None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, done))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        # shield: a request cancelled while waiting must not cancel the commit others share
        return await asyncio.shield(done)

    async def aclose(self) -> None:
        """Wait for what is queued to commit (stop of the app)."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)

    # A background job's start/stop (proxy.services.Background): stopped, queued entries still commit.
    def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self.aclose()

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                records = [record for record, _ in batch]
                try:
                    results = await loop.run_in_executor(self._executor, self._commit, records)
                except Exception as exc:  # reaches every waiter of this batch; the next batch still runs
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                for (_, waiter), result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        waiter.set_exception(result)
                    else:
                        waiter.set_result(result)
        finally:
            self._flusher = None

    def _commit(self, records: Sequence[AuditRecord]) -> list[AuditEntry | Exception | None]:
        """One transaction for the batch. An entry that cannot be stored (it fails validation, which
        record_many checks before it writes) fails alone: the others are appended without it."""
        try:
            return list(self._audit.record_many(records))
        except ValueError:
            if len(records) == 1:
                raise
        out: list[AuditEntry | Exception | None] = []
        for record in records:
            try:
                out.extend(self._audit.record_many([record]))
            except ValueError as exc:
                out.append(exc)
        return out
