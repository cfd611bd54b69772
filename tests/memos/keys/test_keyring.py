"""Keyring: data keys stored only wrapped; rotation re-wraps without touching data; destroy shreds."""

from __future__ import annotations

import pytest
from sqlmodel import select

from memos.db import Database
from memos.keys.crypto import DecryptionError, MasterKey
from memos.keys.keyring import Keyring, TenantKeyRow


@pytest.fixture
def db(tmp_path) -> Database:
    database = Database(f"sqlite:///{tmp_path / 'k.db'}")
    database.create_all()
    return database


def test_data_key_persists_across_keyrings(db: Database) -> None:
    master = MasterKey.generate()
    blob = Keyring(db, master).cipher("acme").encrypt_text("hello")
    assert Keyring(db, master).cipher("acme").decrypt_text(blob) == "hello"


def test_stored_key_is_wrapped(db: Database) -> None:
    master = MasterKey.generate()
    ring = Keyring(db, master)
    ring.cipher("acme")
    with db.session() as session:
        row = session.exec(select(TenantKeyRow)).one()
    assert row.master_key_id == master.key_id
    assert len(row.wrapped_key) > 32  # nonce + ciphertext + tag, never the bare key


def test_rewrap_keeps_data_readable_under_new_master_only(db: Database) -> None:
    old, new = MasterKey.generate(), MasterKey.generate()
    blob = Keyring(db, old).cipher("acme").encrypt_text("hello")
    assert Keyring(db, old).rewrap_all(new) == 1
    assert Keyring(db, new).cipher("acme").decrypt_text(blob) == "hello"
    with pytest.raises(RuntimeError, match="master key"):
        Keyring(db, old).cipher("acme")


def test_destroy_makes_ciphertext_unreadable(db: Database) -> None:
    master = MasterKey.generate()
    ring = Keyring(db, master)
    blob = ring.cipher("acme").encrypt_text("hello")
    ring.destroy("acme")
    with pytest.raises(DecryptionError):
        Keyring(db, master).cipher("acme").decrypt_text(blob)  # a fresh key was made; the old is gone
