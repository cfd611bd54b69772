"""Outbox: durable, encrypted, claimed under a lease, never double-claimed, never dropped on failure."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select, update

from memos.db import Database
from memos.keys.crypto import MasterKey
from memos.keys.keyring import Keyring
from memos.writeback.outbox import Ack, Outbox, OutboxRow

CANARY = "zebra-canary-8841"


@pytest.fixture
def outbox(database: Database) -> Outbox:
    return Outbox(database, Keyring(database, MasterKey.generate()), lease_s=30.0)


def _payload(text: str = "I live in Lyon") -> dict:
    return {"turns": [[0, {"role": "user", "content": text}]], "assistant_text": "Noted.", "session": "s1"}


def test_enqueue_then_claim_returns_the_payload(outbox: Outbox) -> None:
    row_id = outbox.enqueue("acme", "alice", "req-1", _payload())
    [record] = outbox.claim()
    assert (record.id, record.tenant, record.owner, record.request_id) == (row_id, "acme", "alice", "req-1")
    assert record.payload == _payload()
    assert record.attempts == 0


def test_payload_is_ciphertext_on_disk(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'memos.db'}")
    db.create_all()
    box = Outbox(db, Keyring(db, MasterKey.generate()))
    box.enqueue("acme", "alice", "req-1", _payload(f"my secret word is {CANARY}"))
    db.dispose()  # checkpoint the WAL into the main file
    for path in tmp_path.iterdir():
        assert CANARY.encode() not in path.read_bytes(), path.name


def test_claimed_rows_are_not_claimed_again_until_the_lease_runs_out(outbox: Outbox) -> None:
    outbox.enqueue("acme", "alice", "req-1", _payload())
    now = time.time()
    assert len(outbox.claim(now=now)) == 1
    assert outbox.claim(now=now + 1) == []
    # The claimer died: after its lease, another claimer takes the row.
    [again] = outbox.claim(now=now + outbox.lease_s + 1)
    assert again.request_id == "req-1"


def test_ack_deletes_only_with_the_current_claim(outbox: Outbox) -> None:
    outbox.enqueue("acme", "alice", "req-1", _payload())
    now = time.time()
    [stale] = outbox.claim(now=now)
    [fresh] = outbox.claim(now=now + outbox.lease_s + 1)
    assert outbox.ack(stale.id, stale.claim_token) is Ack.LOST  # the lease was lost: not ours to delete
    assert outbox.pending() == 1
    assert outbox.ack(fresh.id, fresh.claim_token) is Ack.DONE
    assert outbox.pending() == 0


def test_failure_keeps_the_row_and_backs_off(outbox: Outbox, database: Database) -> None:
    outbox.enqueue("acme", "alice", "req-1", _payload())
    now = time.time()
    delays = []
    for attempt in range(6):
        [record] = outbox.claim(now=now + 10_000 * attempt)
        assert record.attempts == attempt
        outbox.fail(record.id, record.claim_token, RuntimeError("vault down"), now=now + 10_000 * attempt)
        with database.session() as session:
            row = session.get(OutboxRow, record.id)
            delays.append(row.next_attempt_at - (now + 10_000 * attempt))
            assert row.last_error == "RuntimeError"
            assert row.claim_token is None
        # Not due again before its backoff.
        assert outbox.claim(now=now + 10_000 * attempt + delays[-1] - 0.01) == []
    assert delays[-1] > delays[0]
    assert all(d <= outbox.backoff_cap_s for d in delays)
    assert outbox.pending() == 1


def test_release_makes_a_row_due_at_once_without_counting_an_attempt(outbox: Outbox) -> None:
    outbox.enqueue("acme", "alice", "req-1", _payload())
    [record] = outbox.claim()
    assert outbox.release(record.id, record.claim_token)
    [again] = outbox.claim()
    assert again.attempts == 0


def test_release_all_claims_recovers_rows_of_a_killed_process(outbox: Outbox) -> None:
    for i in range(3):
        outbox.enqueue("acme", "alice", f"req-{i}", _payload())
    assert len(outbox.claim()) == 3
    assert outbox.claim() == []
    assert outbox.release_all_claims() == 3
    assert len(outbox.claim()) == 3


def test_claims_are_oldest_first_and_limited(outbox: Outbox) -> None:
    ids = [outbox.enqueue("acme", f"user-{i}", f"req-{i}", _payload()) for i in range(5)]
    first = outbox.claim(limit=2)
    second = outbox.claim(limit=10)
    assert [r.id for r in first] == ids[:2]
    assert [r.id for r in second] == ids[2:]


def test_a_users_later_rows_wait_while_an_earlier_one_is_held(outbox: Outbox) -> None:
    """Only a user's oldest rows are handed out, and only while none before them is claimed: two
    claims never hold rows of one user at once, so their rows are applied in commit order."""
    ids = [outbox.enqueue("acme", "alice", f"req-{i}", _payload()) for i in range(5)]
    [first] = outbox.claim(limit=1)
    assert first.id == ids[0]
    assert outbox.claim(limit=10) == []
    assert outbox.ack(first.id, first.claim_token) is Ack.DONE
    assert [r.id for r in outbox.claim(limit=10)] == ids[1:]


def test_erase_user_drops_only_that_users_rows(outbox: Outbox) -> None:
    outbox.enqueue("acme", "alice", "req-1", _payload())
    outbox.enqueue("acme", "bob", "req-2", _payload())
    outbox.enqueue("other", "alice", "req-3", _payload())
    assert outbox.erase_user("acme", "alice") == 1
    assert sorted((r.tenant, r.owner) for r in outbox.claim()) == [("acme", "bob"), ("other", "alice")]


def test_erasing_a_user_whose_row_is_being_processed(outbox: Outbox, database: Database) -> None:
    outbox.enqueue("acme", "alice", "req-1", _payload(CANARY))
    [held] = outbox.claim()
    assert outbox.erase_user("acme", "alice") == 1
    with database.session() as session:
        row = session.get(OutboxRow, held.id)
        assert row.erased and row.payload == b""  # the text is gone at once
    # The worker finishing it learns that its writes must be erased again.
    assert outbox.ack(held.id, held.claim_token) is Ack.ERASED
    assert outbox.pending() == 0


def test_ack_many_acknowledges_a_claims_rows_in_one_go(outbox: Outbox) -> None:
    """Each row gets what `ack` would say: done, erased (its user went meanwhile), or lost (another
    claim holds it now)."""
    for i in range(3):
        outbox.enqueue("acme", f"user-{i}", f"req-{i}", _payload())
    held = outbox.claim()
    token = held[0].claim_token
    assert {r.claim_token for r in held} == {token}
    outbox.erase_user("acme", "user-1")
    outbox.release(held[2].id, token)
    [retaken] = outbox.claim()
    acks = outbox.ack_many([r.id for r in held], token)
    assert acks == {held[0].id: Ack.DONE, held[1].id: Ack.ERASED, held[2].id: Ack.LOST}
    assert outbox.pending() == 1 and outbox.ack(retaken.id, retaken.claim_token) is Ack.DONE
    assert outbox.ack_many([], token) == {}


def test_an_erased_row_left_by_a_dead_worker_is_dropped_when_claimed(outbox: Outbox) -> None:
    outbox.enqueue("acme", "alice", "req-1", _payload())
    now = time.time()
    outbox.claim(now=now)  # the claimer dies
    outbox.erase_user("acme", "alice")
    assert outbox.claim(now=now + outbox.lease_s + 1) == []
    assert outbox.pending() == 0


def test_a_payload_moved_to_another_user_fails_authentication_and_is_kept(
    outbox: Outbox, database: Database
) -> None:
    row_id = outbox.enqueue("acme", "alice", "req-1", _payload())
    with database.session() as session:
        session.execute(update(OutboxRow).where(OutboxRow.id == row_id).values(owner="mallory"))
    assert outbox.claim() == []  # not readable as mallory's
    assert outbox.pending() == 1  # but not dropped either
    with database.session() as session:
        assert session.get(OutboxRow, row_id).last_error == "DecryptionError"


def test_concurrent_claimers_never_take_the_same_row(database: Database) -> None:
    keyring = Keyring(database, MasterKey.generate())
    producer = Outbox(database, keyring)
    total = 60
    for i in range(total):
        producer.enqueue("acme", f"user-{i % 4}", f"req-{i}", _payload(f"fact {i}"))
    # Separate Outbox objects: no shared in-process lock, as with separate processes or replicas.
    claimers = [Outbox(database, keyring) for _ in range(4)]
    seen: Counter[int] = Counter()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def drain(box: Outbox) -> None:
        try:
            while producer.pending() > 0:
                records = box.claim(limit=3)
                if not records:
                    time.sleep(0.001)  # the rest is claimed by others; wait until they are done
                    continue
                with lock:
                    seen.update(r.id for r in records)
                for record in records:
                    assert box.ack(record.id, record.claim_token) is Ack.DONE
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(box,)) for box in claimers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(seen) == total
    assert max(seen.values()) == 1
    assert producer.pending() == 0


# -- fairness: round-robin across users, in order per user, bounded in bytes -----------------------------


def _by_user(records) -> dict[str, list[str]]:
    users: dict[str, list[str]] = {}
    for record in records:
        users.setdefault(record.owner, []).append(record.request_id)
    return users


def test_a_claim_takes_users_round_robin_not_one_users_backlog(outbox: Outbox) -> None:
    """One user's backlog committed first does not fill the claim: every waiting user's oldest rows
    come first, at most `per_owner` of each."""
    for i in range(20):
        outbox.enqueue("acme", "big", f"big-{i}", _payload())
    for user in ("ann", "bob"):
        for i in range(3):
            outbox.enqueue("acme", user, f"{user}-{i}", _payload())
    claimed = outbox.claim(limit=6, per_owner=2)
    assert _by_user(claimed) == {
        "big": ["big-0", "big-1"],
        "ann": ["ann-0", "ann-1"],
        "bob": ["bob-0", "bob-1"],
    }
    # Under a tighter limit the first row of everyone comes before anyone's second.
    for record in claimed:
        outbox.release(record.id, record.claim_token)
    firsts = outbox.claim(limit=3, per_owner=2)
    assert _by_user(firsts) == {"big": ["big-0"], "ann": ["ann-0"], "bob": ["bob-0"]}


def test_users_waiting_longest_come_first(outbox: Outbox) -> None:
    for user in ("ann", "bob", "cid"):
        outbox.enqueue("acme", user, f"{user}-0", _payload())
    outbox.enqueue("other", "ann", "other-ann-0", _payload())  # another tenant's user of the same name
    outbox.enqueue("acme", "ann", "ann-1", _payload())
    claimed = outbox.claim(limit=2, per_owner=4)
    assert [(r.tenant, r.request_id) for r in claimed] == [("acme", "ann-0"), ("acme", "bob-0")]
    rest = outbox.claim(limit=16, per_owner=4)
    assert [(r.tenant, r.request_id) for r in rest] == [("acme", "cid-0"), ("other", "other-ann-0")]


def test_a_claims_payload_bytes_are_capped_but_one_row_always_goes(outbox: Outbox) -> None:
    big = _payload("x" * 50_000)
    for user in ("ann", "bob", "cid"):
        outbox.enqueue("acme", user, f"{user}-0", big)
    [first] = outbox.claim(limit=16, max_bytes=1000)  # larger than the cap on its own: taken alone
    assert first.owner == "ann"
    two = outbox.claim(limit=16, max_bytes=110_000)
    assert [r.owner for r in two] == ["bob", "cid"]
    assert outbox.claim(limit=16, max_bytes=1000) == []


def test_a_failed_row_holds_back_only_its_users_later_rows(outbox: Outbox) -> None:
    for i in range(3):
        outbox.enqueue("acme", "ann", f"ann-{i}", _payload())
    outbox.enqueue("acme", "bob", "bob-0", _payload())
    now = time.time()
    [head] = outbox.claim(limit=1, now=now)
    outbox.fail(head.id, head.claim_token, ConnectionError("vault down"), now=now)
    # ann's later rows are due, but not before her failed one: only bob's row is handed out.
    [bob] = outbox.claim(now=now + 0.001)
    assert bob.request_id == "bob-0"
    outbox.ack(bob.id, bob.claim_token)
    later = now + outbox.backoff_cap_s + 1
    assert _by_user(outbox.claim(per_owner=4, now=later)) == {"ann": ["ann-0", "ann-1", "ann-2"]}


def test_an_unreadable_row_holds_back_its_users_later_rows_in_the_same_claim(
    outbox: Outbox, database: Database
) -> None:
    ids = [outbox.enqueue("acme", "ann", f"ann-{i}", _payload()) for i in range(3)]
    outbox.enqueue("acme", "bob", "bob-0", _payload())
    with database.session() as session:
        session.execute(update(OutboxRow).where(OutboxRow.id == ids[0]).values(request_id="moved"))
    assert _by_user(outbox.claim(per_owner=4)) == {"bob": ["bob-0"]}
    with database.session() as session:
        found = session.execute(select(OutboxRow).where(OutboxRow.owner == "ann")).scalars()
        rows = {row.id: row for row in found}
    assert rows[ids[0]].last_error == "DecryptionError"
    assert all(rows[i].claim_token is None and rows[i].attempts == 0 for i in ids[1:])  # given back


@pytest.mark.postgres
def test_postgres_a_claim_skipping_a_locked_row_gives_back_that_users_later_rows(pg_url: str) -> None:
    """Concurrent claimers choose from snapshots: one that skips a user's row another is locking must
    not take that user's next rows (they would be applied beside or before it)."""
    db = Database(pg_url)
    db.create_all()
    try:
        box = Outbox(db, Keyring(db, MasterKey.generate()))
        ids = [box.enqueue("acme", "ann", f"ann-{i}", _payload()) for i in range(3)]
        box.enqueue("acme", "bob", "bob-0", _payload())
        with db.engine.connect() as other:  # another claimer, mid-claim: ann's first row locked
            other.exec_driver_sql(f"SELECT id FROM outbox WHERE id = {ids[0]} FOR UPDATE")
            assert _by_user(box.claim(per_owner=4)) == {"bob": ["bob-0"]}
            other.rollback()
        assert _by_user(box.claim(per_owner=4)) == {"ann": ["ann-0", "ann-1", "ann-2"]}
    finally:
        db.dispose()


