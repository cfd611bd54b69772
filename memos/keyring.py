"""Per-tenant data keys, stored wrapped by the master key; unwrapped keys are cached in memory only."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlmodel import Field, SQLModel, select

from memos.crypto import MasterKey, TenantCipher, new_data_key
from memos.db import Database


class TenantKeyRow(SQLModel, table=True):
    __tablename__ = "tenant_keys"

    tenant: str = Field(primary_key=True, max_length=128)
    wrapped_key: bytes
    master_key_id: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class TenantKeyDestroyed(Exception):
    """The tenant's data key was destroyed: its data is gone for good."""


class Keyring:
    """Gets (creating on first use) and destroys tenants' data keys. Blocking: call off the event loop."""

    def __init__(self, db: Database, master: MasterKey, previous_masters: tuple[MasterKey, ...] = ()) -> None:
        self._db = db
        self._masters = {m.key_id: m for m in (master, *previous_masters)}
        self._active = master
        self._cache: dict[str, TenantCipher] = {}
        self._lock = threading.Lock()

    @property
    def master(self) -> MasterKey:
        return self._active

    def cipher(self, tenant: str) -> TenantCipher:
        cached = self._cache.get(tenant)
        if cached is not None:
            return cached
        with self._lock:
            if tenant in self._cache:
                return self._cache[tenant]
            data_key = self._load_or_create(tenant)
            cipher = TenantCipher(tenant, data_key)
            self._cache[tenant] = cipher
            return cipher

    def _load_or_create(self, tenant: str) -> bytes:
        with self._db.session() as session:
            row = session.get(TenantKeyRow, tenant)
            if row is None:
                data_key = new_data_key()
                session.add(
                    TenantKeyRow(
                        tenant=tenant,
                        wrapped_key=self._active.wrap(data_key, tenant),
                        master_key_id=self._active.key_id,
                    )
                )
                return data_key
            master = self._masters.get(row.master_key_id)
            if master is None:
                raise RuntimeError(
                    f"tenant key is wrapped by master key {row.master_key_id}, which this process lacks"
                )
            return master.unwrap(row.wrapped_key, tenant)

    def add_master(self, master: MasterKey) -> None:
        """Learn another master key (after a rotation by another process)."""
        self._masters[master.key_id] = master

    def rewrap_all(self, new_master: MasterKey) -> int:
        """Re-wrap every data key under new_master; data is untouched. Returns how many were re-wrapped."""
        count = 0
        with self._db.session() as session:
            for row in session.exec(select(TenantKeyRow)).all():
                old = self._masters.get(row.master_key_id)
                if old is None:
                    raise RuntimeError(f"no master key {row.master_key_id} to unwrap tenant key with")
                data_key = old.unwrap(row.wrapped_key, row.tenant)
                row.wrapped_key = new_master.wrap(data_key, row.tenant)
                row.master_key_id = new_master.key_id
                session.add(row)
                count += 1
        self._masters[new_master.key_id] = new_master
        self._active = new_master
        return count

    def destroy(self, tenant: str) -> None:
        """Crypto-shred: drop the wrapped key, so every ciphertext of the tenant is unreadable."""
        with self._lock:
            self._cache.pop(tenant, None)
            with self._db.session() as session:
                row = session.get(TenantKeyRow, tenant)
                if row is not None:
                    session.delete(row)
