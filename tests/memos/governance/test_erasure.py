"""Erasing a user leaves nothing of it in any file: no ciphertext, no blind-index term, no vector.

Memory text only ever reaches disk as ciphertext, so a scan for its words is the easy half; the hard
half is that the *ciphertext* of erased memories (still decryptable while the tenant's key lives) and
their keyed term hashes and rotated vectors are gone from the database file, its WAL and the LanceDB
files, including free pages and old table versions. Another user's data, scanned the same way, is
found: the scan is able to see what it looks for.
"""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from memos.db import Database
from memos.embeddings import HashEmbedder
from memos.keys.crypto import MasterKey
from memos.keys.keyring import Keyring
from memos.storage.tables import MemoryRow, MemoryVersionRow, PostingRow
from memos.storage.vault import MemVault
from memos.storage.vectors import VectorIndex
from tests.support.bytescan import describe, scan

ALICE = [
    "alice keeps her zorblatt collection in the quennith attic",
    "alice prefers vremmick tea over coffee",
    "alice's sister lives in plontavia",
]
ALICE_TERMS = ["zorblatt", "quennith", "vremmick", "plontavia"]
BOB = ["bob restores klaxifor motorcycles", "bob is allergic to snibbet"]


@pytest.fixture
def stack(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'memos.db'}")
    db.create_all()
    keyring = Keyring(db, MasterKey.generate())
    embedder = HashEmbedder()
    vault = MemVault(db, keyring, VectorIndex(str(tmp_path / "vectors")), embedder)
    yield tmp_path, db, keyring, vault, embedder
    db.dispose()


def _stored_vectors(data_dir, owner_key):
    """The rotated vectors as LanceDB stores them (read back: batch maths may differ in the last bit)."""
    import lancedb

    conn = lancedb.connect(str(data_dir / "vectors"))
    out = []
    for name in conn.list_tables().tables:
        table = conn.open_table(name).to_arrow()
        for owner, vec in zip(table["owner"].to_pylist(), table["vector"].to_pylist(), strict=True):
            if owner == owner_key:
                out.append(np.asarray(vec, "<f4").tobytes())
    return out


def _secrets_of(data_dir, vault, db, keyring, owner, texts, terms):
    """What of `owner` could be on disk: payload ciphertexts, term hashes and rotated vectors."""
    cipher = keyring.cipher("acme")
    secrets: dict[str, str | bytes] = {}
    with db.session() as session:
        for i, row in enumerate(session.exec(select(MemoryRow).where(MemoryRow.owner == owner)).scalars()):
            secrets[f"{owner} payload {i}"] = row.payload[13:45]  # past the format byte and nonce
        versions = session.exec(select(MemoryVersionRow).where(MemoryVersionRow.owner == owner)).scalars()
        for i, row in enumerate(versions):
            if row.payload:
                secrets[f"{owner} version payload {i}"] = row.payload[13:45]
        hashes = {r.term for r in session.exec(select(PostingRow).where(PostingRow.owner == owner)).scalars()}
    for term in terms:
        blind = cipher.blind(term)
        assert (
            blind in hashes
        )  # the index really holds this term's hash (so its absence later means something)
        secrets[f"{owner} term hash {term}"] = blind
        secrets[f"{owner} term {term}"] = term
    vectors = _stored_vectors(data_dir, vault.owner_key("acme", owner))
    assert len(vectors) == len(texts)
    for i, vec in enumerate(vectors):
        secrets[f"{owner} vector {i}"] = vec[:64]
    return secrets


def test_erased_user_leaves_no_bytes(stack):
    data_dir, db, keyring, vault, _embedder = stack
    for text in ALICE:
        vault.add("acme", "alice", text)
    items = [vault.add("acme", "bob", text) for text in BOB]
    # Give alice history too: an update makes a new version of an item (old ciphertext in versions).
    first = vault.list("acme", "alice", 10, None)[0][0]
    vault.update("acme", first.id, text=first.text + " since 2019")
    alice = _secrets_of(data_dir, vault, db, keyring, "alice", ALICE, ALICE_TERMS)
    bob = _secrets_of(data_dir, vault, db, keyring, "bob", BOB, ["klaxifor", "snibbet"])

    before = scan(data_dir, alice)
    found = {h.secret for h in before}
    assert any("payload" in s for s in found) and any("term hash" in s for s in found)
    assert any("vector" in s for s in found), describe(before)  # LanceDB holds the raw float32s

    assert vault.erase_user("acme", "alice") > 0
    assert vault.list("acme", "alice", 10, None)[0] == []
    leftover = scan(data_dir, alice)
    assert not leftover, describe(leftover)

    # Bob is intact, and the same scan still sees his bytes.
    assert {h.secret.split(" ")[0] for h in scan(data_dir, bob)} == {"bob"}
    assert [vault.get("acme", i.id).text for i in items] == BOB
