"""The write-back worker: drains the outbox through reader -> operator -> vault, and audits the writes.

`WriteBack.process_group` turns one user's outbox records, in order, into vault changes, with their facts
embedded in one call; it is idempotent (a row processed twice, say after a crash between the vault
write and the acknowledgement, finds its own facts as exact duplicates from the same source and
changes nothing).
`OutboxWorker` is the background asyncio task: it claims batches, processes each user's rows in order
(different users concurrently), acknowledges what succeeded and releases what failed with a backoff,
so no row is ever lost. It keeps claimed rows' leases fresh while it works, wakes early when
`notify()` says a row was committed (then lets the rows of the next moments join: see `_gather`),
survives database outages (it retries), and stops cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from memos.governance.audit import AuditRecord
from memos.governance.policy import Policy
from memos.logsafe import exception_summary
from memos.observe import MemoryObserver, NoObserver
from memos.ports import AuditSink, PolicySource
from memos.writeback.operator import MemOperator, OperatorResult
from memos.writeback.outbox import Ack, Outbox, OutboxRecord
from memos.writeback.reader import Exchange, Fact, MemReader

log = logging.getLogger(__name__)


def exchange_from_record(record: OutboxRecord) -> Exchange:
    """The reader's view of an outbox payload (written by memos.chat.memory.VaultChatMemory)."""
    payload = record.payload
    observed = payload.get("observed_at")
    observed_at = (
        datetime.fromisoformat(observed) if observed else datetime.fromtimestamp(record.created_at, UTC)
    )
    if observed_at.tzinfo is None:
        observed_at = observed_at.replace(tzinfo=UTC)
    turns = [(int(index), message) for index, message in payload.get("turns", [])]
    return Exchange(
        tenant=record.tenant,
        owner=record.owner,
        request_id=record.request_id,
        session=payload.get("session"),
        observed_at=observed_at,
        turns=turns,
        assistant_text=payload.get("assistant_text") or "",
        metadata=payload.get("metadata") or {},
    )


@dataclass(frozen=True)
class GroupOutcome:
    """How far a group of one user's rows got: the first `done` were written back; when `error` is set,
    row `done` failed with it and the rows after it were not tried."""

    done: int
    error: Exception | None = None


class WriteBack:
    """What happens to outbox records: read facts, apply them to the vault, audit the result."""

    def __init__(
        self,
        reader: MemReader,
        operator: MemOperator,
        policies: PolicySource,
        audit: AuditSink | None = None,
        observer: MemoryObserver | None = None,
    ) -> None:
        self._reader = reader
        self._operator = operator
        self._policies = policies
        self._audit = audit
        self._observer: MemoryObserver = observer or NoObserver()

    async def process(self, record: OutboxRecord) -> None:
        """One row (`process_group` of one); raises what made it fail."""
        outcome = await self.process_group([record])
        if outcome.error is not None:
            raise outcome.error

    async def process_group(self, records: Sequence[OutboxRecord]) -> GroupOutcome:
        """One user's rows in order (a later row sees, and may supersede, what an earlier one wrote),
        with the facts of all of them embedded in one call and the audit entries written after the last
        (one thread hop). The rows before a failing one stay written (and are audited); the failing one
        and those after it are for the caller to retry."""
        read: list[tuple[OutboxRecord, Policy, list[Fact]]] = []
        error: Exception | None = None
        for record in records:
            try:
                policy = self._policies.get(record.tenant)
                facts = await self._reader.read(exchange_from_record(record), policy.memory.extractor)
            except Exception as exc:
                error = exc
                break
            read.append((record, policy, facts))
        done: list[tuple[OutboxRecord, Policy, OperatorResult]] = []
        try:
            vectors = await self._operator.embed_facts([f for _, _, facts in read for f in facts])
            for record, policy, facts in read:
                result = await self._operator.apply(
                    record.tenant,
                    record.owner,
                    facts,
                    extractor=policy.memory.extractor,
                    retention_days=policy.memory.retention_days,
                    vectors=vectors,
                )
                done.append((record, policy, result))
        except Exception as exc:
            error = exc
        if self._audit is not None and done:
            try:
                await asyncio.to_thread(self._audit_results, done)
            except Exception as exc:
                # The writes stand; retried, they change nothing (and so are not audited twice).
                self._observer.write_back_failed(records[0].tenant, type(exc).__name__)
                return GroupOutcome(0, exc)
        for record, _policy, result in done:
            self._observer.written_back(
                record.tenant,
                added=len(result.added),
                merged=len(result.merged),
                superseded=len(result.superseded),
            )
        failed = error if len(done) < len(records) else None
        if failed is not None:
            self._observer.write_back_failed(records[len(done)].tenant, type(failed).__name__)
        return GroupOutcome(len(done), failed)

    def _audit_results(self, done: list[tuple[OutboxRecord, Policy, OperatorResult]]) -> None:
        """The group's entries, in one transaction."""
        assert self._audit is not None
        records = [r for record, policy, result in done for r in _audit_records(record, policy, result)]
        if records:
            self._audit.record_many(records)


