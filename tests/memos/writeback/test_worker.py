"""OutboxWorker: drains in order per user, retries failures with backoff, never loses or doubles a row."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from memos.db import Database
from memos.keys.crypto import MasterKey
from memos.keys.keyring import Keyring
from memos.writeback.outbox import Outbox, OutboxRecord
from memos.writeback.worker import GroupOutcome, OutboxWorker


@pytest.fixture
def keyring(database: Database) -> Keyring:
    return Keyring(database, MasterKey.generate())


def make_outbox(database: Database, keyring: Keyring, **kw) -> Outbox:
    kw.setdefault("backoff_base_s", 0.01)
    kw.setdefault("backoff_cap_s", 0.05)
    return Outbox(database, keyring, **kw)


async def until(predicate, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


def payload(n: int) -> dict:
    return {"turns": [[0, {"role": "user", "content": f"fact {n}"}]]}


async def test_worker_drains_each_users_rows_in_commit_order(database: Database, keyring: Keyring) -> None:
    outbox = make_outbox(database, keyring)
    for i in range(12):
        outbox.enqueue("acme", f"user-{i % 3}", f"req-{i}", payload(i))
    seen: list[OutboxRecord] = []

    async def process(record: OutboxRecord) -> None:
        await asyncio.sleep(0.001)
        seen.append(record)

    worker = OutboxWorker(outbox, process, poll_interval_s=0.01, batch_size=5)
    await worker.start()
    try:
        await until(lambda: len(seen) == 12 and outbox.pending() == 0)
    finally:
        await worker.stop()
    for user in ("user-0", "user-1", "user-2"):
        ids = [r.id for r in seen if r.owner == user]
        assert ids == sorted(ids)
    assert sorted(r.payload["turns"][0][1]["content"] for r in seen) == sorted(f"fact {i}" for i in range(12))


async def test_failing_rows_are_retried_until_they_succeed(database: Database, keyring: Keyring) -> None:
    outbox = make_outbox(database, keyring)
    outbox.enqueue("acme", "alice", "req-1", payload(1))
    attempts: Counter[int] = Counter()

    async def flaky(record: OutboxRecord) -> None:
        attempts[record.id] += 1
        if attempts[record.id] < 4:
            raise ConnectionError("vault unreachable")

    worker = OutboxWorker(outbox, flaky, poll_interval_s=0.01)
    await worker.start()
    try:
        await until(lambda: outbox.pending() == 0)
    finally:
        await worker.stop()
    assert list(attempts.values()) == [4]
    assert worker.failed == 3 and worker.processed == 1


async def test_a_row_that_keeps_failing_stays_in_the_outbox(database: Database, keyring: Keyring) -> None:
    outbox = make_outbox(database, keyring)
    outbox.enqueue("acme", "alice", "req-1", payload(1))
    calls = 0

    async def broken(record: OutboxRecord) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("always")

    worker = OutboxWorker(outbox, broken, poll_interval_s=0.01)
    await worker.start()
    try:
        await until(lambda: calls >= 5)
    finally:
        await worker.stop()
    assert outbox.pending() == 1


async def test_two_workers_never_process_a_row_twice(database: Database, keyring: Keyring) -> None:
    producer = make_outbox(database, keyring)
    total = 40
    for i in range(total):
        producer.enqueue("acme", f"user-{i % 5}", f"req-{i}", payload(i))
    processed: Counter[int] = Counter()

    async def slow(record: OutboxRecord) -> None:
        processed[record.id] += 1
        await asyncio.sleep(0.005)

    # Separate Outbox objects (no shared in-process lock), as two replicas would have.
    workers = [
        OutboxWorker(make_outbox(database, keyring), slow, poll_interval_s=0.005, batch_size=3)
        for _ in range(2)
    ]
    for worker in workers:
        await worker.start()
    try:
        await until(lambda: producer.pending() == 0)
    finally:
        for worker in workers:
            await worker.stop()
    assert len(processed) == total
    assert max(processed.values()) == 1
    assert all(w.processed > 0 for w in workers)  # both took part


async def test_stop_leaves_unfinished_rows_in_the_outbox(database: Database, keyring: Keyring) -> None:
    outbox = make_outbox(database, keyring)
    outbox.enqueue("acme", "alice", "req-1", payload(1))
    started = asyncio.Event()

    async def hangs(record: OutboxRecord) -> None:
        started.set()
        await asyncio.sleep(3600)

    worker = OutboxWorker(outbox, hangs, poll_interval_s=0.01)
    await worker.start()
    await asyncio.wait_for(started.wait(), 10)
    await worker.stop(timeout_s=0.1)
    assert not worker.running
    # Released, not failed: due again at once, with no attempt counted.
    [record] = outbox.claim()
    assert record.attempts == 0


async def test_a_restarted_worker_takes_over_rows_claimed_by_a_dead_process(
    database: Database, keyring: Keyring
) -> None:
    dead = make_outbox(database, keyring, lease_s=3600)
    for i in range(3):
        dead.enqueue("acme", "alice", f"req-{i}", payload(i))
    assert len(dead.claim()) == 3  # claimed, then the process was killed
    done: list[int] = []

    async def process(record: OutboxRecord) -> None:
        done.append(record.id)

    worker = OutboxWorker(make_outbox(database, keyring), process, poll_interval_s=0.01, recover_claims=True)
    await worker.start()
    try:
        await until(lambda: len(done) == 3 and dead.pending() == 0)
    finally:
        await worker.stop()


async def test_notify_wakes_an_idle_worker(database: Database, keyring: Keyring) -> None:
    outbox = make_outbox(database, keyring)
    done = asyncio.Event()

    async def process(record: OutboxRecord) -> None:
        done.set()

    worker = OutboxWorker(outbox, process, poll_interval_s=3600)
    await worker.start()
    try:
        await asyncio.sleep(0.05)  # the worker found nothing and sleeps for an hour
        outbox.enqueue("acme", "alice", "req-1", payload(1))
        worker.notify()
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await worker.stop()


async def test_the_worker_survives_a_database_outage(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'memos.db'}")
    db.create_all()
    keyring = Keyring(db, MasterKey.generate())
    outbox = make_outbox(db, keyring)
    outbox.enqueue("acme", "alice", "req-1", payload(1))
    real_claim = outbox.claim
    outage = {"left": 3}

    def claim(*args, **kwargs):
        if outage["left"]:
            outage["left"] -= 1
            raise ConnectionError("database unreachable")
        return real_claim(*args, **kwargs)

    outbox.claim = claim  # type: ignore[method-assign]
    done: list[int] = []

    async def process(record: OutboxRecord) -> None:
        done.append(record.id)

    worker = OutboxWorker(outbox, process, poll_interval_s=0.005)
    await worker.start()
    try:
        await until(lambda: done)
    finally:
        await worker.stop()
    assert outage["left"] == 0


async def test_a_user_erased_mid_processing_is_erased_again(database: Database, keyring: Keyring) -> None:
    outbox = make_outbox(database, keyring)
    outbox.enqueue("acme", "alice", "req-1", payload(1))
    processing, erased = asyncio.Event(), asyncio.Event()
    written: list[str] = []
    erased_again: list[tuple[str, str]] = []

    async def process(record: OutboxRecord) -> None:
        processing.set()
        await erased.wait()  # the user is erased while this exchange is being written
        written.append(record.payload["turns"][0][1]["content"])

    worker = OutboxWorker(
        outbox, process, poll_interval_s=0.01, on_erased=lambda *who: erased_again.append(who)
    )
    await worker.start()
    try:
        await asyncio.wait_for(processing.wait(), 10)
        await asyncio.to_thread(outbox.erase_user, "acme", "alice")
        erased.set()
        await until(lambda: erased_again)
    finally:
        await worker.stop()
    assert written == ["fact 1"] and erased_again == [("acme", "alice")]
    assert outbox.pending() == 0


async def test_a_failed_row_is_retried_before_its_users_later_rows(
    database: Database, keyring: Keyring
) -> None:
    outbox = make_outbox(database, keyring)
    for i in range(3):
        outbox.enqueue("acme", "alice", f"req-{i}", payload(i))
    outbox.enqueue("acme", "bob", "req-b", payload(9))
    done: list[str] = []
    failed_once: set[str] = set()

    async def first_attempt_of_req_0_fails(record: OutboxRecord) -> None:
        if record.request_id == "req-0" and record.request_id not in failed_once:
            failed_once.add(record.request_id)
            raise ConnectionError("vault unreachable")
        done.append(record.request_id)

    worker = OutboxWorker(outbox, first_attempt_of_req_0_fails, poll_interval_s=0.01)
    await worker.start()
    try:
        await until(lambda: outbox.pending() == 0)
    finally:
        await worker.stop()
    # A later statement may supersede an earlier one, so alice's rows must land in commit order.
    assert [r for r in done if r != "req-b"] == ["req-0", "req-1", "req-2"]
    assert "req-b" in done and worker.failed == 1


async def test_rows_committed_within_the_batch_window_are_claimed_together(
    database: Database, keyring: Keyring
) -> None:
    """After a notify the worker waits while rows keep coming (each within `batch_quiet_s` of the last):
    they share one claim and reach the group processor together, in commit order."""
    outbox = make_outbox(database, keyring)
    groups: list[list[str]] = []

    async def process_group(records) -> GroupOutcome:
        groups.append([r.request_id for r in records])
        return GroupOutcome(len(records))

    worker = OutboxWorker(
        outbox, process_group=process_group, poll_interval_s=3600, batch_window_s=30, batch_quiet_s=0.5
    )
    await worker.start()
    try:
        await asyncio.sleep(0.05)  # the worker's first (empty) claim is done; it waits for a notify
        outbox.enqueue("acme", "alice", "req-0", payload(0))
        worker.notify()
        await asyncio.sleep(0.05)  # the worker is woken and gathering
        for i in (1, 2):
            await asyncio.to_thread(outbox.enqueue, "acme", "alice", f"req-{i}", payload(i))
            worker.notify()
        await until(lambda: outbox.pending() == 0)
    finally:
        await worker.stop()
    assert groups == [["req-0", "req-1", "req-2"]] and worker.batches == 1


async def test_a_lone_row_is_claimed_once_things_are_quiet_not_at_the_end_of_the_window(
    database: Database, keyring: Keyring
) -> None:
    outbox = make_outbox(database, keyring)
    done: list[str] = []

    async def process(record: OutboxRecord) -> None:
        done.append(record.request_id)

    worker = OutboxWorker(outbox, process, poll_interval_s=3600, batch_window_s=3600, batch_quiet_s=0.05)
    await worker.start()
    try:
        await asyncio.sleep(0.05)
        outbox.enqueue("acme", "alice", "req-0", payload(0))
        worker.notify()
        await until(lambda: done == ["req-0"])  # an hour-long window would fail this
    finally:
        await worker.stop()


async def test_a_group_that_stops_part_way_acknowledges_what_was_done(
    database: Database, keyring: Keyring
) -> None:
    """A group processor reporting that its second row failed: the first is acknowledged once, the
    second retried, the third deferred behind it; all land, in order."""
    outbox = make_outbox(database, keyring)
    for i in range(3):
        outbox.enqueue("acme", "alice", f"req-{i}", payload(i))
    done: list[str] = []
    failed_once: list[bool] = []

    async def process_group(records) -> GroupOutcome:
        for index, record in enumerate(records):
            if record.request_id == "req-1" and not failed_once:
                failed_once.append(True)
                return GroupOutcome(index, ConnectionError("vault unreachable"))
            done.append(record.request_id)
        return GroupOutcome(len(records))

    worker = OutboxWorker(outbox, process_group=process_group, poll_interval_s=0.01)
    await worker.start()
    try:
        await until(lambda: outbox.pending() == 0)
    finally:
        await worker.stop()
    assert done == ["req-0", "req-1", "req-2"]
    assert (worker.processed, worker.failed) == (3, 1)


def test_a_worker_takes_exactly_one_kind_of_processor(database: Database, keyring: Keyring) -> None:
    async def process(record) -> None:
        return None

    async def process_group(records) -> GroupOutcome:
        return GroupOutcome(len(records))

    with pytest.raises(ValueError):
        OutboxWorker(make_outbox(database, keyring))
    with pytest.raises(ValueError):
        OutboxWorker(make_outbox(database, keyring), process, process_group=process_group)


async def test_a_slow_users_group_does_not_hold_other_users(database: Database, keyring: Keyring) -> None:
    """While one user's exchange is still being written (a huge one, a slow extractor), rows other users
    commit meanwhile are claimed and written back: the slow group holds one slot, not the worker."""
    outbox = make_outbox(database, keyring)
    outbox.enqueue("acme", "big", "big-0", payload(0))
    big_started, big_may_finish = asyncio.Event(), asyncio.Event()
    done: list[str] = []

    async def process_group(records) -> GroupOutcome:
        if records[0].owner == "big":
            big_started.set()
            await big_may_finish.wait()
        done.extend(r.request_id for r in records)
        return GroupOutcome(len(records))

    worker = OutboxWorker(outbox, process_group=process_group, poll_interval_s=3600, concurrency=4)
    await worker.start()
    try:
        await asyncio.wait_for(big_started.wait(), 10)
        for user in ("ann", "bob"):
            await asyncio.to_thread(outbox.enqueue, "acme", user, f"{user}-0", payload(1))
            worker.notify()
        # ... and acknowledged, while big's row is still claimed and its group still running.
        await until(lambda: sorted(done) == ["ann-0", "bob-0"] and outbox.pending() == worker.in_flight == 1)
        assert "big-0" not in done
        big_may_finish.set()
        await until(lambda: outbox.pending() == 0)
    finally:
        big_may_finish.set()
        await worker.stop()
    assert done[-1] == "big-0"


async def test_a_users_backlog_does_not_fill_the_claim_and_stays_in_order(
    database: Database, keyring: Keyring
) -> None:
    """One user's 30 rows committed before two other users' rows: the first claim already carries the
    others (at most `per_owner` rows of a user per claim), and the backlog lands in commit order, one
    group of that user at a time."""
    outbox = make_outbox(database, keyring)
    for i in range(30):
        outbox.enqueue("acme", "big", f"big-{i}", payload(i))
    for user in ("ann", "bob"):
        for i in range(2):
            outbox.enqueue("acme", user, f"{user}-{i}", payload(i))
    calls: list[tuple[str, list[int]]] = []
    running: Counter[str] = Counter()
    overlapped: list[str] = []

    async def process_group(records) -> GroupOutcome:
        owner = records[0].owner
        calls.append((owner, [r.id for r in records]))
        running[owner] += 1
        if running[owner] > 1:
            overlapped.append(owner)
        await asyncio.sleep(0.001)
        running[owner] -= 1
        return GroupOutcome(len(records))

    worker = OutboxWorker(
        outbox, process_group=process_group, poll_interval_s=0.01, batch_size=16, per_owner=4
    )
    await worker.start()
    try:
        await until(lambda: outbox.pending() == 0)
    finally:
        await worker.stop()
    # Groups start in claim order: the first claim's groups are the first calls.
    assert {owner for owner, _ in calls[:3]} == {"big", "ann", "bob"}
    assert all(len(ids) <= 4 for _, ids in calls)
    assert not overlapped
    for user in ("big", "ann", "bob"):
        ids = [row_id for owner, group in calls if owner == user for row_id in group]
        assert ids == sorted(ids) and len(ids) == (30 if user == "big" else 2)


async def test_a_claims_payload_bytes_are_bounded(database: Database, keyring: Keyring) -> None:
    """Rows of 40 KB under a 100 KB batch cap: no claim hands the worker more than two of them."""
    outbox = make_outbox(database, keyring)
    for i in range(6):
        outbox.enqueue(
            "acme", f"user-{i}", f"req-{i}", {"turns": [[0, {"role": "user", "content": "x" * 40_000}]]}
        )
    claims: dict[str, int] = Counter()

    async def process_group(records) -> GroupOutcome:
        claims[records[0].claim_token] += len(records)
        return GroupOutcome(len(records))

    worker = OutboxWorker(
        outbox, process_group=process_group, poll_interval_s=0.01, batch_bytes=100_000, concurrency=8
    )
    await worker.start()
    try:
        await until(lambda: outbox.pending() == 0)
    finally:
        await worker.stop()
    assert sum(claims.values()) == 6 and max(claims.values()) <= 2
