"""Erasure over the running proxy: `DELETE /v1/memories?user=U` and `memos-proxy tenants delete`.

After erasing a user, search and list return nothing of it, its ids answer 404, and a byte scan of the
data dir finds none of its terms, none of its memories' ciphertext, keyed term hashes or vectors
(SQLite free pages and WAL, LanceDB old versions included), while another user's data is still there.
Deleting the tenant destroys its data key: what it left on disk can no longer be decrypted.
"""

from __future__ import annotations

import json

import httpx
import lancedb
import numpy as np
import openai
import pytest
from sqlalchemy import select

from memos.db import Database
from memos.governance.masterkeys import MasterKeySource
from memos.keys.crypto import DecryptionError
from memos.keys.keyring import Keyring
from memos.storage.tables import MemoryRow, MemoryVersionRow, PostingRow, item_aad
from memos.writeback.outbox import OutboxRow
from tests.support.bytescan import describe, scan
from tests.support.memory import until
from tests.support.proxy import RunningProxy, proxy_env, run_cli

U1_WORDS = ["florbicate", "wendlestrop", "quaximony", "brindlehoff"]
U2_WORDS = ["snorkeltine", "pavlovique"]
MODEL = "gpt-4o-mini"


def _disk_secrets(running: RunningProxy, owner: str, words: list[str]) -> dict[str, str | bytes]:
    """What of `owner` could be on disk: its words, payload ciphertexts, term hashes, stored vectors."""
    services = running.services
    cipher = services.keyring.cipher("acme")
    secrets: dict[str, str | bytes] = {f"{owner} word {w}": w for w in words}
    with services.db.session() as session:
        for i, row in enumerate(session.exec(select(MemoryRow).where(MemoryRow.owner == owner)).scalars()):
            if row.payload:
                secrets[f"{owner} payload {i}"] = row.payload[13:45]
        versions = session.exec(select(MemoryVersionRow).where(MemoryVersionRow.owner == owner)).scalars()
        for i, row in enumerate(versions):
            if row.payload:
                secrets[f"{owner} version {i}"] = row.payload[13:45]
        for i, row in enumerate(session.exec(select(OutboxRow).where(OutboxRow.owner == owner)).scalars()):
            secrets[f"{owner} outbox {i}"] = row.payload[13:45]
        terms = {r.term for r in session.exec(select(PostingRow).where(PostingRow.owner == owner)).scalars()}
    for word in words:
        if cipher.blind(word) in terms:
            secrets[f"{owner} term hash {word}"] = cipher.blind(word)
    okey = services.memory.vault.owner_key("acme", owner)
    conn = lancedb.connect(running.settings.resolved_vector_uri)
    for name in conn.list_tables().tables:
        table = conn.open_table(name).to_arrow()
        for i, (o, vec) in enumerate(
            zip(table["owner"].to_pylist(), table["vector"].to_pylist(), strict=True)
        ):
            if o == okey:
                secrets[f"{owner} vector {name} {i}"] = np.asarray(vec, "<f4").tobytes()[:64]
    return secrets


@pytest.fixture
def running(proxy) -> RunningProxy:
    return proxy(key_cache_ttl_s=0, embedding_model="hash", worker_poll_interval_s=0.02)


