"""Envelope encryption primitives: the master key, per-tenant data keys, blind index, keyed vector rotation.

A tenant's data key (AES-256-GCM) encrypts its memory text, KV caches and adapters; the master key
wraps data keys and never touches data. Keyword search uses keyed hashes of terms (a blind index) and
vectors are stored under a secret, tenant-keyed orthogonal rotation, so no index holds plaintext or
directly invertible embeddings. Destroying a data key makes all of the tenant's ciphertext unreadable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from memos.errors import Inconsistent

if TYPE_CHECKING:
    import numpy as np

_FORMAT_V1 = b"\x01"
_NONCE_BYTES = 12
KEY_BYTES = 32


class DecryptionError(Inconsistent):
    """Ciphertext could not be authenticated (wrong key, tampered bytes or wrong associated data)."""


def _derive(key: bytes, label: bytes, length: int = KEY_BYTES) -> bytes:
    return HKDF(algorithm=SHA256(), length=length, salt=None, info=b"memos:" + label).derive(key)


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return _FORMAT_V1 + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, blob: bytes, aad: bytes) -> bytes:
    if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _FORMAT_V1:
        raise DecryptionError("not a memos ciphertext")
    nonce, body = blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :]
    try:
        return AESGCM(key).decrypt(nonce, body, aad)
    except Exception as exc:  # cryptography raises InvalidTag
        raise DecryptionError("authentication failed") from exc


@dataclass(frozen=True)
class MasterKey:
    """The key that wraps data keys. Its id (a hash prefix) is stored beside every wrapped key."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise ValueError("the master key must be 32 bytes (base64 in MEMOS_MASTER_KEY)")

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"memos-master-id:" + self.secret).hexdigest()[:16]

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(KEY_BYTES))

    @classmethod
    def from_b64(cls, text: str) -> MasterKey:
        return cls(base64.b64decode(text.strip()))

    def to_b64(self) -> str:
        return base64.b64encode(self.secret).decode()

    @classmethod
    def load_or_create(cls, path: Path) -> MasterKey:
        """The embedded default: a key file made at first start, readable by its owner only."""
        if path.exists():
            # The first key line is the active key; later lines are previous keys kept after a rotation
            # (memos.governance.masterkeys), comments start with '#'.
            for line in path.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    return cls.from_b64(line)
            raise ValueError(f"{path} holds no master key")
        path.parent.mkdir(parents=True, exist_ok=True)
        key = cls.generate()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key.to_b64() + "\n")
        return key

    def wrap(self, data_key: bytes, tenant: str) -> bytes:
        return _seal(_derive(self.secret, b"wrap"), data_key, b"tenant:" + tenant.encode())

    def unwrap(self, wrapped: bytes, tenant: str) -> bytes:
        return _open(_derive(self.secret, b"wrap"), wrapped, b"tenant:" + tenant.encode())

    def derive(self, label: str) -> bytes:
        """A purpose-bound key derived from the master key (e.g. the audit chain's MAC key)."""
        return _derive(self.secret, label.encode())


class TenantCipher:
    """Everything keyed by one tenant's data key. Cheap to hold; built by the Keyring."""

    def __init__(self, tenant: str, data_key: bytes) -> None:
        self.tenant = tenant
        self._enc_key = _derive(data_key, b"enc")
        self._index_key = _derive(data_key, b"blind-index")
        self._rotation_seed = _derive(data_key, b"vector-rotation")

    def encrypt(self, plaintext: bytes, aad: bytes = b"") -> bytes:
        return _seal(self._enc_key, plaintext, aad)

    def decrypt(self, blob: bytes, aad: bytes = b"") -> bytes:
        return _open(self._enc_key, blob, aad)

    def encrypt_text(self, text: str, aad: bytes = b"") -> bytes:
        return self.encrypt(text.encode("utf-8"), aad)

    def decrypt_text(self, blob: bytes, aad: bytes = b"") -> str:
        return self.decrypt(blob, aad).decode("utf-8")

    def blind(self, term: str) -> str:
        """Keyed hash of a normalised term: equal terms match, the index never holds the term."""
        digest = hmac.new(self._index_key, term.encode("utf-8"), hashlib.sha256).digest()
        return base64.b32encode(digest[:10]).decode().lower()

    @cached_property
    def _rotation(self) -> np.ndarray:
        return _orthogonal_from_seed(self._rotation_seed)

    def rotate(self, vectors: np.ndarray) -> np.ndarray:
        """Apply the tenant's secret orthogonal rotation: cosine and L2 distances are unchanged."""
        import numpy as np

        matrix = self._rotation
        if vectors.shape[-1] != matrix.shape[0]:
            matrix = _orthogonal_from_seed(self._rotation_seed, dim=vectors.shape[-1])
        return (vectors.astype(np.float32) @ matrix).astype(np.float32)


def _orthogonal_from_seed(seed: bytes, dim: int = 384) -> np.ndarray:
    import numpy as np

    rng = np.random.default_rng(int.from_bytes(seed, "big"))
    q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)
