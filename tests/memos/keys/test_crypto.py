"""Envelope encryption, blind index and keyed rotation: the properties the rest of the system relies on."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from memos.keys.crypto import DecryptionError, MasterKey, TenantCipher, new_data_key


def test_ciphertext_roundtrips_and_hides_plaintext() -> None:
    cipher = TenantCipher("acme", new_data_key())
    blob = cipher.encrypt_text("my secret canary", aad=b"item:1")
    assert b"canary" not in blob
    assert cipher.decrypt_text(blob, aad=b"item:1") == "my secret canary"


def test_wrong_aad_or_tampering_is_rejected() -> None:
    cipher = TenantCipher("acme", new_data_key())
    blob = cipher.encrypt_text("text", aad=b"item:1")
    with pytest.raises(DecryptionError):
        cipher.decrypt_text(blob, aad=b"item:2")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(DecryptionError):
        cipher.decrypt_text(tampered, aad=b"item:1")


def test_other_tenants_key_cannot_decrypt() -> None:
    blob = TenantCipher("a", new_data_key()).encrypt(b"x")
    with pytest.raises(DecryptionError):
        TenantCipher("b", new_data_key()).decrypt(blob)


def test_blind_index_is_keyed_and_deterministic() -> None:
    key = new_data_key()
    one, same, other = TenantCipher("a", key), TenantCipher("a", key), TenantCipher("a", new_data_key())
    assert one.blind("paris") == same.blind("paris")
    assert one.blind("paris") != other.blind("paris")
    assert "paris" not in one.blind("paris")


def test_rotation_preserves_similarity_but_changes_vectors() -> None:
    cipher = TenantCipher("a", new_data_key())
    vectors = np.random.default_rng(0).standard_normal((4, 384)).astype(np.float32)
    rotated = cipher.rotate(vectors)
    assert not np.allclose(rotated, vectors)
    np.testing.assert_allclose(rotated @ rotated.T, vectors @ vectors.T, rtol=1e-3, atol=1e-3)


def test_master_key_wraps_per_tenant() -> None:
    master = MasterKey.generate()
    data_key = new_data_key()
    wrapped = master.wrap(data_key, "acme")
    assert master.unwrap(wrapped, "acme") == data_key
    with pytest.raises(DecryptionError):
        master.unwrap(wrapped, "other")  # a wrapped key cannot be moved to another tenant
    with pytest.raises(DecryptionError):
        MasterKey.generate().unwrap(wrapped, "acme")


def test_master_key_file_is_created_private_and_reused(tmp_path) -> None:
    path = tmp_path / "master.key"
    first = MasterKey.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert MasterKey.load_or_create(path).key_id == first.key_id


def test_master_key_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKey(b"short")
