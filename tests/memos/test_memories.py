"""MemoryService: ACL on every call, tenant scoping, redaction before storage, audit, erasers."""

from __future__ import annotations

from typing import Any

import pytest

from memos.embeddings import MicroBatcher
from memos.governance.acl import AccessDenied
from memos.governance.policy import Policy
from memos.governance.principal import Principal, Role
from memos.memories import Entry, InvalidInput, MemoryNotFound, MemoryService, Patch
from memos.recall.retrieval import Retriever
from tests.memos.vault_support import VaultEnv, db_url, env  # noqa: F401 - fixtures

ADMIN = Principal("acme", "k-admin", Role.ADMIN)
APP = Principal("acme", "k-app", Role.APP)
READONLY = Principal("acme", "k-ro", Role.READONLY)
ALICE_KEY = Principal("acme", "k-alice", Role.USER, bound_user="alice")
OTHER_TENANT = Principal("globex", "k-g", Role.ADMIN)
POLICY = Policy()


class FakeAudit:
    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []

    def record(self, tenant: str, action: str, **fields: Any) -> None:
        self.entries.append({"tenant": tenant, "action": action, **fields})


class SyncEraser:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def erase_user(self, tenant: str, owner: str) -> int:
        self.calls.append((tenant, owner))
        return 3


class AsyncEraser:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def erase_user(self, tenant: str, owner: str) -> int:
        self.calls.append((tenant, owner))
        return 1


class BrokenEraser:
    def erase_user(self, tenant: str, owner: str) -> int:
        raise OSError("disk gone")


@pytest.fixture
def svc(env: VaultEnv) -> tuple[MemoryService, FakeAudit]:
    audit = FakeAudit()
    service = MemoryService(env.vault, Retriever(env.vault), MicroBatcher(env.embedder), audit)
    return service, audit


async def test_add_redacts_and_audits_ids(svc) -> None:
    service, audit = svc
    items = await service.add(
        APP,
        POLICY,
        "alice",
        [
            Entry(
                text="mail me at alice@example.com",
                metadata={"contact": "alice@example.com", "dia_id": "D1:1"},
            )
        ],
        request_id="req-1",
    )
    assert "alice@example.com" not in items[0].text
    assert "alice@example.com" not in str(items[0].sources[0].metadata)
    assert items[0].sources[0].metadata["dia_id"] == "D1:1"
    assert items[0].sources[0].request_id == "req-1"
    (entry,) = audit.entries
    assert entry["action"] == "memory.write" and entry["memory_ids"] == [items[0].id]
    assert entry["key_id"] == "k-app" and entry["user"] == "alice" and entry["level"] == POLICY.audit_level
    assert "example" not in str(entry)


async def test_acl_on_every_call(svc) -> None:
    service, _ = svc
    (mine,) = await service.add(APP, POLICY, "alice", [Entry(text="alice likes figs")])
    (theirs,) = await service.add(APP, POLICY, "bob", [Entry(text="bob likes dates")])
    with pytest.raises(AccessDenied):
        await service.add(READONLY, POLICY, "alice", [Entry(text="x")])
    with pytest.raises(AccessDenied):
        await service.delete(READONLY, POLICY, mine.id)
    assert (await service.get(READONLY, POLICY, mine.id)).id == mine.id
    # a user-bound key: its own user by default; another user's memory is "not found"
    assert [h.item.id for h in await service.search(ALICE_KEY, POLICY, None, "figs")] == [mine.id]
    with pytest.raises(AccessDenied):
        await service.search(ALICE_KEY, POLICY, "bob", "dates")
    for call in (service.get, service.history, service.delete):
        with pytest.raises(MemoryNotFound):
            await call(ALICE_KEY, POLICY, theirs.id)
    with pytest.raises(MemoryNotFound):
        await service.patch(ALICE_KEY, POLICY, theirs.id, Patch(text="hijack"))
    with pytest.raises(AccessDenied):
        await service.erase_user(ALICE_KEY, POLICY, "bob")


async def test_another_tenant_never_finds_anything(svc) -> None:
    service, _ = svc
    (item,) = await service.add(APP, POLICY, "alice", [Entry(text="alice hides the key under the mat")])
    for call in (service.get, service.history, service.delete):
        with pytest.raises(MemoryNotFound):
            await call(OTHER_TENANT, POLICY, item.id)
    assert await service.search(OTHER_TENANT, POLICY, "alice", "key under the mat") == []
    assert (await service.list(OTHER_TENANT, POLICY, "alice"))[0] == []
    assert (await service.get(APP, POLICY, item.id)).text == "alice hides the key under the mat"


