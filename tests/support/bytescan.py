"""Scan every file under a directory for secrets, in the encodings they could have been written in.

    hits = scan(data_dir, {"canary": canary})           # [] when nothing is found
    assert not hits, describe(hits)

Text secrets are looked for as UTF-8 (also upper and lower case), UTF-16 (LE/BE), UTF-32 LE, base64
(standard and URL-safe, at each of the three byte alignments), hex and percent-encoding. Byte secrets
(ciphertexts, vectors) are looked for as they are, and as base64 and hex.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote


@dataclass(frozen=True)
class Hit:
    path: Path
    secret: str
    encoding: str
    offset: int


def _b64_variants(raw: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for shift in range(3):
        chunk = raw[shift:]
        usable = len(chunk) // 3 * 3
        if usable < 9:
            continue
        std = base64.b64encode(chunk[:usable])
        out[f"base64+{shift}"] = std
        out[f"base64url+{shift}"] = base64.urlsafe_b64encode(chunk[:usable])
    return out


def text_needles(secret: str) -> dict[str, bytes]:
    raw = secret.encode("utf-8")
    needles = {
        "utf-8": raw,
        "utf-8 lower": secret.lower().encode("utf-8"),
        "utf-8 upper": secret.upper().encode("utf-8"),
        "utf-16-le": secret.encode("utf-16-le"),
        "utf-16-be": secret.encode("utf-16-be"),
        "utf-32-le": secret.encode("utf-32-le"),
        "hex": raw.hex().encode(),
        "HEX": raw.hex().upper().encode(),
        "percent": quote(secret, safe="").encode(),
    }
    needles.update(_b64_variants(raw))
    return {name: value for name, value in needles.items() if value}


def bytes_needles(secret: bytes) -> dict[str, bytes]:
    needles = {"raw": secret, "hex": secret.hex().encode()}
    needles.update(_b64_variants(secret))
    return needles


def files_under(root: Path) -> list[Path]:
    found = []
    for dirpath, _dirs, names in os.walk(root, followlinks=False):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                found.append(path)
    return sorted(found)


def scan(root: Path, secrets: dict[str, str | bytes]) -> list[Hit]:
    """Every occurrence (first per file, secret and encoding) of the secrets in any file under root."""
    needles: list[tuple[str, str, bytes]] = []
    for label, secret in secrets.items():
        variants = text_needles(secret) if isinstance(secret, str) else bytes_needles(secret)
        needles.extend((label, enc, value) for enc, value in variants.items())
    hits: list[Hit] = []
    for path in files_under(root):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for label, enc, value in needles:
            at = data.find(value)
            if at >= 0:
                hits.append(Hit(path, label, enc, at))
    return hits


def describe(hits: list[Hit]) -> str:
    return "\n".join(f"{h.path}: {h.secret} as {h.encoding} at byte {h.offset}" for h in hits[:50])
