"""The export file: a JSON Lines document of records, sealed with a passphrase unless asked not to be.

Layout (one JSON value per line):

    {"format": "memos-export", "version": 1, "encryption": null | {...}}     the header, plaintext
    <record 0>
    ...
    <record n-1>
    <{"type": "end", "records": n}>                                          the trailer

Plaintext files hold the records as JSON. Sealed files hold each record as the base64 of
`nonce || AES-256-GCM(key, json)` with associated data `sha256(header line) || index`, and the key
is derived from the passphrase with scrypt (salt and cost parameters in the header). So the header
cannot be altered (every record would fail), records cannot be reordered, dropped or spliced in from
another file (index, header hash), and a truncated file lacks its trailer. A wrong passphrase fails
on the first record. Files are written with mode 0600 through a temporary file and a rename, so a
reader never sees half a file and no other user can read the plaintext variant.

Nothing here knows what the records mean (memos.portability.transfer does).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from memos.errors import InvalidInput

FORMAT = "memos-export"
VERSION = 1
CIPHER = "AES-256-GCM"
KDF = "scrypt"
# scrypt cost: 128 MiB and about a second per derivation, once per file.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
# Bounds accepted when reading, so a hostile header cannot ask for unbounded memory or time.
MAX_SCRYPT_N, MAX_SCRYPT_R, MAX_SCRYPT_P = 2**20, 32, 16
MIN_PASSPHRASE_CHARS = 8
_NONCE = 12


class ExportFileError(InvalidInput):
    """The file cannot be read: not an export, damaged, truncated, or the wrong passphrase.
    The message is safe to show (it never holds file content)."""


def _kdf(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))


def _aad(header_digest: bytes, index: int) -> bytes:
    return header_digest + index.to_bytes(8, "big")


def check_passphrase(passphrase: str) -> None:
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise ExportFileError(f"the passphrase must have at least {MIN_PASSPHRASE_CHARS} characters")


def write_export(path: Path, records: Iterable[dict[str, Any]], passphrase: str | None) -> int:
    """Write records (sealed when a passphrase is given) to `path` atomically, mode 0600.
    Returns how many records were written (the trailer not counted)."""
    encryption: dict[str, Any] | None = None
    key: bytes | None = None
    if passphrase is not None:
        check_passphrase(passphrase)
        salt = os.urandom(16)
        encryption = {
            "cipher": CIPHER,
            "kdf": KDF,
            "salt": base64.b64encode(salt).decode("ascii"),
            "n": SCRYPT_N,
            "r": SCRYPT_R,
            "p": SCRYPT_P,
        }
        key = _kdf(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    header = json.dumps({"format": FORMAT, "version": VERSION, "encryption": encryption}, sort_keys=True)
    digest = hashlib.sha256(header.encode("ascii")).digest()
    aead = AESGCM(key) if key is not None else None

    def line(index: int, record: dict[str, Any]) -> str:
        body = json.dumps(record, ensure_ascii=False, sort_keys=True)
        if aead is None:
            return body
        nonce = os.urandom(_NONCE)
        sealed = aead.encrypt(nonce, body.encode("utf-8"), _aad(digest, index))
        return base64.b64encode(nonce + sealed).decode("ascii")

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or Path("."))
    try:
        os.fchmod(fd, 0o600)
        count = 0
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(header + "\n")
            for record in records:
                out.write(line(count, record) + "\n")
                count += 1
            out.write(line(count, {"type": "end", "records": count}) + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
        os.chmod(path, 0o600)
        return count
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def is_sealed(path: Path) -> bool:
    """Whether the file at `path` is a sealed export (reads its header only)."""
    return _header(_first_line(path))[0].get("encryption") is not None


def read_export(path: Path, passphrase: str | None) -> list[dict[str, Any]]:
    """Every record of the file, after checking the header, each record and the trailer."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ExportFileError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportFileError(f"cannot read {path}: {type(exc).__name__}") from None
    if not lines:
        raise ExportFileError("the file is empty: not a memos export")
    _, encryption = _header(lines[0])
    digest = hashlib.sha256(lines[0].encode("utf-8")).digest()
    aead: AESGCM | None = None
    if encryption is not None:
        if passphrase is None:
            raise ExportFileError("the export is encrypted: give its passphrase (--passphrase-env VAR)")
        aead = AESGCM(_kdf(passphrase, *_scrypt_params(encryption)))
    records: list[dict[str, Any]] = []
    for index, raw in enumerate(lines[1:]):
        record = _record(raw, index, aead, digest)
        if record.get("type") == "end":
            if record.get("records") != index or index + 2 != len(lines):
                raise ExportFileError("the file is damaged: records are missing or follow the end")
            return records
        records.append(record)
    raise ExportFileError("the file is truncated: its end record is missing")


def _first_line(path: Path) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\n")
    except FileNotFoundError:
        raise ExportFileError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ExportFileError(f"cannot read {path}: {type(exc).__name__}") from None


def _header(line: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    try:
        header = json.loads(line)
    except ValueError:
        header = None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ExportFileError("not a memos export file (no memos-export header)")
    if header.get("version") != VERSION:
        raise ExportFileError(f"unsupported export version {header.get('version')!r} (this reads {VERSION})")
    encryption = header.get("encryption")
    if encryption is not None and not isinstance(encryption, dict):
        raise ExportFileError("the export header's encryption is malformed")
    return header, encryption


def _scrypt_params(encryption: dict[str, Any]) -> tuple[bytes, int, int, int]:
    if encryption.get("cipher") != CIPHER or encryption.get("kdf") != KDF:
        raise ExportFileError(f"unsupported encryption (this reads {CIPHER} with {KDF})")
    try:
        salt = base64.b64decode(encryption["salt"], validate=True)
        n, r, p = (int(encryption[k]) for k in ("n", "r", "p"))
    except (KeyError, TypeError, ValueError):
        raise ExportFileError("the export header's encryption parameters are malformed") from None
    if not (
        2 <= n <= MAX_SCRYPT_N and n & (n - 1) == 0 and 1 <= r <= MAX_SCRYPT_R and 1 <= p <= MAX_SCRYPT_P
    ):
        raise ExportFileError("the export header's scrypt parameters are out of bounds")
    if len(salt) < 16:
        raise ExportFileError("the export header's salt is too short")
    return salt, n, r, p


def _record(raw: str, index: int, aead: AESGCM | None, digest: bytes) -> dict[str, Any]:
    if aead is None:
        body = raw
    else:
        try:
            blob = base64.b64decode(raw, validate=True)
        except ValueError:
            raise ExportFileError(f"the file is damaged (record {index} is not base64)") from None
        try:
            body = aead.decrypt(blob[:_NONCE], blob[_NONCE:], _aad(digest, index)).decode("utf-8")
        except (InvalidTag, ValueError):
            if index == 0:
                raise ExportFileError("wrong passphrase, or the file is damaged") from None
            raise ExportFileError(
                f"the file is damaged or altered (record {index} fails to decrypt)"
            ) from None
    try:
        record = json.loads(body)
    except ValueError:
        raise ExportFileError(f"the file is damaged (record {index} is not JSON)") from None
    if not isinstance(record, dict):
        raise ExportFileError(f"the file is damaged (record {index} is not an object)")
    return record
