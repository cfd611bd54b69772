"""Deleting a tenant: revoke its API keys, erase its rows where stores can, destroy its data key.

Destroying the data key is what makes the deletion final: every ciphertext the tenant left anywhere
(database pages, the WAL, vector files, KV caches, adapters, backups) becomes undecryptable, whether
or not the rows themselves were reached. Running proxies stop using their cached copy of the key
within the Keyring's revalidation interval. The audit trail is kept (it holds no text) and records the
deletion.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

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
        except Exception:  # the key is destroyed regardless: what is left is unreadable
            log.exception("erasing a tenant's rows from %s failed", type(eraser).__name__)
    core.keyring.destroy(tenant)
    core.audit.record(tenant, "tenant.delete", detail={"keys_revoked": revoked, "stores_erased": erased})
    return TenantDeletion(tenant, revoked, erased)
