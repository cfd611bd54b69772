"""The real `memos-proxy` CLI as a subprocess: audit verify, rotate-master, tenants delete, policy check."""

import json
import sqlite3

import pytest

from memos.db import Database
from memos.governance.audit import AuditLog
from memos.governance.masterkeys import MasterKeySource
from memos.keys.crypto import DecryptionError
from memos.keys.keyring import Keyring
from tests.support.proxy import proxy_env, run_cli


@pytest.fixture
def env(tmp_path):
    return proxy_env(tmp_path / "data", "http://127.0.0.1:9/v1")


def _open(env):
    from pathlib import Path

    data = Path(env["MEMOS_DATA_DIR"])
    db = Database(f"sqlite:///{(data / 'memos.db').resolve()}")
    db.create_all()
    keys = MasterKeySource(path=data / "master.key").current()
    return db, keys, AuditLog.from_master(db, keys.active, keys.previous)


def _fill(env, n=8):
    db, _, audit = _open(env)
    for i in range(n):
        audit.record("acme", "memory.write", key_id="k1", user="u1", memory_ids=[f"mem_{i}"])
    db.dispose()
    return env["MEMOS_DATA_DIR"] + "/memos.db"


def _sql(path, statement):
    with sqlite3.connect(path) as conn:
        conn.execute(statement)


def _verify(env):
    return run_cli("audit", "verify", "--tenant", "acme", env=env)


def test_intact_trail_passes(env):
    _fill(env)
    result = _verify(env)
    assert result.returncode == 0, result.stderr
    assert "acme: intact, 8 entries" in result.stdout


@pytest.mark.parametrize(
    ("statements", "first_bad"),
    [
        # altered: a memory id changed
        (["UPDATE audit_entries SET memory_ids='[\"mem_x\"]' WHERE seq=3"], 3),
        # altered: the action changed
        (["UPDATE audit_entries SET action='memory.read' WHERE seq=6"], 6),
        # removed from the middle
        (["DELETE FROM audit_entries WHERE seq=4"], 4),
        # removed from the end
        (["DELETE FROM audit_entries WHERE seq>=7"], 7),
        # swapped (reordered)
        (
            [
                "UPDATE audit_entries SET seq=-5 WHERE seq=5",
                "UPDATE audit_entries SET seq=5 WHERE seq=2",
                "UPDATE audit_entries SET seq=2 WHERE seq=-5",
            ],
            2,
        ),
        # the whole trail of another tenant copied in (inserted)
        (
            [
                "INSERT INTO audit_entries SELECT 'acme', seq + 100, ts, action, key_id, request_id, "
                "user_id, memory_ids, detail, mac_key_id, mac FROM audit_entries WHERE seq = 1"
            ],
            9,
        ),
    ],
    ids=["alter-ids", "alter-action", "remove-middle", "remove-tail", "swap", "insert"],
)
def test_tampering_fails_naming_the_first_bad_entry(env, statements, first_bad):
    path = _fill(env)
    for statement in statements:
        _sql(path, statement)
    result = _verify(env)
    assert result.returncode == 1
    assert f"BROKEN at entry {first_bad}" in result.stderr, result.stderr


def test_audit_list_holds_no_text(env):
    _fill(env, 2)
    result = run_cli("audit", "list", "--tenant", "acme", env=env)
    assert result.returncode == 0
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["memory_ids"] for r in rows] == [["mem_0"], ["mem_1"]]


def test_rotate_master_keeps_everything_readable_and_verifiable(env):
    db, keys, audit = _open(env)
    ring = Keyring(db, keys.active)
    blob = ring.cipher("acme").encrypt_text("hello")
    audit.record("acme", "memory.write", memory_ids=["m1"])
    db.dispose()
    result = run_cli("keys", "rotate-master", "--settle-s", "0", env=env)
    assert result.returncode == 0, result.stderr
    assert "1 data key(s) re-wrapped" in result.stdout
    db, new_keys, audit = _open(env)
    assert new_keys.active.key_id != keys.active.key_id and new_keys.previous[0] == keys.active
    assert Keyring(db, new_keys.active, new_keys.previous).cipher("acme").decrypt_text(blob) == "hello"
    db.dispose()
    assert _verify(env).returncode == 0
    listed = run_cli("audit", "list", "--tenant", "acme", env=env).stdout
    assert '"master.rotate"' in listed


def test_tenants_delete_destroys_the_data_key(env):
    key = run_cli("keys", "create", "--tenant", "acme", "--role", "admin", env=env).stdout.splitlines()[-1]
    db, keys, _ = _open(env)
    blob = Keyring(db, keys.active).cipher("acme").encrypt_text("the secret")
    db.dispose()
    assert run_cli("tenants", "delete", "--tenant", "acme", env=env).returncode == 2  # needs --yes
    result = run_cli("tenants", "delete", "--tenant", "acme", "--yes", env=env)
    assert result.returncode == 0, result.stderr
    db, keys, _ = _open(env)
    with pytest.raises(DecryptionError):
        Keyring(db, keys.active).cipher("acme").decrypt_text(blob)
    from memos.governance.apikeys import ApiKeyStore

    assert ApiKeyStore(db).resolve(key) is None
    db.dispose()
    assert _verify(env).returncode == 0


def test_policy_check_and_schema(env, tmp_path):
    bad = tmp_path / "acme.yaml"
    bad.write_text("memory:\n  top_k: 0\n")
    result = run_cli("policy", "check", str(bad), env=env)
    assert result.returncode == 1
    assert f"{bad}:2: memory.top_k:" in result.stderr
    out = tmp_path / "schema.json"
    assert run_cli("policy", "schema", "-o", str(out), env=env).returncode == 0
    assert json.loads(out.read_text())["title"] == "memos-proxy tenant policy"
