"""Master key rotation while serving: the key file holds active + previous keys; processes adopt it."""

import base64
import os

import pytest

from memos.governance.audit import AuditLog
from memos.governance.masterkeys import (
    MasterKeySet,
    MasterKeySource,
    connect,
    parse_keys,
    read_key_file,
    rewrap_all,
)
from memos.keys.crypto import MasterKey
from memos.keys.keyring import Keyring, TenantKeyRow


def _ring(db, source):
    keys = source.current()
    ring = Keyring(db, keys.active, keys.previous, refresh=source.refresh, revalidate_s=0.0)
    audit = AuditLog.from_master(db, keys.active, keys.previous)
    connect(source, ring, audit)
    return ring, audit


def test_parse_keys_formats():
    a, b = MasterKey.generate(), MasterKey.generate()
    assert parse_keys(a.to_b64()).active == a
    keys = parse_keys(f"# comment\n{a.to_b64()}\n\n{b.to_b64()}  # old\n")
    assert keys.active == a and keys.previous == (b,)
    assert parse_keys(f"{b.to_b64()},{a.to_b64()}").ids == (b.key_id, a.key_id)
    with pytest.raises(ValueError):
        parse_keys("# nothing")
    with pytest.raises(ValueError):
        parse_keys(base64.b64encode(b"short").decode())


def test_key_file_created_0600_and_single_key_format_is_compatible(tmp_path):
    path = tmp_path / "master.key"
    source = MasterKeySource(path=path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert MasterKey.load_or_create(path) == source.current().active
    new = MasterKey.generate()
    source.replace(source.current().rotated(new))
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert MasterKey.load_or_create(path) == new  # the first line is the active key
    assert read_key_file(path).previous[0].key_id != new.key_id


def test_rotation_while_serving(db, tmp_path):
    """A 'server' keyring keeps working while another process rotates; both agree afterwards."""
    path = tmp_path / "master.key"
    server_source = MasterKeySource(path=path)
    server, server_audit = _ring(db, server_source)
    blob = server.cipher("acme").encrypt_text("hello")
    server_audit.record("acme", "memory.write", memory_ids=["m1"])

    # The rotating process (the CLI): new key first in the file, then re-wrap every data key.
    cli_source = MasterKeySource(path=path)
    before = cli_source.current()
    new = MasterKey.generate()
    os.utime(path, ns=(1, 1))  # make sure the replacement changes the stamp on coarse clocks
    cli_source.replace(before.rotated(new))
    report = rewrap_all(db, cli_source.current())
    assert report.rewrapped == ["acme"] and not report.unknown
    with db.session() as session:
        assert session.get(TenantKeyRow, "acme").master_key_id == new.key_id

    # The server has its key cached: still works; a fresh lookup re-unwraps with the new master,
    # which it learns from the file when it meets the unknown key id.
    assert server.cipher("acme").decrypt_text(blob) == "hello"
    assert server.master.key_id == new.key_id
    # A new tenant made by the server now is wrapped with the new key.
    server.cipher("beta")
    with db.session() as session:
        assert session.get(TenantKeyRow, "beta").master_key_id == new.key_id
    # The audit chain continues under the new key and verifies with both.
    server_audit.record("acme", "memory.write", memory_ids=["m2"])
    fresh = MasterKeySource(path=path)
    _, fresh_audit = _ring(db, fresh)
    assert fresh_audit.verify("acme").ok
    # An old process that never saw the file (fixed keys, old only) cannot open the re-wrapped key.
    old_only = Keyring(db, before.active)
    with pytest.raises(RuntimeError):
        old_only.cipher("acme")


def test_rewrap_reports_unknown_masters(db):
    a, b = MasterKey.generate(), MasterKey.generate()
    Keyring(db, a).cipher("acme")
    report = rewrap_all(db, MasterKeySet(b))
    assert report.unknown == ["acme"] and not report.rewrapped
    report = rewrap_all(db, MasterKeySet(b, (a,)))
    assert report.rewrapped == ["acme"]
    assert rewrap_all(db, MasterKeySet(b, (a,))).already == 1


def test_env_keys_are_fixed(tmp_path):
    a, b = MasterKey.generate(), MasterKey.generate()
    source = MasterKeySource.from_settings(f"{a.to_b64()},{b.to_b64()}", tmp_path)
    assert not source.is_file and source.current().previous == (b,)
    assert source.refresh() is False
    with pytest.raises(RuntimeError):
        source.replace(MasterKeySet(b))
    assert not (tmp_path / "master.key").exists()
