"""Deleting a tenant destroys its data key: its ciphertext can no longer be decrypted, anywhere."""

from types import SimpleNamespace

import pytest

from memos.crypto import DecryptionError, MasterKey
from memos.governance.apikeys import ApiKeyStore
from memos.governance.tenants import delete_tenant
from memos.keyring import Keyring


def test_delete_tenant_shreds_and_revokes(db, audit):
    master = MasterKey.generate()
    ring = Keyring(db, master)
    keys = ApiKeyStore(db)
    _, raw = keys.create("acme", "admin")
    _, other_raw = keys.create("beta", "admin")
    blob = ring.cipher("acme").encrypt_text("the secret plan")
    beta_blob = ring.cipher("beta").encrypt_text("beta stays")

    class Eraser:
        def __init__(self):
            self.erased = []

        def erase_tenant(self, tenant):
            self.erased.append(tenant)

    eraser = Eraser()
    # A second process (a running proxy) has the key cached and re-checks it every 0 s.
    server = Keyring(db, master, revalidate_s=0.0)
    assert server.cipher("acme").decrypt_text(blob) == "the secret plan"

    core = SimpleNamespace(api_keys=keys, keyring=ring, audit=audit)
    report = delete_tenant(core, "acme", erasers=[eraser])
    assert report.keys_revoked == 1 and eraser.erased == ["acme"]
    assert keys.resolve(raw) is None and keys.resolve(other_raw) is not None
    for ring_ in (Keyring(db, master), server):
        with pytest.raises(DecryptionError):
            ring_.cipher("acme").decrypt_text(blob)
    assert Keyring(db, master).cipher("beta").decrypt_text(beta_blob) == "beta stays"
    actions = [e.action for e in audit.list("acme")[0]]
    assert actions[-2:] == ["key.revoke", "tenant.delete"]
    assert audit.verify("acme").ok