async def test_patch_rollback_and_history(svc) -> None:
    service, audit = svc
    (item,) = await service.add(APP, POLICY, "alice", [Entry(text="alice works at a library")])
    updated = await service.patch(APP, POLICY, item.id, Patch(text="alice works at a museum", importance=0.8))
    assert updated.version == 2 and updated.importance == pytest.approx(0.8)
    hits = await service.search(APP, POLICY, "alice", "museum")
    assert hits[0].item.text == "alice works at a museum"
    rolled = await service.patch(APP, POLICY, item.id, Patch(rollback_to=1))
    assert rolled.version == 3 and rolled.text == "alice works at a library"
    with pytest.raises(InvalidInput) as err:
        await service.rollback(APP, POLICY, item.id, 42)
    assert err.value.param == "rollback_to"
    assert [v.version for v in await service.history(APP, POLICY, item.id)] == [1, 2, 3]
    assert [e["action"] for e in audit.entries].count("memory.update") == 2


async def test_invalid_input_names_the_field(svc) -> None:
    service, _ = svc
    with pytest.raises(InvalidInput) as err:
        await service.add(APP, POLICY, None, [Entry(text="x")])
    assert err.value.param == "user"
    with pytest.raises(InvalidInput) as err:
        await service.add(APP, POLICY, "alice", [])
    assert err.value.param == "memories"
    with pytest.raises(InvalidInput) as err:
        await service.search(APP, POLICY, "alice", "   ")
    assert err.value.param == "query"
    with pytest.raises(InvalidInput) as err:
        await service.list(APP, POLICY, "alice", cursor="nope")
    assert err.value.param == "cursor"


def with_erasers(service: MemoryService, *erasers: object) -> MemoryService:
    """The same service, erasing also there (after the vault), as memos.builder wires them."""
    return MemoryService(
        service.vault, service.retriever, service.embedder, service.audit, erasers=(service.vault, *erasers)
    )


async def test_erase_user_runs_every_eraser(svc) -> None:
    plain, audit = svc
    sync, asyn = SyncEraser(), AsyncEraser()
    service = with_erasers(plain, sync, asyn)
    await service.add(APP, POLICY, "alice", [Entry(text="one"), Entry(text="two")])
    counts = await service.erase_user(APP, POLICY, "alice")
    assert counts == {"MemVault": 2, "SyncEraser": 3, "AsyncEraser": 1}
    assert sync.calls == asyn.calls == [("acme", "alice")]
    assert audit.entries[-1]["action"] == "memory.erase"
    assert (await service.list(APP, POLICY, "alice"))[0] == []
    service = with_erasers(plain, sync, asyn, BrokenEraser())
    with pytest.raises(RuntimeError):
        await service.erase_user(APP, POLICY, "alice")
    assert len(sync.calls) == 2  # the others still ran


async def test_messages_entries_become_one_memory(svc) -> None:
    service, _ = svc
    (item,) = await service.add(
        APP,
        POLICY,
        "alice",
        [
            Entry(
                messages=[
                    {"role": "system", "content": "ignored"},
                    {"role": "user", "content": "I play oboe"},
                    {"role": "assistant", "content": "Nice!"},
                ]
            )
        ],
    )
    assert item.text == "user: I play oboe\nassistant: Nice!"


async def test_an_inferred_batch_with_a_bad_entry_changes_nothing(svc) -> None:
    service, audit = svc
    good = Entry(text="I live in Lisbon and I work as a nurse.")
    # The same good entry alone is written (so the batch below would have written something).
    written = await service.add(APP, POLICY, "bob", [good], infer=True)
    assert written
    for bad in (Entry(text="   "), Entry(text="x" * 20_001)):
        with pytest.raises(InvalidInput) as caught:
            await service.add(APP, POLICY, "alice", [good, bad], infer=True)
        assert caught.value.param == "memories[1]"  # answered as 400 invalid_request_error
    items, _ = await service.list(APP, POLICY, "alice")
    assert items == []
    assert not [e for e in audit.entries if e["action"] == "memory.write" and e["user"] == "alice"]


class LeakyEraser:
    def erase_user(self, tenant: str, owner: str) -> int:
        raise OSError("could not remove 'my PIN is 4711'")  # a message quoting memory text


async def test_a_failing_eraser_is_logged_without_its_message(svc, caplog) -> None:
    service = with_erasers(svc[0], LeakyEraser())
    with caplog.at_level("DEBUG", logger="memos"), pytest.raises(RuntimeError):
        await service.erase_user(APP, POLICY, "alice")
    assert "LeakyEraser" in caplog.text and "OSError" in caplog.text  # type and place are logged
    assert "4711" not in caplog.text  # the message (and a traceback ending in it) is not
