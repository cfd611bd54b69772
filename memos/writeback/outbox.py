"""The write-back outbox: finished chat exchanges, committed durably before the reply finishes.

A row holds one exchange (the user's new turns, the assistant's answer, provenance) as ciphertext under
the tenant's data key. Workers claim rows with a lease, process them, and acknowledge (delete) them; a
failed row is released with a backoff and retried, never dropped. Claiming is one atomic
`UPDATE ... WHERE id IN (SELECT ... [FOR UPDATE SKIP LOCKED]) RETURNING`: on PostgreSQL concurrent
workers skip each other's rows; on SQLite the statement runs under the database's single writer lock,
so two claimers can never take the same row. A claim whose lease ran out (its worker died) is taken
again by the next claimer. All calls are blocking: run them off the event loop.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import Column, ColumnElement, Index, LargeBinary, delete, exists, func, select, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Field, SQLModel, col

from memos.db import Database, table_of
from memos.keys.keyring import Keyring

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutboxBacklog:
    pending: int
    oldest_age_s: float


class OutboxRow(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_due", "next_attempt_at", "id"),
        # A user's rows in commit order: claims read a user's oldest rows, erasure all of them.
        Index("ix_outbox_owner_order", "tenant", "owner", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(max_length=128)
    owner: str = Field(max_length=256)
    request_id: str = Field(max_length=128)
    # The exchange as JSON, encrypted under the tenant's data key (never plaintext on disk).
    payload: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    # Times are unix seconds: portable across SQLite and PostgreSQL, compared only with each other.
    created_at: float
    next_attempt_at: float
    attempts: int = 0
    claim_token: str | None = Field(default=None, max_length=64)
    claimed_until: float | None = None
    # The kind of the last failure (an exception class name, never message text).
    last_error: str | None = Field(default=None, max_length=200)
    # The user was erased while a worker held this row: its payload is gone, and the worker must erase
    # again whatever it wrote (see Outbox.erase_user).
    erased: bool = False


class Ack(StrEnum):
    DONE = "done"
    LOST = "lost"
    ERASED = "erased"


@dataclass(frozen=True)
class OutboxRecord:
    """A claimed row, payload decrypted. Acknowledge or fail it with its claim token."""

    id: int
    tenant: str
    owner: str
    request_id: str
    created_at: float
    attempts: int
    claim_token: str
    payload: dict[str, Any]


def _aad(tenant: str, owner: str, request_id: str) -> bytes:
    # Binds the ciphertext to its row's identity: a payload cannot be moved to another tenant or user.
    return b"outbox\x00" + tenant.encode() + b"\x00" + owner.encode() + b"\x00" + request_id.encode()


class Outbox:
    """Durable queue of exchanges awaiting write-back; also erases a user's pending rows."""

    def __init__(
        self,
        db: Database,
        keyring: Keyring,
        *,
        lease_s: float = 60.0,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 300.0,
    ) -> None:
        self._db = db
        self._keyring = keyring
        self.lease_s = lease_s
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s

    # -- producer -------------------------------------------------------------------------------------

    def enqueue(self, tenant: str, owner: str, request_id: str, payload: dict[str, Any]) -> int:
        """Commit one exchange; returns its row id once the transaction is durable."""
        blob = self._keyring.cipher(tenant).encrypt(orjson.dumps(payload), _aad(tenant, owner, request_id))
        now = time.time()
        row = OutboxRow(
            tenant=tenant,
            owner=owner,
            request_id=request_id,
            payload=blob,
            created_at=now,
            next_attempt_at=now,
        )
        with self._db.write() as session:
            session.add(row)
            session.flush()
            assert row.id is not None
            return row.id

    # -- consumer -------------------------------------------------------------------------------------

    def claim(
        self,
        limit: int = 16,
        *,
        per_owner: int | None = None,
        max_bytes: int | None = None,
        now: float | None = None,
    ) -> list[OutboxRecord]:
        """Take up to `limit` due rows under a fresh lease.

        Fair across users: at most `per_owner` rows of one (tenant, owner), taken round-robin (every
        user's oldest row before anyone's second, users whose oldest row waits longest first), and the
        rows' payloads together at most `max_bytes` (the first row always goes, whatever its size).
        In order per user: only a user's oldest rows can be claimed, and only while none before them is
        held by another claim or waiting for its retry, so a later row is never applied before (or
        beside) an earlier one. None: no such limit."""
        now = time.time() if now is None else now
        token = uuid.uuid4().hex
        if not self._any_due(now):
            return []

        def take(session: Any) -> list[Any]:
            chosen = self._choose(session, limit, per_owner, max_bytes, now)
            if not chosen:
                return []
            return self._take(session, chosen, token, now)

        rows = self._run_claim(take)
        records: list[OutboxRecord] = []
        stopped: set[tuple[str, str]] = set()  # users whose row could not be opened: the rest waits
        for row in sorted(rows, key=lambda r: r.id):
            who = (row.tenant, row.owner)
            if who in stopped:
                self.release(row.id, token)
                continue
            if row.erased:
                # Its user was erased while a worker (now gone) held it: nothing left to write back.
                self.ack(row.id, token)
                continue
            try:
                plain = self._keyring.cipher(row.tenant).decrypt(
                    row.payload, _aad(row.tenant, row.owner, row.request_id)
                )
                payload = orjson.loads(plain)
            except Exception as exc:
                # Unreadable now (e.g. the tenant's key is gone): keep the row, retry later with backoff;
                # the user's later rows wait behind it.
                log.warning("outbox row %s could not be opened: %s", row.id, type(exc).__name__)
                self.fail(row.id, token, exc)
                stopped.add(who)
                continue
            records.append(
                OutboxRecord(
                    id=row.id,
                    tenant=row.tenant,
                    owner=row.owner,
                    request_id=row.request_id,
                    created_at=row.created_at,
                    attempts=row.attempts,
                    claim_token=token,
                    payload=payload,
                )
            )
        return records

    @staticmethod
    def _ready(now: float) -> ColumnElement[bool]:
        return (col(OutboxRow.next_attempt_at) <= now) & (
            col(OutboxRow.claimed_until).is_(None) | (col(OutboxRow.claimed_until) < now)
        )

    def _choose(
        self,
        session: Any,
        limit: int,
        per_owner: int | None,
        max_bytes: int | None,
        now: float,
    ) -> list[int]:
        """The ids one claim takes (see `claim`). Reads only the users' oldest rows (one index scan for
        them, then a few rows per user), so a deep backlog does not make every claim slow."""
        per_user = limit if per_owner is None else max(1, min(per_owner, limit))
        heads = (
            select(func.min(col(OutboxRow.id)).label("id"))
            .group_by(col(OutboxRow.tenant), col(OutboxRow.owner))
            .subquery()
        )
        # Users whose oldest row can be taken now, those waiting longest first.
        users = session.execute(
            select(col(OutboxRow.tenant), col(OutboxRow.owner))
            .join(heads, col(OutboxRow.id) == heads.c.id)
            .where(self._ready(now))
            .order_by(col(OutboxRow.id))
            .limit(limit)
        ).all()
        prefixes: list[list[tuple[int, int]]] = []
        for tenant, owner in users:
            rows = session.execute(
                select(
                    col(OutboxRow.id),
                    col(OutboxRow.next_attempt_at),
                    col(OutboxRow.claimed_until),
                    func.length(col(OutboxRow.payload)),
                )
                .where(col(OutboxRow.tenant) == tenant)
                .where(col(OutboxRow.owner) == owner)
                .order_by(col(OutboxRow.id))
                .limit(per_user)
            ).all()
            prefix: list[tuple[int, int]] = []
            for row_id, due_at, claimed_until, size in rows:
                if due_at > now or (claimed_until is not None and claimed_until >= now):
                    break  # the user's later rows wait behind this one
                prefix.append((row_id, int(size or 0)))
            prefixes.append(prefix)
        # Round-robin: every user's first row, then every user's second, ...
        chosen: list[int] = []
        total = 0
        for place in range(per_user):
            for prefix in prefixes:
                if place >= len(prefix):
                    continue
                row_id, size = prefix[place]
                if len(chosen) == limit or (max_bytes is not None and chosen and total + size > max_bytes):
                    return chosen
                chosen.append(row_id)
                total += size
        return chosen

    def _take(self, session: Any, chosen: list[int], token: str, now: float) -> list[Any]:
        """Claim the chosen rows that are still due; on PostgreSQL skipping rows another claimer is
        locking (and then giving back their users' later rows, see `_give_back_out_of_order`)."""
        due: Any = select(col(OutboxRow.id)).where(col(OutboxRow.id).in_(chosen)).where(self._ready(now))
        if self._db.is_postgres:
            due = due.with_for_update(skip_locked=True)
        rows = list(
            session.execute(
                update(OutboxRow)
                .where(col(OutboxRow.id).in_(due.scalar_subquery()))
                .values(claim_token=token, claimed_until=now + self.lease_s)
                .returning(
                    col(OutboxRow.id),
                    col(OutboxRow.tenant),
                    col(OutboxRow.owner),
                    col(OutboxRow.request_id),
                    col(OutboxRow.created_at),
                    col(OutboxRow.attempts),
                    col(OutboxRow.payload),
                    col(OutboxRow.erased),
                )
                .execution_options(synchronize_session=False)
            ).all()
        )
        if rows and self._db.is_postgres:
            given_back = self._give_back_out_of_order(session, token)
            rows = [r for r in rows if r.id not in given_back]
        return rows

    def _any_due(self, now: float) -> bool:
        """A read-only look first: most polls find nothing, and a claim is a write transaction."""
        with self._db.session() as session:
            found = session.execute(select(col(OutboxRow.id)).where(self._ready(now)).limit(1)).first()
        return found is not None

    def _run_claim(self, take: Callable[[Any], list[Any]]) -> list[Any]:
        for attempt in range(20):
            try:
                with self._db.write() as session:
                    return take(session)
            except OperationalError as exc:
                # SQLite: another process holds the writer lock ("database is locked") or our snapshot was
                # stale; nothing was claimed, so trying again is safe.
                if not self._db.is_sqlite or attempt == 19:
                    raise
                log.debug("outbox claim retry after %s", type(exc).__name__)
                time.sleep(0.01 * (attempt + 1))
        return []

    @staticmethod
    def _give_back_out_of_order(session: Any, token: str) -> set[int]:
        """PostgreSQL: concurrent claimers choose from snapshots, so one may have skipped a user's row that
        another was locking and taken the user's next. This statement sees every committed row: give
        back each row of ours that has an earlier row of its user outside this claim."""
        outbox = table_of(OutboxRow)
        earlier = outbox.alias("earlier")
        given_back = session.execute(
            update(outbox)
            .where(outbox.c.claim_token == token)
            .where(
                exists()
                .where(earlier.c.tenant == outbox.c.tenant)
                .where(earlier.c.owner == outbox.c.owner)
                .where(earlier.c.id < outbox.c.id)
                .where(earlier.c.claim_token.is_(None) | (earlier.c.claim_token != token))
            )
            .values(claim_token=None, claimed_until=None)
            .returning(outbox.c.id)
        ).scalars()
        return set(given_back)

    def ack(self, row_id: int, claim_token: str) -> Ack:
        """The row's memories are in the vault: delete it. LOST when the claim was lost meanwhile (another
        claimer has it); ERASED when its user was erased while it was being processed, so what was
        written from it must be erased again."""
        return self.ack_many([row_id], claim_token)[row_id]

    def ack_many(self, row_ids: Sequence[int], claim_token: str) -> dict[int, Ack]:
        """`ack` for rows of one claim, in one transaction."""
        if not row_ids:
            return {}
        with self._db.write() as session:
            deleted = session.execute(
                delete(OutboxRow)
                .where(col(OutboxRow.id).in_(list(row_ids)))
                .where(col(OutboxRow.claim_token) == claim_token)
                .returning(col(OutboxRow.id), col(OutboxRow.erased))
                .execution_options(synchronize_session=False)
            ).all()
        acks = dict.fromkeys(row_ids, Ack.LOST)
        for row_id, erased in deleted:
            acks[row_id] = Ack.ERASED if erased else Ack.DONE
        return acks

    def fail(
        self, row_id: int, claim_token: str, error: BaseException | str, *, now: float | None = None
    ) -> None:
        """Release the claim and schedule a retry with capped exponential backoff (with jitter)."""
        now = time.time() if now is None else now
        kind = error if isinstance(error, str) else type(error).__name__
        with self._db.write() as session:
            attempts = session.execute(
                select(col(OutboxRow.attempts))
                .where(col(OutboxRow.id) == row_id)
                .where(col(OutboxRow.claim_token) == claim_token)
            ).scalar_one_or_none()
            if attempts is None:
                return
            delay = min(self.backoff_cap_s, self.backoff_base_s * (2**attempts))
            delay *= 0.5 + random.random() / 2
            session.execute(
                update(OutboxRow)
                .where(col(OutboxRow.id) == row_id)
                .where(col(OutboxRow.claim_token) == claim_token)
                .values(
                    attempts=attempts + 1,
                    next_attempt_at=now + delay,
                    claim_token=None,
                    claimed_until=None,
                    last_error=kind[:200],
                )
                .execution_options(synchronize_session=False)
            )

    def extend(self, row_id: int, claim_token: str, *, now: float | None = None) -> bool:
        """Renew a lease while a row is still being worked on."""
        now = time.time() if now is None else now
        with self._db.write() as session:
            result = session.exec(
                update(OutboxRow)
                .where(col(OutboxRow.id) == row_id)
                .where(col(OutboxRow.claim_token) == claim_token)
                .values(claimed_until=now + self.lease_s)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)

    def release(self, row_id: int, claim_token: str) -> bool:
        """Give a claimed row back untouched (the worker is stopping); it is due again at once."""
        with self._db.write() as session:
            result = session.exec(
                update(OutboxRow)
                .where(col(OutboxRow.id) == row_id)
                .where(col(OutboxRow.claim_token) == claim_token)
                .values(claim_token=None, claimed_until=None)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount)

    def release_all_claims(self) -> int:
        """At start of the only process using a SQLite database: claims left by a killed process are dead."""
        with self._db.write() as session:
            result = session.exec(
                update(OutboxRow)
                .where(col(OutboxRow.claim_token).is_not(None))
                .values(claim_token=None, claimed_until=None)
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount or 0)

    # -- inspection and erasure -----------------------------------------------------------------------

    def backlog(self) -> OutboxBacklog:
        """Rows waiting to be written back (claimed ones included) and the age of the oldest."""
        with self._db.session() as session:
            count, oldest = session.execute(
                select(func.count(), func.min(col(OutboxRow.created_at))).select_from(OutboxRow)
            ).one()
        return OutboxBacklog(int(count), max(0.0, time.time() - oldest) if oldest is not None else 0.0)

    def pending(self, tenant: str | None = None) -> int:
        statement = select(func.count()).select_from(OutboxRow)
        if tenant is not None:
            statement = statement.where(col(OutboxRow.tenant) == tenant)
        with self._db.session() as session:
            return int(session.execute(statement).scalar_one())

    def erase_user(self, tenant: str, owner: str) -> int:
        """UserDataEraser: drop the user's exchanges not written back yet. A row a worker holds right now
        loses its payload and is marked erased, so that worker erases its own writes again when it
        acknowledges (this eraser must run before the vault's; see the composition root)."""
        with self._db.session() as session:
            dropped = session.exec(
                delete(OutboxRow)
                .where(col(OutboxRow.tenant) == tenant)
                .where(col(OutboxRow.owner) == owner)
                .where(col(OutboxRow.claim_token).is_(None))
                .execution_options(synchronize_session=False)
            )
            held = session.exec(
                update(OutboxRow)
                .where(col(OutboxRow.tenant) == tenant)
                .where(col(OutboxRow.owner) == owner)
                .where(col(OutboxRow.claim_token).is_not(None))
                .values(erased=True, payload=b"")
                .execution_options(synchronize_session=False)
            )
            return int(dropped.rowcount or 0) + int(held.rowcount or 0)

    def erase_tenant(self, tenant: str) -> int:
        with self._db.session() as session:
            result = session.exec(
                delete(OutboxRow)
                .where(col(OutboxRow.tenant) == tenant)
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount or 0)