def test_erasing_a_user_leaves_nothing(running: RunningProxy):
    key = running.create_key("acme", "app")
    api = httpx.Client(base_url=running.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    u1 = api.post(
        "/memories",
        json={"user": "u1", "memories": [{"text": f"My {w} is in the shed"} for w in U1_WORDS[:3]]},
    ).json()["data"]
    api.post("/memories", json={"user": "u2", "memories": [{"text": f"I like {w}"} for w in U2_WORDS]})
    # Some history (versions) and a chat written back (outbox -> worker -> vault).
    api.patch(f"/memories/{u1[0]['id']}", json={"text": f"My {U1_WORDS[0]} moved to the attic"})
    client = openai.OpenAI(base_url=running.base_url, api_key=key, max_retries=0)
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"I have a pet called {U1_WORDS[3]}."}],
        extra_headers={"X-Memos-User": "u1"},
    )

    def searchable(user: str, word: str) -> bool:
        hits = api.post("/memories/search", json={"user": user, "query": word}).json()["data"]
        return any(word in h["memory"] for h in hits)

    until(lambda: searchable("u1", U1_WORDS[3]), "the chat was written back")
    u1_secrets = _disk_secrets(running, "u1", U1_WORDS)
    u2_secrets = _disk_secrets(running, "u2", U2_WORDS)
    assert sum("vector" in k for k in u1_secrets) >= 4 and sum("payload" in k for k in u1_secrets) >= 4

    reply = api.delete("/memories", params={"user": "u1"})
    assert reply.status_code == 200, reply.text

    assert api.post("/memories/search", json={"user": "u1", "query": " ".join(U1_WORDS)}).json()["data"] == []
    assert api.get("/memories", params={"user": "u1"}).json()["data"] == []
    assert all(api.get(f"/memories/{m['id']}").status_code == 404 for m in u1)
    leftover = scan(running.settings.data_dir, u1_secrets)
    assert not leftover, describe(leftover)
    # u2 is untouched, and the same scan sees its bytes (the scan can find what it looks for).
    assert searchable("u2", U2_WORDS[0])
    seen = {h.secret for h in scan(running.settings.data_dir, u2_secrets)}
    assert any("payload" in s for s in seen) and any("vector" in s for s in seen)


def test_deleting_the_tenant_destroys_its_key(running: RunningProxy, upstream):
    env = proxy_env(running.settings.data_dir, upstream.base_url)
    key = running.create_key("acme", "admin")
    other = running.create_key("beta", "admin")
    api = httpx.Client(base_url=running.base_url, timeout=30)
    auth = {"Authorization": f"Bearer {key}"}
    assert (
        api.post(
            "/memories", headers=auth, json={"user": "u", "memories": [{"text": "a secret"}]}
        ).status_code
        == 200
    )
    with running.services.db.session() as session:
        rows = session.exec(select(MemoryRow).where(MemoryRow.tenant == "acme")).scalars()
        blobs = [(r.payload, item_aad("acme", r.id, r.version)) for r in rows]
    assert blobs
    data_dir = running.settings.data_dir

    def fresh_keyring() -> tuple[Database, Keyring]:
        """What anyone holding the master keys (and the database) can open, from scratch."""
        db = Database(running.settings.resolved_database_url)
        keys = MasterKeySource(path=data_dir / "master.key").current()
        return db, Keyring(db, keys.active, keys.previous)

    db, ring = fresh_keyring()
    assert all(
        json.loads(ring.cipher("acme").decrypt_text(blob, aad))["text"] == "a secret" for blob, aad in blobs
    )
    db.dispose()

    result = run_cli("tenants", "delete", "--tenant", "acme", "--yes", env=env)
    assert result.returncode == 0, result.stderr

    # Its keys no longer work; the other tenant is untouched.
    assert api.get("/memories", headers=auth, params={"user": "u"}).status_code == 401
    beta = api.post(
        "/memories",
        headers={"Authorization": f"Bearer {other}"},
        json={"user": "u", "memories": [{"text": "x"}]},
    )
    assert beta.status_code == 200
    # Its rows, vectors and files are gone too (defence in depth: they were unreadable already).
    with running.services.db.session() as session:
        assert not session.exec(select(MemoryRow).where(MemoryRow.tenant == "acme")).all()
    leftover = scan(data_dir, {f"acme payload {i}": blob[13:45] for i, (blob, _) in enumerate(blobs)})
    assert not leftover, describe(leftover)
    # Nothing of what it left can be decrypted by anyone holding the master keys now.
    db, ring = fresh_keyring()
    for blob, aad in blobs:
        with pytest.raises(DecryptionError):
            ring.cipher("acme").decrypt(blob, aad)
    db.dispose()
    # ... nor by the running proxy, once its cached copy of the key is revalidated (5 s in production).
    running.services.keyring.revalidate("acme")
    for blob, aad in blobs:
        with pytest.raises(DecryptionError):
            running.services.keyring.cipher("acme").decrypt(blob, aad)
    # The audit trail records the deletion and still verifies.
    assert run_cli("audit", "verify", "--tenant", "acme", env=env).returncode == 0
