"""Tenant API keys: made once, shown once, stored only as SHA-256 hashes, listed and revoked by id.

A raw key reads `mp-<key_id>-<secret>`: the key id (public, used to list and revoke) finds the row
in one primary-key lookup and the hash of the whole key is compared in constant time. The secret is
256 bits of randomness, so a plain SHA-256 (no slow KDF) is the right hash: it cannot be guessed.
All calls are blocking; the proxy runs them off the event loop and caches resolutions briefly.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlmodel import Field, SQLModel, col, select

from memos.db import Database
from memos.governance.principal import Principal, Role

KEY_PREFIX = "mp"


class ApiKeyRow(SQLModel, table=True):
    __tablename__ = "api_keys"

    key_id: str = Field(primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=128)
    role: str = Field(max_length=32)
    bound_user: str | None = Field(default=None, max_length=256)
    key_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    revoked_at: datetime | None = None


@dataclass(frozen=True)
class ApiKeyInfo:
    """A key as listed: everything but the secret (which is never stored)."""

    key_id: str
    tenant: str
    role: str
    bound_user: str | None
    created_at: datetime
    revoked_at: datetime | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode("utf-8")).hexdigest()


def parse_key_id(raw_key: str) -> str | None:
    """The key id of a well-formed raw key, else None."""
    prefix, sep, rest = raw_key.partition("-")
    if prefix != KEY_PREFIX or not sep:
        return None
    key_id, sep, secret = rest.partition("-")
    if not sep or not key_id or not secret or len(key_id) > 32:
        return None
    return key_id


class ApiKeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def create(self, tenant: str, role: Role | str, bound_user: str | None = None) -> tuple[str, str]:
        """Make a key; returns (key_id, raw_key). The raw key is not recoverable afterwards."""
        if not tenant:
            raise ValueError("tenant must not be empty")
        role = Role(role)  # ValueError for an unknown role
        key_id = secrets.token_hex(6)
        raw_key = f"{KEY_PREFIX}-{key_id}-{secrets.token_urlsafe(32)}"
        with self._db.session() as session:
            session.add(
                ApiKeyRow(
                    key_id=key_id,
                    tenant=tenant,
                    role=role.value,
                    bound_user=bound_user,
                    key_hash=hash_key(raw_key),
                )
            )
        return key_id, raw_key

    def resolve(self, raw_key: str) -> Principal | None:
        """The principal of an active key; None for a malformed, unknown or revoked one."""
        row = self._matching_row(raw_key)
        if row is None or row.revoked_at is not None:
            return None
        return Principal(tenant=row.tenant, key_id=row.key_id, role=Role(row.role), bound_user=row.bound_user)

    def tenant_of_failed(self, raw_key: str) -> str | None:
        """The tenant named by a key that failed to resolve (revoked, or right id with a wrong secret).

        For auditing auth failures into the right tenant's log; None when the id matches nothing.
        """
        key_id = parse_key_id(raw_key)
        if key_id is None:
            return None
        with self._db.session() as session:
            row = session.get(ApiKeyRow, key_id)
            return None if row is None else row.tenant

    def _matching_row(self, raw_key: str) -> ApiKeyRow | None:
        key_id = parse_key_id(raw_key)
        if key_id is None:
            return None
        with self._db.session() as session:
            row = session.get(ApiKeyRow, key_id)
        if row is None or not hmac.compare_digest(row.key_hash, hash_key(raw_key)):
            return None
        return row

    def get(self, key_id: str) -> ApiKeyInfo | None:
        with self._db.session() as session:
            row = session.get(ApiKeyRow, key_id)
            return None if row is None else _info(row)

    def list(self, tenant: str | None = None) -> list[ApiKeyInfo]:
        with self._db.session() as session:
            query = select(ApiKeyRow)
            if tenant is not None:
                query = query.where(ApiKeyRow.tenant == tenant)
            rows = session.exec(query.order_by(col(ApiKeyRow.tenant), col(ApiKeyRow.created_at))).all()
            return [_info(row) for row in rows]

    def revoke(self, key_id: str) -> bool:
        """Revoke a key; False when there is no such key or it was already revoked."""
        with self._db.session() as session:
            row = session.get(ApiKeyRow, key_id)
            if row is None or row.revoked_at is not None:
                return False
            row.revoked_at = datetime.now(UTC)
            session.add(row)
            return True


def _info(row: ApiKeyRow) -> ApiKeyInfo:
    return ApiKeyInfo(
        key_id=row.key_id,
        tenant=row.tenant,
        role=row.role,
        bound_user=row.bound_user,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )
