"""Deleting a tenant destroys its data key: its ciphertext can no longer be decrypted, anywhere."""

from types import SimpleNamespace

import pytest

from memos.governance.apikeys import ApiKeyStore
from memos.governance.tenants import delete_tenant
from memos.keys.crypto import DecryptionError, MasterKey
from memos.keys.keyring import Keyring


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


def test_default_erasers_remove_rows_vectors_and_files(tmp_path, db, audit):
    from memos.governance.tenants import FileTenantEraser, SqlTenantEraser
    from memos.local.kvcache import tenant_dir_name
    from memos.writeback.outbox import Outbox

    master = MasterKey.generate()
    ring = Keyring(db, master)
    outbox = Outbox(db, ring)
    outbox.enqueue("acme", "u1", "r1", {"x": 1})
    outbox.enqueue("beta", "u1", "r2", {"x": 2})
    audit.record("acme", "memory.write")
    kv = tmp_path / "data" / "kv" / tenant_dir_name("acme") / "user"
    kv.mkdir(parents=True)
    (kv / "a.kv").write_bytes(b"ciphertext")
    other = tmp_path / "data" / "kv" / tenant_dir_name("beta")
    other.mkdir(parents=True)

    assert SqlTenantEraser(db).erase_tenant("acme") >= 1
    assert FileTenantEraser(tmp_path / "data").erase_tenant("acme") == 1
    assert not kv.exists() and other.exists()
    assert [r.tenant for r in _outbox_rows(db)] == ["beta"]
    assert audit.verify("acme").ok and audit.count("acme") == 1  # the trail is kept


def _outbox_rows(db):
    from sqlmodel import select

    from memos.writeback.outbox import OutboxRow

    with db.session() as session:
        return session.exec(select(OutboxRow)).all()