def test_concurrent_fair_claimers_keep_each_users_rows_in_order(database: Database) -> None:
    """Four claimers (as four replicas) drain six users' rows: no two claims ever hold rows of one user
    at once, and each user's rows are acknowledged in commit order."""
    keyring = Keyring(database, MasterKey.generate())
    producer = Outbox(database, keyring)
    total = 60
    ids = [producer.enqueue("acme", f"user-{i % 6}", f"req-{i}", _payload(f"fact {i}")) for i in range(total)]
    acked: list[tuple[str, int]] = []
    holding: dict[str, int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def drain(box: Outbox) -> None:
        try:
            while producer.pending() > 0:
                records = box.claim(limit=4, per_owner=2)
                if not records:
                    time.sleep(0.001)
                    continue
                users = {r.owner for r in records}
                with lock:
                    assert not users & holding.keys(), "two claims hold one user's rows"
                    holding.update(dict.fromkeys(users, 1))
                with lock:
                    for record in records:
                        acked.append((record.owner, record.id))
                        holding.pop(record.owner, None)
                acks = box.ack_many([r.id for r in records], records[0].claim_token)
                assert set(acks.values()) == {Ack.DONE}
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=drain, args=(Outbox(database, keyring),)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(row_id for _, row_id in acked) == ids
    for user in {owner for owner, _ in acked}:
        mine = [row_id for owner, row_id in acked if owner == user]
        assert mine == sorted(mine), user
