"""`memos-proxy export` / `import` as real subprocesses against a data dir filled through the real
proxy's memory API: a sealed round trip into another tenant keeps text, sources, states and history
and is searchable there; importing twice adds nothing; the sealed file holds no memory text and has
mode 0600; a wrong passphrase, a damaged or truncated file change nothing; both sides are audited
with ids only."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx
import pytest

from tests.support.proxy import RunningProxy, proxy_env, run_cli

PASS = "correct horse battery staple"
# Distinctive words, so finding them anywhere means the text leaked.
ALICE = [
    "Alice keeps a tortoise called Quibbleworth",
    "Alice takes marzipanic lessons on Tuesdays",
    "Alice once visited Zephyrine harbour",
]
ALICE_V2 = "Alice keeps a tortoise called Quibbleworth Junior"
BOB = "Bob collects glockenspar records"
GONE = "Alice deleted the trundlewick note"
SECRET_META = "meta-sentinel-vorpalquill"


def _client(running: RunningProxy, key: str) -> httpx.Client:
    return httpx.Client(base_url=running.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60)


def _add(api: httpx.Client, user: str, *texts: str) -> list[dict]:
    reply = api.post(
        "/memories",
        json={
            "user": user,
            "memories": [{"text": t, "metadata": {"n": i, "tag": SECRET_META}} for i, t in enumerate(texts)],
        },
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def _audit(api: httpx.Client) -> list[dict]:
    reply = api.get("/audit", params={"limit": 1000})
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def _search(api: httpx.Client, user: str, query: str) -> list[dict]:
    reply = api.post("/memories/search", json={"user": user, "query": query, "top_k": 10})
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


def _listed(api: httpx.Client, user: str) -> list[dict]:
    reply = api.get("/memories", params={"user": user, "limit": 100})
    assert reply.status_code == 200, reply.text
    return reply.json()["data"]


class Setup:
    def __init__(self, running: RunningProxy, env: dict[str, str], tmp: Path) -> None:
        self.running = running
        self.env = env
        self.tmp = tmp
        self.acme = _client(running, running.create_key("acme", "admin"))
        self.globex = _client(running, running.create_key("globex", "admin"))
        alice = _add(self.acme, "alice", *ALICE)
        self.bob_id = _add(self.acme, "bob", BOB)[0]["id"]
        self.gone_id = _add(self.acme, "alice", GONE)[0]["id"]
        self.changed_id, self.archived_id, self.kept_id = (i["id"] for i in alice)
        assert self.acme.patch(f"/memories/{self.changed_id}", json={"text": ALICE_V2}).status_code == 200
        reply = self.acme.patch(f"/memories/{self.archived_id}", json={"state": "archived"})
        assert reply.status_code == 200, reply.text
        assert self.acme.delete(f"/memories/{self.gone_id}").status_code in (200, 204)
        self.exported_ids = {self.changed_id, self.archived_id, self.kept_id, self.bob_id}

    def cli(self, *args: str, **extra_env: str):
        return run_cli(*args, env={**self.env, **extra_env})

    def export(self, out: Path, *args: str):
        return self.cli("export", "--tenant", "acme", "--out", str(out), *args, MEMOS_TEST_PASS=PASS)

    def import_sealed(self, tenant: str, path: Path):
        """`memos-proxy import` of a sealed file into `tenant`, with the right passphrase."""
        args = ["--in", str(path), "--passphrase-env", "MEMOS_TEST_PASS"]
        return self.cli("import", "--tenant", tenant, *args, MEMOS_TEST_PASS=PASS)

    def imported(self, tenant_api: httpx.Client) -> dict[str, dict]:
        """The memories an import wrote (ids from the audit trail), by text."""
        ids = [
            i
            for e in _audit(tenant_api)
            if e["action"] == "memory.write" and e["detail"].get("via") == "import"
            for i in e["memory_ids"]
        ]
        items = [tenant_api.get(f"/memories/{i}").json() for i in ids]
        return {item["memory"]: item for item in items}


@pytest.fixture
def setup(proxy, upstream, tmp_path: Path) -> Setup:
    running = proxy(embedding_model="hash", key_cache_ttl_s=0)
    env = proxy_env(running.settings.data_dir, upstream.base_url, MEMOS_EMBEDDING_MODEL="hash")
    return Setup(running, env, tmp_path)


def test_sealed_round_trip_into_another_tenant(setup: Setup) -> None:
    out = setup.tmp / "acme.export"
    done = setup.export(out, "--passphrase-env", "MEMOS_TEST_PASS")
    assert done.returncode == 0, done.stderr
    assert "exported 4 memories (6 versions)" in done.stdout
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600

    # Sealed: neither text nor metadata is in the file, in any common encoding.
    raw = out.read_bytes()
    for text in [*ALICE, ALICE_V2, BOB, SECRET_META]:
        for word in text.split():
            if len(word) > 8:
                for form in (word.encode(), word.encode("utf-16-le"), word.lower().encode()):
                    assert form not in raw, word
    for line in [*ALICE, BOB, GONE]:
        assert line not in done.stdout + done.stderr

    # The export is audited in the source tenant with the exported ids, and no text.
    exports = [e for e in _audit(setup.acme) if e["action"] == "memory.export"]
    assert len(exports) == 1
    assert set(exports[0]["memory_ids"]) == setup.exported_ids
    assert exports[0]["detail"]["encrypted"] is True and exports[0]["detail"]["memories"] == 4
    assert all(w not in json.dumps(_audit(setup.acme)) for w in ("Quibbleworth", "glockenspar", SECRET_META))

    # Import into another tenant.
    done = setup.import_sealed("globex", out)
    assert done.returncode == 0, done.stderr
    assert "imported 4 memories (6 versions) into tenant globex; 0 already there" in done.stdout

    # Searchable there (re-embedded, re-indexed, readable under globex's data key).
    hits = _search(setup.globex, "alice", "tortoise Quibbleworth")
    assert hits and hits[0]["memory"] == ALICE_V2
    assert hits[0]["sources"][0]["metadata"] == {"n": 0, "tag": SECRET_META}
    assert hits[0]["id"] != setup.changed_id  # a new id in the new tenant
    assert [h["memory"] for h in _search(setup.globex, "bob", "glockenspar records")][:1] == [BOB]
    assert {i["memory"] for i in _listed(setup.globex, "alice")} == {ALICE_V2, ALICE[2]}
    assert all(GONE not in h["memory"] for h in _search(setup.globex, "alice", "trundlewick note"))

    # History and states are those of the source.
    source_history = setup.acme.get(f"/memories/{setup.changed_id}/history").json()["data"]
    target_history = setup.globex.get(f"/memories/{hits[0]['id']}/history").json()["data"]
    assert (
        [(h["version"], h["memory"], h["state"]) for h in target_history]
        == [(h["version"], h["memory"], h["state"]) for h in source_history]
        == [(1, ALICE[0], "active"), (2, ALICE_V2, "active")]
    )
    imported = setup.imported(setup.globex)
    assert set(imported) == {ALICE_V2, ALICE[1], ALICE[2], BOB}
    archived = imported[ALICE[1]]
    assert archived["state"] == "archived" and archived["version"] == 2
    assert archived["observed_at"] == setup.acme.get(f"/memories/{setup.archived_id}").json()["observed_at"]
    assert "Alice takes" not in json.dumps(
        [h["memory"] for h in _search(setup.globex, "alice", "marzipanic")]
    )

    # The other tenant's copy is independent: erasing nothing in acme, acme still has its own.
    assert setup.acme.get(f"/memories/{setup.changed_id}").json()["memory"] == ALICE_V2

    # Importing the same file again adds nothing.
    again = setup.import_sealed("globex", out)
    assert again.returncode == 0, again.stderr
    assert "imported 0 memories (0 versions) into tenant globex; 4 already there" in again.stdout
    assert len(_listed(setup.globex, "alice")) == 2 and len(_listed(setup.globex, "bob")) == 1

    # Importing back into the source tenant recognises every memory as already there.
    back = setup.import_sealed("acme", out)
    assert back.returncode == 0 and "imported 0 memories" in back.stdout, back.stderr

    # The import is audited as writes in the target tenant, ids only; both chains verify.
    writes = [e for e in _audit(setup.globex) if e["action"] == "memory.write"]
    assert {e["user"] for e in writes} == {"alice", "bob"}
    assert all(e["detail"]["via"] == "import" for e in writes)
    assert "Quibbleworth" not in json.dumps(_audit(setup.globex))
    for tenant in ("acme", "globex"):
        verify = setup.cli("audit", "verify", "--tenant", tenant)
        assert verify.returncode == 0, verify.stderr


def _state(setup: Setup) -> tuple:
    """globex's memories and both tenants' audit trails, less the reads this check itself makes."""

    def trail(api: httpx.Client) -> list[tuple]:
        return [(e["action"], e["memory_ids"]) for e in _audit(api) if e["action"] != "memory.read"]

    return (
        _listed(setup.globex, "alice"),
        _listed(setup.globex, "bob"),
        trail(setup.globex),
        trail(setup.acme),
    )


def test_wrong_passphrase_or_damaged_file_changes_nothing(setup: Setup) -> None:
    out = setup.tmp / "acme.export"
    assert setup.export(out, "--passphrase-env", "MEMOS_TEST_PASS").returncode == 0
    before = _state(setup)

    def import_(path: Path, passphrase: str | None = PASS):
        args = ["import", "--tenant", "globex", "--in", str(path)]
        if passphrase is not None:
            args += ["--passphrase-env", "MEMOS_TEST_PASS"]
        return setup.cli(*args, MEMOS_TEST_PASS=passphrase or "")

    wrong = import_(out, "not the passphrase at all")
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr
    assert "nothing was imported" in wrong.stderr

    missing = import_(out, None)
    assert missing.returncode != 0 and "passphrase" in missing.stderr

    lines = out.read_text().splitlines()
    truncated = setup.tmp / "truncated.export"
    truncated.write_text("\n".join(lines[:-1]) + "\n")
    assert "truncated" in import_(truncated).stderr

    # One altered record, after valid ones: the whole import is refused, not just that record.
    damaged = setup.tmp / "damaged.export"
    last = lines[-2]
    flipped = last[:20] + ("A" if last[20] != "A" else "B") + last[21:]
    damaged.write_text("\n".join([*lines[:-2], flipped, lines[-1]]) + "\n")
    result = import_(damaged)
    assert result.returncode == 1 and "damaged" in result.stderr

    # Two records swapped: detected (each record is bound to its position).
    swapped = setup.tmp / "swapped.export"
    swapped.write_text("\n".join([lines[0], lines[2], lines[1], *lines[3:]]) + "\n")
    assert import_(swapped).returncode == 1

    garbage = setup.tmp / "garbage.export"
    garbage.write_text('{"hello": "world"}\n')
    result = import_(garbage)
    assert result.returncode == 1 and "not a memos export" in result.stderr

    assert _state(setup) == before


def test_plaintext_needs_to_be_asked_for_and_user_filter(setup: Setup) -> None:
    out = setup.tmp / "bob.jsonl"
    refused = setup.cli("export", "--tenant", "acme", "--user", "bob", "--out", str(out))
    assert refused.returncode == 2 and not out.exists()
    short = setup.cli(
        "export", "--tenant", "acme", "--out", str(out), "--passphrase-env", "SHORT", SHORT="abc"
    )
    assert short.returncode == 2 and not out.exists()

    done = setup.cli("export", "--tenant", "acme", "--user", "bob", "--out", str(out), "--plaintext")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["format"] == "memos-export" and records[0]["encryption"] is None
    memories = [r for r in records[1:] if r.get("type") == "memory"]
    assert [(m["owner"], m["text"], m["state"]) for m in memories] == [("bob", BOB, "active")]
    assert memories[0]["versions"][0]["sources"][0]["metadata"] == {"n": 0, "tag": SECRET_META}

    exports = [e for e in _audit(setup.acme) if e["action"] == "memory.export"]
    assert exports[-1]["user"] == "bob" and exports[-1]["memory_ids"] == [setup.bob_id]
    assert exports[-1]["detail"]["encrypted"] is False

    done = setup.cli("import", "--tenant", "globex", "--in", str(out))
    assert done.returncode == 0, done.stderr
    assert [i["memory"] for i in _listed(setup.globex, "bob")] == [BOB]
    assert _listed(setup.globex, "alice") == []
