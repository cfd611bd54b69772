"""Deleting a tenant: revoke its API keys, erase its rows where stores can, destroy its data key.

Destroying the data key is what makes the deletion final: every ciphertext the tenant left anywhere
(database pages, the WAL, vector files, KV caches, adapters, backups) becomes undecryptable, whether
or not the rows themselves were reached. Running proxies stop using their cached copy of the key
within the Keyring's revalidation interval. The audit trail is kept (it holds no text) and records the
deletion.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import delete
from sqlmodel import SQLModel

from memos.db import Database
from memos.logsafe import exception_summary

log = logging.getLogger(__name__)


class TenantEraser(Protocol):
    def erase_tenant(self, tenant: str) -> Any: ...


@dataclass
class TenantDeletion:
    tenant: str
    keys_revoked: int
    stores_erased: int


def delete_tenant(core: Any, tenant: str, *, erasers: Iterable[TenantEraser] = ()) -> TenantDeletion:
    """Blocking. `core` provides api_keys, keyring and audit (proxy.services.Core)."""
    revoked = 0
    for info in core.api_keys.list(tenant):
        if info.revoked_at is None and core.api_keys.revoke(info.key_id):
            revoked += 1
            core.audit.record(tenant, "key.revoke", key_id=info.key_id, detail={"reason": "tenant.delete"})
    erased = 0
    for eraser in erasers:
        try:
            eraser.erase_tenant(tenant)
            erased += 1
        except Exception as exc:  # the key is destroyed regardless: what is left is unreadable
            log.error(
                "erasing a tenant's rows from %s failed: %s", type(eraser).__name__, exception_summary(exc)
            )
    core.keyring.destroy(tenant)
    core.audit.record(tenant, "tenant.delete", detail={"keys_revoked": revoked, "stores_erased": erased})
    return TenantDeletion(tenant, revoked, erased)


# Tables that outlive a tenant: its audit trail (append-only, holds no text), its API keys (revoked,
# kept so `keys list` shows them) and its key row (destroyed by Keyring.destroy, last).
_KEPT_TABLES = frozenset({"audit_entries", "audit_heads", "api_keys", "tenant_keys"})


class SqlTenantEraser:
    """Deletes the tenant's rows from every table that has a `tenant` column (except the kept ones)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def erase_tenant(self, tenant: str) -> int:
        self._db.create_all()  # imports every table module, so the metadata knows every table
        removed = 0
        with self._db.engine.begin() as conn:
            for table in SQLModel.metadata.sorted_tables:
                if table.name in _KEPT_TABLES or "tenant" not in table.c:
                    continue
                removed += conn.execute(delete(table).where(table.c.tenant == tenant)).rowcount or 0
        if self._db.is_sqlite:
            # secure_delete zeroed the freed space; fold the WAL back so no older page image survives.
            with self._db.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed


class VectorTenantEraser:
    """Drops the tenant's LanceDB tables."""

    def __init__(self, uri: str) -> None:
        self._uri = uri

    def erase_tenant(self, tenant: str) -> int:
        from memos.storage.vectors import VectorIndex

        VectorIndex(self._uri).drop_tenant(tenant)
        return 1


class FileTenantEraser:
    """Removes the tenant's directories of encrypted files (KV caches, adapters) under a data dir.

    Such directories are named by memos.local.kvcache.tenant_dir_name(tenant), a hash, wherever they are.
    """

    def __init__(self, root: Path | str, max_depth: int = 3) -> None:
        self._root = Path(root)
        self._depth = max_depth

    def erase_tenant(self, tenant: str) -> int:
        from memos.local.kvcache import tenant_dir_name

        name = tenant_dir_name(tenant)
        removed = 0
        frontier = [self._root] if self._root.is_dir() else []
        for _ in range(self._depth):
            nxt = []
            for directory in frontier:
                for child in directory.iterdir():
                    if not child.is_dir() or child.is_symlink():
                        continue
                    if child.name == name:
                        shutil.rmtree(child, ignore_errors=True)
                        removed += 1
                    else:
                        nxt.append(child)
            frontier = nxt
        return removed


def default_erasers(db: Database, vector_uri: str, data_dir: Path) -> list[TenantEraser]:
    """Every store a default deployment keeps a tenant's data in."""
    return [SqlTenantEraser(db), VectorTenantEraser(vector_uri), FileTenantEraser(data_dir)]