def _audit_records(record: OutboxRecord, policy: Policy, result: OperatorResult) -> list[AuditRecord]:
    out: list[AuditRecord] = []
    written = list(dict.fromkeys([*result.added, *result.merged]))
    if written:
        out.append(
            AuditRecord(
                record.tenant,
                "memory.write",
                request_id=record.request_id,
                user=record.owner,
                memory_ids=tuple(written),
                detail={"via": "chat", "added": len(result.added), "merged": len(result.merged)},
                level=policy.audit_level,
            )
        )
    if result.superseded:
        out.append(
            AuditRecord(
                record.tenant,
                "memory.update",
                request_id=record.request_id,
                user=record.owner,
                memory_ids=tuple(result.superseded),
                detail={"via": "chat", "state": "superseded"},
                level=policy.audit_level,
            )
        )
    return out


Processor = Callable[[OutboxRecord], Awaitable[Any]]
GroupProcessor = Callable[[Sequence[OutboxRecord]], Awaitable[GroupOutcome]]


def one_at_a_time(process: Processor) -> GroupProcessor:
    """A group processor from a one-row processor: rows in order, stopping at the first failure."""

    async def process_group(records: Sequence[OutboxRecord]) -> GroupOutcome:
        for index, record in enumerate(records):
            try:
                await process(record)
            except Exception as exc:
                return GroupOutcome(index, exc)
        return GroupOutcome(len(records))

    return process_group


