"""Per-tenant data keys, stored wrapped by the master key; unwrapped keys are cached in memory only.

A running process learns about changes made by others (see memos.governance.masterkeys):
- `refresh` (e.g. `MasterKeySource.refresh`) is called when a data key is wrapped by a master key this
  process does not know, and before a new tenant's key is wrapped, so a rotation done by another
  process is adopted at once (`set_masters` receives the new keys);
- with `revalidate_s`, a cached data key is re-checked against its row at most that often, so a tenant
  deleted by another process (its key destroyed) stops being readable here within that time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from sqlmodel import Field, SQLModel, select

from memos.db import Database
from memos.errors import Inconsistent
from memos.keys.crypto import MasterKey, TenantCipher, new_data_key


class TenantKeyRow(SQLModel, table=True):
    __tablename__ = "tenant_keys"

    tenant: str = Field(primary_key=True, max_length=128)
    wrapped_key: bytes
    master_key_id: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


class TenantKeyDestroyed(Inconsistent):
    """The tenant's data key was destroyed: its data is gone for good."""


class Keyring:
    """Gets (creating on first use) and destroys tenants' data keys. Blocking: call off the event loop."""

    def __init__(
        self,
        db: Database,
        master: MasterKey,
        previous_masters: tuple[MasterKey, ...] = (),
        *,
        refresh: Callable[[], bool] | None = None,
        revalidate_s: float | None = None,
    ) -> None:
        self._db = db
        self._masters = {m.key_id: m for m in (master, *previous_masters)}
        self._active = master
        # tenant -> (cipher, wrapped key it came from, monotonic time it was last checked)
        self._cache: dict[str, tuple[TenantCipher, bytes, float]] = {}
        self._lock = threading.Lock()
        self._refresh = refresh
        self._revalidate_s = revalidate_s

    @property
    def master(self) -> MasterKey:
        return self._active

    def set_masters(self, active: MasterKey, previous: Sequence[MasterKey] = ()) -> None:
        """Adopt a new key set (after a rotation); keys learnt before stay known for unwrapping."""
        with self._lock:
            for m in (active, *previous):
                self._masters[m.key_id] = m
            self._active = active

    def cipher(self, tenant: str) -> TenantCipher:
        cached = self._cache.get(tenant)
        if cached is not None and not self._stale(cached):
            return cached[0]
        with self._lock:
            cached = self._cache.get(tenant)
            if cached is not None and not self._stale(cached):
                return cached[0]
            if cached is not None and self._still_current(tenant, cached[1]):
                self._cache[tenant] = (cached[0], cached[1], time.monotonic())
                return cached[0]
            data_key, wrapped = self._load_or_create(tenant)
            cipher = TenantCipher(tenant, data_key)
            self._cache[tenant] = (cipher, wrapped, time.monotonic())
            return cipher

    def revalidate(self, tenant: str) -> None:
        """Check the cached data key of `tenant` against its row now, not at the next interval (for a
        caller told that another process deleted or re-keyed the tenant)."""
        with self._lock:
            cached = self._cache.get(tenant)
            if cached is not None and not self._still_current(tenant, cached[1]):
                del self._cache[tenant]

    def _stale(self, cached: tuple[TenantCipher, bytes, float]) -> bool:
        return self._revalidate_s is not None and time.monotonic() - cached[2] > self._revalidate_s

    def _still_current(self, tenant: str, wrapped: bytes) -> bool:
        with self._db.session() as session:
            row = session.get(TenantKeyRow, tenant)
            if row is None:
                return False
            if row.wrapped_key == wrapped:
                return True
            # Re-wrapped by a rotation (same data key) or replaced (a new tenant of the same name).
            return False

    def _unwrap(self, row: TenantKeyRow) -> bytes:
        master = self._masters.get(row.master_key_id)
        if master is None and self._refresh is not None:
            self._lock.release()
            try:
                self._refresh()
            finally:
                self._lock.acquire()
            master = self._masters.get(row.master_key_id)
        if master is None:
            raise RuntimeError(
                f"tenant key is wrapped by master key {row.master_key_id}, which this process lacks"
            )
        return master.unwrap(row.wrapped_key, row.tenant)

    def _load_or_create(self, tenant: str) -> tuple[bytes, bytes]:
        with self._db.session() as session:
            row = session.get(TenantKeyRow, tenant)
            if row is not None:
                return self._unwrap(row), row.wrapped_key
        if self._refresh is not None:
            # Wrap a new key with the newest master: another process may have rotated it just now.
            self._lock.release()
            try:
                self._refresh()
            finally:
                self._lock.acquire()
        with self._db.session() as session:
            row = session.get(TenantKeyRow, tenant)
            if row is not None:
                return self._unwrap(row), row.wrapped_key
            data_key = new_data_key()
            wrapped = self._active.wrap(data_key, tenant)
            session.add(TenantKeyRow(tenant=tenant, wrapped_key=wrapped, master_key_id=self._active.key_id))
            return data_key, wrapped

    def add_master(self, master: MasterKey) -> None:
        """Learn another master key (after a rotation by another process)."""
        self._masters[master.key_id] = master

    def known_master(self, key_id: str) -> MasterKey | None:
        return self._masters.get(key_id)

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
