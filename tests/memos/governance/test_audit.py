import json
import multiprocessing as mp
import threading

import pytest
from sqlalchemy import text

from memos.db import Database
from memos.governance.audit import AuditLog, should_record
from memos.governance.policy import AuditLevel


def _fill(audit, n=6, tenant="t"):
    for i in range(n):
        audit.record(
            tenant,
            "memory.write",
            key_id="k1",
            request_id=f"r{i}",
            user="u",
            memory_ids=[f"m{i}"],
            detail={"count": 1},
        )


def test_intact_chain_verifies(audit):
    _fill(audit)
    _fill(audit, 3, tenant="other")
    result = audit.verify("t")
    assert result.ok and result.entries == 6 and result.first_bad is None
    assert audit.verify("other").ok
    assert audit.verify("nobody").ok


def test_list_with_cursor(audit):
    _fill(audit, 5)
    page, cursor = audit.list("t", limit=2)
    assert [e.seq for e in page] == [1, 2] and cursor == "2"
    page, cursor = audit.list("t", limit=2, cursor=cursor)
    assert [e.seq for e in page] == [3, 4]
    page, cursor = audit.list("t", limit=2, cursor=cursor)
    assert [e.seq for e in page] == [5] and cursor is None
    assert page[0].memory_ids == ["m4"] and page[0].user == "u" and page[0].key_id == "k1"
    with pytest.raises(ValueError):
        audit.list("t", cursor="x")


def test_detail_never_holds_text(audit):
    with pytest.raises(ValueError):
        audit.record("t", "memory.write", detail={"text": "a long sentence " * 20})
    with pytest.raises(ValueError):
        audit.record("t", "memory.write", detail={"nested": {"a": 1}})


def test_levels():
    assert should_record(AuditLevel.ALL, "memory.read")
    assert not should_record(AuditLevel.WRITES, "memory.inject")
    assert should_record(AuditLevel.WRITES, "memory.write")
    assert not should_record(AuditLevel.OFF, "memory.write")
    assert should_record(AuditLevel.OFF, "memory.erase")
    assert should_record(None, "memory.read")


def _exec(db, sql, **params):
    with db.engine.begin() as conn:
        conn.execute(text(sql), params)


def test_altered_entry_is_named(any_db):
    db = any_db
    audit = AuditLog(db, b"a" * 32)
    _fill(audit)
    _exec(db, "UPDATE audit_entries SET memory_ids = :m WHERE tenant='t' AND seq=3", m=json.dumps(["evil"]))
    result = audit.verify("t")
    assert not result.ok and result.first_bad == 3


def test_removed_entry_is_named(db, audit):
    _fill(audit)
    _exec(db, "DELETE FROM audit_entries WHERE tenant='t' AND seq=4")
    result = audit.verify("t")
    assert not result.ok and result.first_bad == 4 and "missing" in result.reason


def test_removed_tail_is_detected(db, audit):
    _fill(audit)
    _exec(db, "DELETE FROM audit_entries WHERE tenant='t' AND seq>=5")
    result = audit.verify("t")
    assert not result.ok and result.first_bad == 5


def test_swapped_entries_are_named(db, audit):
    _fill(audit)
    _exec(db, "UPDATE audit_entries SET seq=-1 WHERE tenant='t' AND seq=2")
    _exec(db, "UPDATE audit_entries SET seq=2 WHERE tenant='t' AND seq=3")
    _exec(db, "UPDATE audit_entries SET seq=3 WHERE tenant='t' AND seq=-1")
    result = audit.verify("t")
    assert not result.ok and result.first_bad == 2


def test_inserted_entry_is_named(db, audit):
    _fill(audit)
    # Make room at 3 (two steps: the primary key is checked row by row), then forge an entry there.
    _exec(db, "UPDATE audit_entries SET seq=-seq-1 WHERE tenant='t' AND seq>=3")
    _exec(db, "UPDATE audit_entries SET seq=-seq WHERE tenant='t' AND seq<0")
    _exec(
        db,
        "INSERT INTO audit_entries (tenant, seq, ts, action, memory_ids, detail, mac_key_id, mac) "
        "VALUES ('t', 3, '2020-01-01T00:00:00+00:00', 'memory.read', '[]', '{}', 'x', :mac)",
        mac="00" * 32,
    )
    result = audit.verify("t")
    assert not result.ok and result.first_bad == 3


def test_wrong_key_fails(db, audit):
    _fill(audit)
    other = AuditLog(db, b"b" * 32)
    result = other.verify("t")
    assert not result.ok and result.first_bad == 1


def test_previous_keys_keep_old_entries_verifiable(db, audit):
    _fill(audit, 3)
    rotated = AuditLog(db, b"b" * 32, previous_mac_keys=[b"a" * 32])
    _fill(rotated, 3)
    assert rotated.verify("t").ok
    assert rotated.verify("t").entries == 6


def test_threads_do_not_fork_the_chain(any_db):
    db = any_db
    logs = [AuditLog(db, b"a" * 32) for _ in range(3)]  # several AuditLogs: like several processes

    def work(log, i):
        for j in range(20):
            log.record("t", "memory.read", memory_ids=[f"{i}-{j}"])

    threads = [threading.Thread(target=work, args=(logs[i % 3], i)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = logs[0].verify("t")
    assert result.ok and result.entries == 120


def _proc(url, i):
    db = Database(url)
    log = AuditLog(db, b"a" * 32)
    for j in range(15):
        log.record("t", "memory.write", memory_ids=[f"p{i}-{j}"])
    db.dispose()


def test_processes_do_not_fork_the_chain(any_db):
    db = any_db
    audit = AuditLog(db, b"a" * 32)
    ctx = mp.get_context("fork")  # the child makes its own engine
    procs = [ctx.Process(target=_proc, args=(db.url, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    result = audit.verify("t")
    assert result.ok and result.entries == 60
