"""Chats memory skipped are counted by reason and audited as one `memory.skipped` entry per tenant per
window, through VaultChatMemory and the real audit log (never a user or a text in it)."""

from __future__ import annotations

from datetime import UTC, datetime

from memos.chat.contract import ChatContext, MemoryReason, MemorySwitch
from memos.chat.memory import VaultChatMemory
from memos.chat.skip_audit import ACTION, SkippedMemoryAudit
from memos.governance.audit import AuditLog
from memos.governance.policy import AuditLevel, Policy
from memos.governance.principal import Principal, Role
from memos.writeback.outbox import Outbox
from tests.memos.vault_support import VaultEnv, db_url, env  # noqa: F401

APP = Principal(tenant="acme", key_id="k1", role=Role.APP)
OTHER = Principal(tenant="globex", key_id="k2", role=Role.APP)
BODY = {"model": "m", "messages": [{"role": "user", "content": "I keep bees in Ohrid."}]}


class BrokenRecall:
    async def recall(self, *args, **kwargs):
        raise ConnectionError("vault unreachable")


def context(principal: Principal, user: str | None, rid: str, **kw) -> ChatContext:
    policy = kw.pop("policy", Policy())
    return ChatContext(principal=principal, policy=policy, request_id=rid, user=user, session=None, **kw)


def entries(audit: AuditLog, tenant: str) -> list:
    return [e for e in audit.list(tenant, limit=1000)[0] if e.action == ACTION]


async def test_skips_are_counted_by_reason_and_audited_once_per_tenant(env: VaultEnv) -> None:
    audit = AuditLog.from_master(env.db, env.master)
    skips = SkippedMemoryAudit(audit, now=lambda: datetime(2026, 12, 3, 12, 0, tzinfo=UTC))
    # The vault is unreachable: a chat that gets as far as retrieval fails open (vault_unavailable).
    memory = VaultChatMemory(recall=BrokenRecall(), outbox=Outbox(env.db, env.keyring), skips=skips)
    no_inject = Policy().model_copy(update={"memory": Policy().memory.model_copy(update={"inject": False})})

    assert (await memory.plan(context(APP, None, "r1"), BODY)).reason is MemoryReason.NO_USER
    assert (await memory.plan(context(APP, None, "r2"), BODY)).reason is MemoryReason.NO_USER
    assert (
        await memory.plan(context(APP, "ann", "r3", policy=no_inject), BODY)
    ).reason is MemoryReason.POLICY
    assert (await memory.plan(context(APP, "ann", "r4"), BODY)).reason is MemoryReason.VAULT_UNAVAILABLE
    assert (await memory.plan(context(OTHER, None, "r5"), BODY)).reason is MemoryReason.NO_USER
    # Memory the client itself turned off is no skip.
    off = context(APP, None, "r6", requested_switch=MemorySwitch.OFF)
    assert (await memory.plan(off, BODY)).reason is None
    assert skips.pending() == {
        "acme": {"no_user": 2, "policy": 1, "vault_unavailable": 1},
        "globex": {"no_user": 1},
    }

    assert skips.flush() == 2
    [acme] = entries(audit, "acme")
    assert acme.detail == {
        "no_user": 2,
        "policy": 1,
        "vault_unavailable": 1,
        "total": 4,
        "first_at": "2026-12-03T12:00:00+00:00",
        "last_at": "2026-12-03T12:00:00+00:00",
        "request_ids": ["r1", "r3", "r4"],
    }
    assert acme.user is None and acme.memory_ids == []
    assert "bees" not in str(acme.to_dict()).lower() and "ann" not in str(acme.to_dict())
    [globex] = entries(audit, "globex")
    assert globex.detail["no_user"] == 1 and globex.detail["total"] == 1
    # Nothing new: nothing written; the chain still verifies.
    assert skips.flush() == 0 and len(entries(audit, "acme")) == 1
    assert audit.verify("acme").ok


async def test_a_window_that_could_not_be_written_is_kept_for_the_next(env: VaultEnv) -> None:
    audit = AuditLog.from_master(env.db, env.master)

    class StorageDownOnce:
        """The real audit log, whose first write fails as a database outage would."""

        failed = False

        def record(self, *args, **kwargs):
            if not self.failed:
                self.failed = True
                raise ConnectionError("database gone")
            return audit.record(*args, **kwargs)

    skips = SkippedMemoryAudit(StorageDownOnce())
    skips.count("acme", MemoryReason.NO_USER, "r1", AuditLevel.ALL)
    assert skips.flush() == 0
    skips.count("acme", MemoryReason.NO_USER, "r2", AuditLevel.ALL)
    skips.count("acme", MemoryReason.OVERLOADED, "r3", AuditLevel.ALL)
    assert skips.flush() == 1
    [entry] = entries(audit, "acme")
    assert entry.detail["no_user"] == 2 and entry.detail["overloaded"] == 1 and entry.detail["total"] == 3
    assert entry.detail["request_ids"] == ["r1", "r3"]


async def test_the_policy_audit_level_governs_the_summary(env: VaultEnv) -> None:
    audit = AuditLog.from_master(env.db, env.master)
    skips = SkippedMemoryAudit(audit)
    skips.count("acme", MemoryReason.NO_USER, "r1", AuditLevel.WRITES)  # reads are not audited there
    skips.flush()
    assert entries(audit, "acme") == []


async def test_stop_writes_what_is_open(env: VaultEnv) -> None:
    audit = AuditLog.from_master(env.db, env.master)
    skips = SkippedMemoryAudit(audit, interval_s=3600)
    skips.start()
    skips.count("acme", MemoryReason.POLICY, "r1", AuditLevel.ALL)
    await skips.stop()
    assert [e.detail["policy"] for e in entries(audit, "acme")] == [1]
