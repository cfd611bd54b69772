"""The scanner itself finds what it is meant to find (so a clean scan means something)."""

import base64

from tests.support.bytescan import scan


def test_scanner_finds_every_encoding(tmp_path):
    secret = "zqvkcanaryxwplmt"
    (tmp_path / "a").mkdir()
    samples = {
        "plain.log": b"... " + secret.encode() + b" ...",
        "a/u16.bin": b"\x00\x01" + secret.encode("utf-16-le") + b"\x00",
        "a/b64.json": b'{"x": "' + base64.b64encode(b"xx" + secret.encode() + b"yy") + b'"}',
        "upper.txt": secret.upper().encode(),
        ".hidden-wal": b"\xff" * 100 + secret.encode("utf-16-be"),
    }
    for name, data in samples.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "clean").write_bytes(b"nothing here")
    hits = scan(tmp_path, {"canary": secret})
    assert {h.path.name for h in hits} == {"plain.log", "u16.bin", "b64.json", "upper.txt", ".hidden-wal"}


def test_scanner_finds_bytes(tmp_path):
    blob = bytes(range(40))
    (tmp_path / "x").write_bytes(b"\x00" * 7 + blob + b"\x00")
    (tmp_path / "y").write_text(blob.hex())
    assert {h.path.name for h in scan(tmp_path, {"blob": blob})} == {"x", "y"}