class OutboxWorker:
    """Background task draining the outbox. `start()` / `stop()` from the application's lifespan.

    Fair across users: each user's group of a claim is its own task, up to `concurrency` of them
    running at once; the worker claims again as soon as every group it holds has started and a slot is
    free, so a slow group (a huge exchange, a slow extractor) holds one slot while the others keep
    going, never the whole worker. A claim takes at most `per_owner` rows of a user and `batch_bytes`
    of payload (see Outbox.claim); a user's later rows stay in the outbox until the earlier ones are
    done, so each user's rows are applied one group at a time, in commit order."""

    def __init__(
        self,
        outbox: Outbox,
        process: Processor | None = None,
        *,
        process_group: GroupProcessor | None = None,
        poll_interval_s: float = 0.2,
        batch_window_s: float = 0.0,
        batch_quiet_s: float = 0.025,
        batch_size: int = 16,
        per_owner: int = 4,
        batch_bytes: int = 2 * 1024 * 1024,
        concurrency: int = 4,
        recover_claims: bool = False,
        on_erased: Callable[[str, str], Any] | None = None,
        name: str | None = None,
    ) -> None:
        if (process is None) == (process_group is None):
            raise ValueError("give the worker one of process (a row) or process_group (a user's rows)")
        self._outbox = outbox
        self._process_group = process_group or one_at_a_time(process)  # type: ignore[arg-type]
        # Called (blocking, in a thread) with (tenant, owner) when a row's user was erased while it was
        # being processed: what the row wrote must go too (the vault's erase_user).
        self._on_erased = on_erased
        self.poll_interval_s = poll_interval_s
        # After a notify, further rows may join the claim (alone, a row pays a claim, an embedding call,
        # an audit hop and an acknowledgement; in a batch it shares them): the worker claims once no row
        # came for `batch_quiet_s` (a lone chat is written back right after it, in its user's think
        # time), and at the latest `batch_window_s` after the notify (chats that keep coming are
        # written back together).
        self.batch_window_s = batch_window_s
        self.batch_quiet_s = batch_quiet_s
        self.batch_size = batch_size
        # One user's rows per claim (their group shares one embedding call) and the claim's payload
        # bytes (what a batch holds in memory at once, decrypted).
        self.per_owner = per_owner
        self.batch_bytes = batch_bytes
        # Users' groups running at once (0: as many as a batch holds).
        self.concurrency = concurrency if concurrency > 0 else batch_size
        self._slots = asyncio.Semaphore(self.concurrency)
        self._waiting = 0  # claimed groups not started yet (all slots taken)
        self._recover_claims = recover_claims
        self.name = name or f"outbox-worker-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._notified = False  # the last wake was a notify (a row committed), not a group ending
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._groups: set[asyncio.Task[None]] = set()
        self.processed = 0
        self.failed = 0
        self.batches = 0  # claims that found rows (observability and tests)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def in_flight(self) -> int:
        """Users' groups claimed and not finished (running, or waiting for a slot)."""
        return len(self._groups)

    def notify(self) -> None:
        """A row was committed: look now rather than at the next poll. Safe from the event loop only."""
        self._notified = True
        self._wake.set()

    async def start(self) -> None:
        if self.running:
            return
        if self._recover_claims:
            # The only process on this (SQLite) database: claims left by a killed predecessor are dead.
            released = await asyncio.to_thread(self._outbox.release_all_claims)
            if released:
                log.info("released %d outbox claims left by a previous process", released)
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the groups in hand (up to `timeout_s`), then stop; unfinished rows stay in the outbox."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout_s)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def _run(self) -> None:
        try:
            await self._claim_loop()
            # Stopping: the groups in hand finish.
            if self._groups:
                await asyncio.gather(*list(self._groups))
        except asyncio.CancelledError:
            # Past stop's timeout: the groups still running give their rows back, untouched.
            groups = list(self._groups)
            for group in groups:
                group.cancel()
            if groups:
                await asyncio.wait(groups)
            raise

    async def _claim_loop(self) -> None:
        failures = 0
        while not self._stopping:
            if self._waiting or len(self._groups) - self._waiting >= self.concurrency:
                # What was claimed has not all started, or every slot is taken: claim again when a
                # group ends (it wakes us), not before.
                await self._sleep(self.poll_interval_s)
                continue
            try:
                started = await self._claim_and_start()
                failures = 0
            except Exception as exc:  # database unreachable and the like: wait, then try again
                failures += 1
                delay = min(30.0, self.poll_interval_s * (2 ** min(failures, 8)))
                log.warning("outbox worker: claim failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                await self._sleep(delay)
                continue
            if started:
                continue  # more may be due at once (a claim is capped per user and in bytes)
            if await self._sleep(self.poll_interval_s) and self._take_notified():
                await self._gather()

    def _take_notified(self) -> bool:
        notified, self._notified = self._notified, False
        return notified

    async def _sleep(self, seconds: float) -> bool:
        """Wait for a wake (True: a notify or a group's end) or `seconds` (False)."""
        if self._stopping:
            return False
        woken = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
            woken = True
        self._wake.clear()
        return woken

    async def _gather(self) -> None:
        """A row was just committed: wait until none came for `batch_quiet_s`, at most `batch_window_s`
        (a group ending meanwhile ends the wait: a slot is free and rows are waiting)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_window_s
        while not self._stopping:
            remaining = deadline - loop.time()
            if remaining <= 0 or not await self._sleep(min(self.batch_quiet_s, remaining)):
                return
            if not self._take_notified():
                return

    async def drain_once(self) -> int:
        """Claim one batch and process it to the end; returns how many rows were claimed."""
        records, tasks = await self._claim_and_start_tasks()
        if tasks:
            await asyncio.gather(*tasks)
        return len(records)

    async def _claim_and_start(self) -> int:
        records, _ = await self._claim_and_start_tasks()
        return len(records)

    async def _claim_and_start_tasks(self) -> tuple[list[OutboxRecord], list[asyncio.Task[None]]]:
        """Claim a batch and start one task per user's group (each runs once it has a slot)."""
        records = await asyncio.to_thread(
            self._outbox.claim, self.batch_size, per_owner=self.per_owner, max_bytes=self.batch_bytes
        )
        if not records:
            return [], []
        self.batches += 1
        groups: dict[tuple[str, str], list[OutboxRecord]] = defaultdict(list)
        for record in records:
            groups[(record.tenant, record.owner)].append(record)
        tasks = []
        for group in groups.values():
            self._waiting += 1
            task = asyncio.create_task(self._run_group(group), name=f"{self.name}-group")
            self._groups.add(task)
            task.add_done_callback(self._group_ended)
            tasks.append(task)
        return records, tasks

    def _group_ended(self, task: asyncio.Task[None]) -> None:
        self._groups.discard(task)
        self._wake.set()  # a slot is free, and the user's later rows may be claimable now

    async def _run_group(self, records: list[OutboxRecord]) -> None:
        # One user's rows in commit order: a later statement must see (and may supersede) an earlier one.
        heartbeat = asyncio.create_task(self._keep_leases(records))
        waiting = True
        try:
            async with self._slots:
                self._waiting -= 1
                waiting = False
                outcome = await self._process_group(records)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.to_thread(self._release, records))
            raise
        except Exception as exc:  # a group processor that raises instead of reporting: nothing is done
            outcome = GroupOutcome(0, exc)
        finally:
            if waiting:
                self._waiting -= 1
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        done = records[: outcome.done]
        self.processed += len(done)
        if done:
            await self._acknowledge(done)
        if outcome.error is not None and outcome.done < len(records):
            failed = records[outcome.done]
            self.failed += 1
            log.warning(
                "outbox row %s failed (attempt %d): %s",
                failed.id,
                failed.attempts + 1,
                type(outcome.error).__name__,
            )
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._outbox.fail, failed.id, failed.claim_token, outcome.error)
            # The later rows go back untouched: the outbox hands a user's rows out only behind their
            # earlier ones, so they wait for the failed row's retry (and are not charged an attempt).
            later = records[outcome.done + 1 :]
            if later:
                await asyncio.to_thread(self._release, later)

    def _release(self, records: list[OutboxRecord]) -> None:
        for record in records:
            with contextlib.suppress(Exception):
                self._outbox.release(record.id, record.claim_token)

    async def _acknowledge(self, records: list[OutboxRecord]) -> None:
        try:
            acks = await asyncio.to_thread(
                self._outbox.ack_many, [r.id for r in records], records[0].claim_token
            )
        except Exception as exc:
            # The memories are written; the rows come back after their lease and are no-ops the second time.
            log.warning(
                "outbox rows %s: acknowledgement failed (%s)", [r.id for r in records], type(exc).__name__
            )
            return
        erased = [r for r in records if acks.get(r.id) is Ack.ERASED]
        if erased and self._on_erased is not None:
            record = erased[0]
            log.info("outbox row %s: its user was erased meanwhile; erasing its writes again", record.id)
            try:
                await asyncio.to_thread(self._on_erased, record.tenant, record.owner)
            except Exception as exc:
                log.error("outbox row %s: erasing again failed: %s", record.id, exception_summary(exc))

    async def _keep_leases(self, records: list[OutboxRecord]) -> None:
        interval = max(0.5, self._outbox.lease_s / 3)
        while True:
            await asyncio.sleep(interval)
            for record in records:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._outbox.extend, record.id, record.claim_token)
