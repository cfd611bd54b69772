"""The audit trail: append-only, hash-chained per tenant, keyed with a key derived from the master key.

Each entry holds who (key id, user id), what (action), which memory ids, the request id and a few
counts; never memory or message text (`detail` takes only short scalars, checked on record). Entry n
carries MAC_n = HMAC-SHA256(k, MAC_{n-1} || canonical bytes of entry n) with k =
MasterKey.derive("audit-chain") (MAC_0 = 32 zero bytes). A per-tenant head row holds the last
sequence number and MAC, sealed with the same key, so removing entries from the end is detected too.
`verify` walks the chain and names the first entry that is missing, altered, reordered or inserted.

After a master key rotation new entries are MACed under the new master's audit key; each entry names
the id of the key that MACed it, so the AuditLog is given the previous masters' audit keys as well
(keep retired master keys in the master key file to keep old entries verifiable).

Concurrency: appends take a per-tenant lock in the process and a database-level guard: on SQLite
`BEGIN IMMEDIATE` (one writer at a time), on PostgreSQL `SELECT ... FOR UPDATE` of the tenant's head
row; the (tenant, seq) primary key makes a forked chain impossible, and a losing writer retries.

Audit level (the policy's `audit_level`): callers pass `level=policy.audit_level` to `record`, and
the AuditLog decides: `all` records everything; `writes` everything except reads and injections
(`memory.read`, `memory.inject`); `off` only security events (keys, policy reloads, auth failures,
erasure, export, tenant deletion, master rotation). Without `level` the entry is always recorded.
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import json
import random
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from sqlalchemy import func, insert, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Field, Session, SQLModel, col, select

from memos.db import Database, table_of
from memos.governance.policy import AuditLevel

_GENESIS = b"\x00" * 32
_MAX_DETAIL_STR = 200
_MAX_LIST = 1000
_APPEND_ATTEMPTS = 50

READ_ACTIONS = frozenset({"memory.read", "memory.inject", "memory.skipped"})
SECURITY_ACTIONS = frozenset(
    {
        "key.create",
        "key.revoke",
        "policy.reload",
        "auth.failure",
        "memory.erase",
        "memory.export",
        "tenant.delete",
        "master.rotate",
    }
)


def should_record(level: AuditLevel | str | None, action: str) -> bool:
    if level is None:
        return True
    level = AuditLevel(level)
    if level == AuditLevel.ALL:
        return True
    if level == AuditLevel.WRITES:
        return action not in READ_ACTIONS
    return action in SECURITY_ACTIONS


class AuditEntryRow(SQLModel, table=True):
    __tablename__ = "audit_entries"

    tenant: str = Field(primary_key=True, max_length=128)
    seq: int = Field(primary_key=True)
    ts: str = Field(max_length=40)
    action: str = Field(max_length=64)
    key_id: str | None = Field(default=None, max_length=128)
    request_id: str | None = Field(default=None, max_length=128)
    user_id: str | None = Field(default=None, max_length=256)
    memory_ids: str = "[]"  # JSON list of ids
    detail: str = "{}"  # JSON object of short scalars
    mac_key_id: str = Field(max_length=32)
    mac: str = Field(max_length=64)  # hex


class AuditHeadRow(SQLModel, table=True):
    __tablename__ = "audit_heads"

    tenant: str = Field(primary_key=True, max_length=128)
    seq: int
    mac: str = Field(max_length=64)
    mac_key_id: str = Field(max_length=32)
    seal: str = Field(max_length=64)


# The tables, for the Core statements of the append path.
_ENTRIES, _HEADS = table_of(AuditEntryRow), table_of(AuditHeadRow)


@dataclass(frozen=True)
class AuditEntry:
    tenant: str
    seq: int
    ts: str
    action: str
    key_id: str | None
    request_id: str | None
    user: str | None
    memory_ids: list[str]
    detail: dict[str, Any]
    mac: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "tenant": self.tenant,
            "action": self.action,
            "key_id": self.key_id,
            "request_id": self.request_id,
            "user": self.user,
            "memory_ids": list(self.memory_ids),
            "detail": dict(self.detail),
            "mac": self.mac,
        }


@dataclass(frozen=True)
class VerifyResult:
    tenant: str
    ok: bool
    entries: int
    first_bad: int | None = None
    reason: str | None = None
    head_mac: str | None = None

    def __bool__(self) -> bool:
        return self.ok


def audit_key_id(key: bytes) -> str:
    return hashlib.sha256(b"memos-audit-key-id:" + key).hexdigest()[:16]


def _canonical(
    tenant: str,
    seq: int,
    ts: str,
    action: str,
    key_id: str | None,
    request_id: str | None,
    user_id: str | None,
    memory_ids: str,
    detail: str,
    mac_key_id: str,
) -> bytes:
    fields = [tenant, seq, ts, action, key_id, request_id, user_id, memory_ids, detail, mac_key_id]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _row_canonical(row: AuditEntryRow) -> bytes:
    return _canonical(
        row.tenant,
        row.seq,
        row.ts,
        row.action,
        row.key_id,
        row.request_id,
        row.user_id,
        row.memory_ids,
        row.detail,
        row.mac_key_id,
    )


def _mac(key: bytes, prev_mac: bytes, canonical: bytes) -> bytes:
    return hmac.new(key, prev_mac + canonical, hashlib.sha256).digest()


def _seal(key: bytes, tenant: str, seq: int, mac_hex: str) -> str:
    msg = json.dumps(["head", tenant, seq, mac_hex], separators=(",", ":")).encode()
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def _check_detail(detail: dict[str, Any] | None) -> dict[str, Any]:
    """Details are counts, flags and identifiers, never text: short scalars (or short lists of them)."""
    if not detail:
        return {}
    clean: dict[str, Any] = {}
    for key, value in detail.items():
        if not isinstance(key, str) or len(key) > 64:
            raise ValueError("audit detail keys must be short strings")
        clean[key] = _check_scalar(key, value, allow_list=True)
    return clean


def _check_scalar(key: str, value: Any, *, allow_list: bool) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if len(value) > _MAX_DETAIL_STR:
            raise ValueError(f"audit detail '{key}' is too long to be an identifier (audit never holds text)")
        return value
    if allow_list and isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        if len(items) > _MAX_LIST:
            raise ValueError(f"audit detail '{key}' has too many items")
        return [_check_scalar(key, v, allow_list=False) for v in items]
    raise ValueError(f"audit detail '{key}' must be a short scalar, not {type(value).__name__}")


def _to_entry(row: AuditEntryRow | SimpleNamespace) -> AuditEntry:
    return AuditEntry(
        tenant=row.tenant,
        seq=row.seq,
        ts=row.ts,
        action=row.action,
        key_id=row.key_id,
        request_id=row.request_id,
        user=row.user_id,
        memory_ids=json.loads(row.memory_ids),
        detail=json.loads(row.detail),
        mac=row.mac,
    )


@dataclass(frozen=True)
class AuditRecord:
    """One entry to append (AuditLog.record_many): the arguments of `record`."""

    tenant: str
    action: str
    key_id: str | None = None
    request_id: str | None = None
    user: str | None = None
    memory_ids: tuple[str, ...] = ()
    detail: dict[str, Any] | None = None
    level: AuditLevel | str | None = None


@dataclass(frozen=True)
class _Checked:
    """An AuditRecord validated and encoded as it is stored."""

    tenant: str
    action: str
    key_id: str | None
    request_id: str | None
    user: str | None
    ids_json: str
    detail_json: str

    @classmethod
    def of(cls, r: AuditRecord) -> _Checked:
        if not r.tenant or not r.action:
            raise ValueError("an audit entry needs a tenant and an action")
        ids = [str(i) for i in r.memory_ids]
        for i in ids:
            if len(i) > _MAX_DETAIL_STR:
                raise ValueError("memory ids are identifiers, not text")
        return cls(
            tenant=r.tenant,
            action=r.action,
            key_id=r.key_id,
            request_id=r.request_id,
            user=r.user,
            ids_json=json.dumps(ids, separators=(",", ":"), ensure_ascii=True),
            detail_json=json.dumps(
                _check_detail(r.detail), separators=(",", ":"), ensure_ascii=True, sort_keys=True
            ),
        )


@dataclass
class _Locks:
    guard: threading.Lock = field(default_factory=threading.Lock)
    by_tenant: dict[str, threading.Lock] = field(default_factory=dict)

    def get(self, tenant: str) -> threading.Lock:
        with self.guard:
            lock = self.by_tenant.get(tenant)
            if lock is None:
                lock = self.by_tenant[tenant] = threading.Lock()
            return lock


class AuditLog:
    """Append, list and verify audit entries. Blocking: call off the event loop."""

    def __init__(self, db: Database, mac_key: bytes, previous_mac_keys: Iterable[bytes] = ()) -> None:
        if len(mac_key) < 16:
            raise ValueError("the audit MAC key is too short")
        self._db = db
        self._key = mac_key
        self._key_id = audit_key_id(mac_key)
        self._keys = {audit_key_id(k): k for k in previous_mac_keys}
        self._keys[self._key_id] = mac_key
        self._locks = _Locks()

    @classmethod
    def from_master(cls, db: Database, master: Any, previous_masters: Sequence[Any] = ()) -> AuditLog:
        """Keys derived from a memos.keys.crypto.MasterKey (and retired masters, for old entries)."""
        return cls(
            db,
            master.derive("audit-chain"),
            [m.derive("audit-chain") for m in previous_masters],
        )

    def add_mac_key(self, key: bytes) -> None:
        """Learn a retired (or newer) audit key so entries MACed with it verify."""
        self._keys[audit_key_id(key)] = key

    def use_mac_key(self, key: bytes) -> None:
        """Switch new entries to another key (after a master rotation); the old key stays known."""
        self.add_mac_key(key)
        self._key, self._key_id = key, audit_key_id(key)

    # ---------------------------------------------------------------- append

    def record(
        self,
        tenant: str,
        action: str,
        *,
        key_id: str | None = None,
        request_id: str | None = None,
        user: str | None = None,
        memory_ids: Iterable[str] = (),
        detail: dict[str, Any] | None = None,
        level: AuditLevel | str | None = None,
        session: Session | None = None,
    ) -> AuditEntry | None:
        """Append one entry (or nothing, when `level` excludes this action). Blocking. With `session`
        (a write transaction of the caller's) the entry commits with the caller's rows, or not at all."""
        entry = AuditRecord(tenant, action, key_id, request_id, user, tuple(memory_ids), detail, level)
        return self.record_many([entry], session=session)[0]

    def record_many(
        self, records: Sequence[AuditRecord], *, session: Session | None = None
    ) -> list[AuditEntry | None]:
        """Append several entries in one transaction (a group commit: one write, each tenant's head read
        and moved once), in order; None for an entry its level excludes. All or nothing. Blocking."""
        checked = [_Checked.of(r) if should_record(r.level, r.action) else None for r in records]
        wanted = [c for c in checked if c is not None]
        if not wanted:
            return [None] * len(records)
        if session is not None:  # no retry here: a conflict fails the caller's whole transaction
            appended = iter(self._append(wanted, session))
        else:
            tenants = sorted({c.tenant for c in wanted})
            with ExitStack() as held:
                for tenant in tenants:  # always in the same order: two batches never deadlock
                    held.enter_context(self._locks.get(tenant))
                appended = iter(self._append_retrying(wanted))
        return [next(appended) if c is not None else None for c in checked]

    def _append_retrying(self, wanted: list[_Checked]) -> list[AuditEntry]:
        for attempt in range(_APPEND_ATTEMPTS):
            try:
                return self._append(wanted)
            except (IntegrityError, OperationalError):
                if attempt == _APPEND_ATTEMPTS - 1:
                    raise
                time.sleep(min(0.2, 0.002 * (2 ** min(attempt, 6))) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    def _append(self, wanted: list[_Checked], outer: Session | None = None) -> list[AuditEntry]:
        # Database.write: on SQLite the write lock is taken first, so the head we read is the head we
        # extend; on PostgreSQL the head row is locked (FOR UPDATE). Core statements: this runs on
        # every injected chat, and the ORM's unit of work cost more than the writes.
        entries, heads = _ENTRIES, _HEADS
        out: list[AuditEntry] = []
        key, kid = self._key, self._key_id  # one key for the whole batch, its head seals included
        with self._db.write() if outer is None else nullcontext(outer) as session:
            chain: dict[str, tuple[int, str, bool]] = {}  # tenant -> (seq, mac, head row exists)
            rows = []
            for c in wanted:
                if c.tenant not in chain:
                    chain[c.tenant] = self._head(session, c.tenant)
                prev_seq, prev_mac, had_head = chain[c.tenant]
                seq = prev_seq + 1
                ts = datetime.now(UTC).isoformat(timespec="microseconds")
                canonical = _canonical(
                    c.tenant, seq, ts, c.action, c.key_id, c.request_id, c.user, c.ids_json, c.detail_json,
                    kid,
                )
                mac = _mac(key, bytes.fromhex(prev_mac), canonical).hex()
                row = {
                    "tenant": c.tenant,
                    "seq": seq,
                    "ts": ts,
                    "action": c.action,
                    "key_id": c.key_id,
                    "request_id": c.request_id,
                    "user_id": c.user,
                    "memory_ids": c.ids_json,
                    "detail": c.detail_json,
                    "mac_key_id": kid,
                    "mac": mac,
                }
                rows.append(row)
                out.append(_to_entry(SimpleNamespace(**row)))
                chain[c.tenant] = (seq, mac, had_head)
            session.execute(insert(entries), rows)
            for tenant, (seq, mac, had_head) in chain.items():
                new_head = {"seq": seq, "mac": mac, "mac_key_id": kid, "seal": _seal(key, tenant, seq, mac)}
                if had_head:
                    session.execute(update(heads).where(heads.c.tenant == tenant).values(**new_head))
                else:
                    session.execute(insert(heads).values(tenant=tenant, **new_head))
        return out

    def _head(self, session: Session, tenant: str) -> tuple[int, str, bool]:
        """The tenant's chain head (locked for this transaction): its seq, its MAC, and whether the head
        row exists (a chain older than head rows is read from its last entry)."""
        entries, heads = _ENTRIES, _HEADS
        head = session.execute(
            select(heads.c.seq, heads.c.mac).where(heads.c.tenant == tenant).with_for_update()
        ).first()
        if head is not None:
            return head.seq, head.mac, True
        last = session.execute(
            select(entries.c.seq, entries.c.mac)
            .where(entries.c.tenant == tenant)
            .order_by(entries.c.seq.desc())
            .limit(1)
        ).first()
        return (last.seq, last.mac, False) if last is not None else (0, _GENESIS.hex(), False)

    # ---------------------------------------------------------------- read

    def list(
        self, tenant: str, limit: int = 100, cursor: str | None = None
    ) -> tuple[list[AuditEntry], str | None]:
        """Entries oldest first, after `cursor` (the seq of the last entry of the previous page)."""
        limit = max(1, min(int(limit), 1000))
        after = 0
        if cursor:
            try:
                after = int(cursor)
            except ValueError as exc:
                raise ValueError("invalid cursor") from exc
        with self._db.session() as session:
            rows = session.exec(
                select(AuditEntryRow)
                .where(AuditEntryRow.tenant == tenant, AuditEntryRow.seq > after)
                .order_by(col(AuditEntryRow.seq))
                .limit(limit + 1)
            ).all()
        entries = [_to_entry(r) for r in rows[:limit]]
        next_cursor = str(entries[-1].seq) if len(rows) > limit and entries else None
        return entries, next_cursor

    def tenants(self) -> builtins.list[str]:
        with self._db.session() as session:
            heads = set(session.exec(select(AuditHeadRow.tenant)).all())
            entries = set(session.exec(select(AuditEntryRow.tenant).distinct()).all())
        return sorted(heads | entries)

    def count(self, tenant: str) -> int:
        with self._db.session() as session:
            return int(
                session.exec(
                    select(func.count()).select_from(AuditEntryRow).where(AuditEntryRow.tenant == tenant)
                ).one()
            )

    # ---------------------------------------------------------------- verify

    def verify(self, tenant: str, batch: int = 2000) -> VerifyResult:
        """Walk the tenant's chain; name the first entry that is missing, altered, reordered or inserted."""
        expected = 1
        prev_mac = _GENESIS
        last_mac_hex: str | None = None
        count = 0
        while True:
            with self._db.session() as session:
                rows = session.exec(
                    select(AuditEntryRow)
                    .where(AuditEntryRow.tenant == tenant, AuditEntryRow.seq >= expected)
                    .order_by(col(AuditEntryRow.seq))
                    .limit(batch)
                ).all()
            if not rows:
                break
            for row in rows:
                if row.seq != expected:
                    return VerifyResult(
                        tenant, False, count, expected, f"entry {expected} is missing (removed)"
                    )
                key = self._keys.get(row.mac_key_id)
                if key is None:
                    return VerifyResult(
                        tenant,
                        False,
                        count,
                        row.seq,
                        f"entry {row.seq} is MACed with unknown key {row.mac_key_id} "
                        "(altered, or made under a master key this process does not have)",
                    )
                mac = _mac(key, prev_mac, _row_canonical(row))
                if not hmac.compare_digest(mac.hex(), row.mac):
                    return VerifyResult(
                        tenant,
                        False,
                        count,
                        row.seq,
                        f"entry {row.seq} does not match the chain (altered, reordered, inserted, "
                        "or an earlier entry was removed)",
                    )
                prev_mac = mac
                last_mac_hex = row.mac
                count += 1
                expected += 1
            if len(rows) < batch:
                break
        with self._db.session() as session:
            head = session.get(AuditHeadRow, tenant)
        last_seq = expected - 1
        if head is None:
            if count == 0:
                return VerifyResult(tenant, True, 0)
            return VerifyResult(tenant, False, count, None, "the chain head is missing (removed)")
        head_key = self._keys.get(head.mac_key_id)
        if head_key is None or not hmac.compare_digest(
            _seal(head_key, tenant, head.seq, head.mac), head.seal
        ):
            return VerifyResult(tenant, False, count, None, "the chain head was altered")
        if head.seq > last_seq:
            return VerifyResult(
                tenant,
                False,
                count,
                last_seq + 1,
                f"entries {last_seq + 1}..{head.seq} are missing (removed from the end)",
            )
        if head.seq < last_seq:
            return VerifyResult(
                tenant,
                False,
                count,
                head.seq + 1,
                f"entry {head.seq + 1} lies beyond the chain head (inserted)",
            )
        if last_mac_hex is not None and not hmac.compare_digest(head.mac, last_mac_hex):
            return VerifyResult(
                tenant, False, count, last_seq, f"entry {last_seq} does not match the chain head"
            )
        return VerifyResult(tenant, True, count, head_mac=head.mac)
