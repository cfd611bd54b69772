"""VaultChatMemory over the real vault, retriever, outbox, worker pipeline and audit log."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from memos.chat.contract import (
    ChatContext,
    FinishedExchange,
    MemoryMode,
    MemoryPlan,
    MemoryReason,
    MemorySwitch,
    MemoryUnavailable,
)
from memos.chat.memory import RetrieverRecall, VaultChatMemory, new_turns, query_of
from memos.governance.audit import AuditLog
from memos.governance.group_commit import GroupCommitAudit
from memos.governance.policy import FailMode, PlacementPolicy, Policy
from memos.governance.principal import Principal, Role
from memos.item import State
from memos.recall.retrieval import Retriever
from memos.writeback.operator import MemOperator
from memos.writeback.outbox import Ack, Outbox
from memos.writeback.reader import MemReader
from memos.writeback.worker import WriteBack
from tests.memos.vault_support import VaultEnv, db_url, env  # noqa: F401

APP = Principal(tenant="acme", key_id="k1", role=Role.APP)


class Policies:
    def __init__(self) -> None:
        self.policy = Policy()

    def get(self, tenant: str) -> Policy:
        return self.policy

    def set(self, **memory) -> None:
        self.policy = self.policy.model_copy(update={"memory": self.policy.memory.model_copy(update=memory)})


@dataclass
class Stack:
    env: VaultEnv
    memory: VaultChatMemory
    outbox: Outbox
    writeback: WriteBack
    policies: Policies
    audit: AuditLog

    def context(
        self, user: str | None, *, switch=MemorySwitch.ON, session: str | None = "s1", rid="req-1"
    ) -> ChatContext:
        """A request as the proxy hands it over, under the tenant's policy as it is now."""
        return ChatContext(
            principal=APP,
            policy=self.policies.policy,
            request_id=rid,
            user=user,
            session=session,
            requested_switch=switch,
            model="gpt-4o-mini",
        )

    async def drain(self) -> int:
        count = 0
        while records := self.outbox.claim():
            for record in records:
                await self.writeback.process(record)
                assert self.outbox.ack(record.id, record.claim_token) is Ack.DONE
                count += 1
        return count

    async def chat(self, user: str, text: str, *, switch=MemorySwitch.ON, session="s1", **body) -> MemoryPlan:
        """One exchange: prepare, (the upstream answers), complete."""
        ctx = self.context(user, switch=switch, session=session)
        request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **body}
        prepared = await self.memory.plan(ctx, request)
        await self.memory.complete(ctx, prepared, FinishedExchange(list(request["messages"]), "Noted."))
        return prepared

    async def ask(self, user: str, text: str, **kw) -> MemoryPlan:
        ctx = self.context(user, **kw)
        return await self.memory.plan(ctx, {"model": "m", "messages": [{"role": "user", "content": text}]})


async def embed_with(vault_env: VaultEnv):
    async def embed_one(text: str):
        return vault_env.embedder.embed([text])[0]

    return embed_one


@pytest.fixture
async def stack(env: VaultEnv) -> Stack:
    policies = Policies()
    audit = AuditLog.from_master(env.db, env.master)
    outbox = Outbox(env.db, env.keyring)
    recall = RetrieverRecall(Retriever(env.vault), await embed_with(env))
    memory = VaultChatMemory(recall=recall, outbox=outbox, audit=GroupCommitAudit(audit))
    writeback = WriteBack(MemReader(), MemOperator(env.vault), policies, audit)
    return Stack(env, memory, outbox, writeback, policies, audit)


def system_block(prepared: MemoryPlan) -> str:
    first = prepared.body["messages"][0]
    assert first["role"] == "system"
    return first["content"]


async def test_a_fact_told_once_is_injected_first_in_a_later_chat(stack: Stack) -> None:
    await stack.chat("alice", "I live in Lyon and my dog is called Rex.")
    assert await stack.drain() == 1
    prepared = await stack.ask("alice", "Where does my dog Rex live?")
    assert prepared.mode is MemoryMode.PLAINTEXT
    block = system_block(prepared)
    assert "my dog is called Rex" in block and "reference data" in block
    assert prepared.body["messages"][1] == {"role": "user", "content": "Where does my dog Rex live?"}
    assert len(prepared.injected_ids) >= 1
    # The injection is audited with the ids, never the text.
    entries, _ = stack.audit.list("acme", 50, None)
    [inject] = [e for e in entries if e.action == "memory.inject"]
    assert sorted(inject.memory_ids) == sorted(prepared.injected_ids)
    assert "Rex" not in str(inject.to_dict())


async def test_another_users_memories_are_never_injected(stack: Stack) -> None:
    await stack.chat("alice", "My secret project is called Bluebird.")
    await stack.drain()
    prepared = await stack.ask("bob", "What is my secret project called Bluebird?")
    assert prepared.injected_ids == ()
    assert all("Bluebird" not in m["content"] for m in prepared.body["messages"][:-1])


async def test_the_block_is_byte_stable_across_turns(stack: Stack) -> None:
    await stack.chat("alice", "I play the cello in an orchestra.")
    await stack.drain()
    first = await stack.ask("alice", "Which instrument do I play, cello?", rid="r1")
    second = await stack.ask("alice", "Remind me: cello or violin?", rid="r2")
    assert first.injected_ids == second.injected_ids
    assert system_block(first).encode() == system_block(second).encode()


async def test_the_block_follows_the_client_system_prompt_or_merges_into_it_by_policy(stack: Stack) -> None:
    await stack.chat("alice", "I play the cello in an orchestra.")
    await stack.drain()
    system = {"role": "system", "content": "You are a music tutor."}
    question = {"role": "user", "content": "Which instrument do I play, cello?"}
    body = {"model": "m", "messages": [system, question]}
    prepared = await stack.memory.plan(stack.context("alice"), body)
    sent = prepared.body["messages"]
    assert sent[0] is system and sent[2] is question and len(sent) == 3
    assert sent[1]["role"] == "system" and "cello" in sent[1]["content"]
    stack.policies.set(placement=PlacementPolicy(single_system_message=True))
    merged = (await stack.memory.plan(stack.context("alice"), body)).body["messages"]
    assert len(merged) == 2 and merged[1] is question
    assert merged[0]["content"] == "You are a music tutor.\n\n" + sent[1]["content"]


async def test_switches_and_policy(stack: Stack) -> None:
    await stack.chat("alice", "I collect vintage typewriters.")
    await stack.drain()
    question = "Do I collect vintage typewriters?"
    assert (await stack.ask("alice", question)).injected_ids
    for switch in (MemorySwitch.OFF, MemorySwitch.WRITE):
        prepared = await stack.ask("alice", question, switch=switch)
        assert prepared.injected_ids == () and prepared.mode is MemoryMode.OFF
        assert prepared.body["messages"] == [{"role": "user", "content": question}]
    # read: injects, but the exchange is not written back.
    prepared = await stack.chat("alice", "I also collect fountain pens.", switch=MemorySwitch.READ)
    assert prepared.injected_ids
    assert stack.outbox.pending() == 0
    # off writes nothing either; write writes.
    await stack.chat("alice", "I also collect stamps.", switch=MemorySwitch.OFF)
    assert stack.outbox.pending() == 0
    await stack.chat("alice", "I also collect coins.", switch=MemorySwitch.WRITE)
    assert stack.outbox.pending() == 1
    # The policy can turn either side off.
    stack.policies.set(inject=False)
    refused = await stack.ask("alice", question)
    assert refused.injected_ids == () and refused.reason is MemoryReason.POLICY
    assert (await stack.ask("alice", question, switch=MemorySwitch.WRITE)).reason is None  # as asked
    stack.policies.set(inject=True, write=False)
    await stack.chat("alice", "I also collect shells.")
    assert stack.outbox.pending() == 1


async def test_no_user_means_no_memory(stack: Stack) -> None:
    ctx = stack.context(None)
    body = {"messages": [{"role": "user", "content": "I live in Oslo."}]}
    prepared = await stack.memory.plan(ctx, body)
    assert prepared.body is body and prepared.reason is MemoryReason.NO_USER
    await stack.memory.complete(ctx, prepared, FinishedExchange(body["messages"], "ok"))
    assert stack.outbox.pending() == 0
    # Memory turned off by the client needs no reason.
    assert (await stack.memory.plan(stack.context(None, switch=MemorySwitch.OFF), body)).reason is None


async def test_the_token_budget_is_respected(stack: Stack) -> None:
    for i in range(30):
        await stack.chat("alice", f"I visited museum number {i} in Vienna and liked painting {i} a lot.")
    await stack.drain()
    stack.policies.set(token_budget=150, top_k=50)
    prepared = await stack.ask("alice", "Which museums in Vienna did I visit?")
    assert 0 < len(prepared.injected_ids) < 30
    assert len(system_block(prepared)) / 4 <= 150


async def test_superseded_memories_are_not_injected(stack: Stack) -> None:
    await stack.chat("alice", "I live in Paris.")
    await stack.drain()
    await stack.chat("alice", "I moved to Lyon.")
    await stack.drain()
    prepared = await stack.ask("alice", "Where do I live: Paris or Lyon?")
    block = system_block(prepared)
    assert "Lyon" in block and "Paris" not in block
    items, _ = stack.env.vault.list("acme", "alice", limit=10, states=list(State))
    paris = [i for i in items if "Paris" in i.text]
    assert paris and all(i.state == State.SUPERSEDED and i.invalid_at is not None for i in paris)


async def test_write_back_is_redacted_before_anything_is_stored(stack: Stack, tmp_path: Path) -> None:
    await stack.chat("alice", "My email is carol.canary@example.com and I like sailing.")
    [record] = stack.outbox.claim()
    assert "carol.canary@example.com" not in str(record.payload)
    assert "[EMAIL]" in record.payload["turns"][0][1]["content"]
    await stack.writeback.process(record)
    items, _ = stack.env.vault.list("acme", "alice", limit=10)
    assert [i.text for i in items] == ["My email is [EMAIL] and I like sailing."]


async def test_caller_metadata_and_session_become_provenance(stack: Stack) -> None:
    await stack.chat("alice", "I run a bakery in Porto.", session="sess-9", metadata={"app": "crm", "n": "x"})
    await stack.drain()
    items, _ = stack.env.vault.list("acme", "alice", limit=10)
    [source] = items[0].sources
    assert (source.request_id, source.message_index, source.session) == ("req-1", 0, "sess-9")
    assert source.metadata == {"app": "crm", "n": "x"}


class BrokenRecall:
    async def recall(self, *args, **kwargs):
        raise ConnectionError("vault unreachable")


async def test_fail_open_answers_without_memory(stack: Stack) -> None:
    memory = replace_recall(stack, BrokenRecall())
    body = {"messages": [{"role": "user", "content": "hello there, I like tea"}]}
    prepared = await memory.plan(stack.context("alice"), body)
    assert prepared.body is body and prepared.mode is MemoryMode.OFF
    assert prepared.reason is MemoryReason.VAULT_UNAVAILABLE


async def test_fail_closed_raises_memory_unavailable(stack: Stack) -> None:
    stack.policies.set(fail_mode=FailMode.CLOSED)
    memory = replace_recall(stack, BrokenRecall())
    with pytest.raises(MemoryUnavailable):
        await memory.plan(stack.context("alice"), {"messages": [{"role": "user", "content": "I like tea"}]})


class HeldRecall:
    """A recall that does not finish until released (a retrieval stuck behind load)."""

    def __init__(self) -> None:
        self.started, self.release = asyncio.Event(), asyncio.Event()

    async def recall(self, *args, **kwargs):
        self.started.set()
        await self.release.wait()
        return []


async def test_a_retrieval_over_its_time_is_answered_without_memory_saying_why(stack: Stack) -> None:
    memory = VaultChatMemory(recall=(held := HeldRecall()), outbox=stack.outbox, recall_timeout_s=0.05)
    body = {"messages": [{"role": "user", "content": "Which tea do I like?"}]}
    prepared = await memory.plan(stack.context("alice"), body)
    assert prepared.body is body and prepared.reason is MemoryReason.OVERLOADED
    assert memory.retrievals_running == 0  # the slot is given back
    stack.policies.set(fail_mode=FailMode.CLOSED)
    with pytest.raises(MemoryUnavailable):
        await memory.plan(stack.context("alice"), body)
    held.release.set()


async def test_retrievals_over_the_limit_are_shed_at_once(stack: Stack) -> None:
    memory = VaultChatMemory(recall=(held := HeldRecall()), outbox=stack.outbox, max_inflight=1)
    body = {"messages": [{"role": "user", "content": "Which tea do I like?"}]}
    first = asyncio.create_task(memory.plan(stack.context("alice"), body))
    await held.started.wait()
    shed = await memory.plan(stack.context("bob"), body)  # the one slot is taken: not queued
    assert shed.reason is MemoryReason.OVERLOADED
    held.release.set()
    assert (await first).reason is None


async def test_an_outbox_failure_fails_closed_or_open_by_policy(stack: Stack) -> None:
    ctx = stack.context("alice")
    body = {"messages": [{"role": "user", "content": "I like tea"}]}
    prepared = MemoryPlan(body=body, switch=MemorySwitch.ON)
    stack.env.db.dispose()
    broken = Outbox(type(stack.env.db)("sqlite:////nonexistent-dir/x/y.db"), stack.env.keyring)
    memory = VaultChatMemory(recall=BrokenRecall(), outbox=broken)
    await memory.complete(ctx, prepared, FinishedExchange(body["messages"], "ok"))  # open: swallowed
    stack.policies.set(fail_mode=FailMode.CLOSED)
    with pytest.raises(MemoryUnavailable):
        await memory.complete(stack.context("alice"), prepared, FinishedExchange(body["messages"], "ok"))


def replace_recall(stack: Stack, recall) -> VaultChatMemory:
    return VaultChatMemory(recall=recall, outbox=stack.outbox, audit=GroupCommitAudit(stack.audit))


async def test_only_the_new_turns_are_written_back(stack: Stack) -> None:
    ctx = stack.context("alice")
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "I live in Oslo."},
        {"role": "assistant", "content": "Nice! What do you do there?"},
        {"role": "user", "content": "I teach chemistry."},
    ]
    await stack.memory.complete(
        ctx,
        MemoryPlan(body={"messages": messages}, switch=MemorySwitch.ON),
        FinishedExchange(messages, "Cool."),
    )
    [record] = stack.outbox.claim()
    assert record.payload["turns"] == [
        [2, {"role": "assistant", "content": "Nice! What do you do there?"}],
        [3, {"role": "user", "content": "I teach chemistry."}],
    ]
    assert record.payload["assistant_text"] == "Cool."


def test_query_and_turn_helpers() -> None:
    messages = [
        {"role": "user", "content": "I have a cat."},
        {"role": "assistant", "content": "Nice."},
        {"role": "user", "content": [{"type": "text", "text": "Her name?"}]},
    ]
    assert query_of(messages) == "I have a cat. Her name?"
    assert [i for i, _ in new_turns(messages)] == [1, 2]
    assert query_of([{"role": "system", "content": "x"}]) == ""


def test_dates_in_the_block_are_when_memories_were_recorded() -> None:
    from memos.item import MemoryItem
    from memos.recall.injection import rendered

    item = MemoryItem(id="m", tenant="t", owner="o", text="x", observed_at=datetime(2025, 5, 1, tzinfo=UTC))
    assert rendered(item).when == datetime(2025, 5, 1, tzinfo=UTC)
    assert (
        rendered(replace(item, observed_at=None, created_at=datetime(2025, 6, 1, tzinfo=UTC))).when.month == 6
    )


class CountingEmbedder:
    """The vault's embedder, counting its calls (how many texts went in each)."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, []
        self.name, self.dim = inner.name, inner.dim

    def embed(self, texts):
        self.calls.append(list(texts))
        return self.inner.embed(texts)


async def told(stack: Stack, rid: str, text: str) -> None:
    ctx = stack.context("alice", rid=rid)
    request = {"model": "m", "messages": [{"role": "user", "content": text}]}
    await stack.memory.complete(
        ctx, MemoryPlan(body=request, switch=MemorySwitch.ON), FinishedExchange(request["messages"], "Ok.")
    )


async def test_a_users_rows_are_written_back_as_one_group(stack: Stack) -> None:
    """process_group: later rows see earlier ones (a move supersedes, moving back supersedes the move, a
    repeat merges), every row is audited with its own request id, and the group's facts are embedded in
    one call."""
    await told(stack, "req-1", "I live in Paris.")
    await told(stack, "req-2", "I moved to Lyon last month.")
    await told(stack, "req-3", "I live in Paris.")
    await told(stack, "req-4", "My sister Ana plays the cello.")
    await told(stack, "req-5", "My sister Ana plays the cello.")
    records = stack.outbox.claim()
    assert [r.request_id for r in records] == ["req-1", "req-2", "req-3", "req-4", "req-5"]
    counting = CountingEmbedder(stack.env.vault.embedder)
    stack.env.vault.embedder = counting
    outcome = await stack.writeback.process_group(records)
    assert (outcome.done, outcome.error) == (5, None)
    assert len(counting.calls) == 1 and len(counting.calls[0]) == 3  # three distinct texts
    items, _ = stack.env.vault.list("acme", "alice", limit=10, states=list(State))
    states = sorted((i.created_at, i.text, i.state) for i in items)
    assert [(text, state) for _, text, state in states] == [
        ("I live in Paris.", State.SUPERSEDED),
        ("I moved to Lyon last month.", State.SUPERSEDED),
        ("I live in Paris.", State.ACTIVE),
        ("My sister Ana plays the cello.", State.ACTIVE),
    ]
    [cello] = [i for i in items if "cello" in i.text]
    assert [s.request_id for s in cello.sources] == ["req-4", "req-5"]
    entries, _ = stack.audit.list("acme", 50, None)
    writes = [e.request_id for e in entries if e.action == "memory.write"]
    assert writes == ["req-1", "req-2", "req-3", "req-4", "req-5"]


async def test_a_group_stops_at_a_row_that_fails_and_keeps_what_came_before(stack: Stack) -> None:
    await told(stack, "req-1", "I keep bees in my garden.")
    stack.outbox.enqueue("acme", "alice", "req-2", {"turns": [["not an index", {"role": "user"}]]})
    await told(stack, "req-3", "I collect vintage cameras.")
    records = stack.outbox.claim()
    outcome = await stack.writeback.process_group(records)
    assert outcome.done == 1 and isinstance(outcome.error, ValueError)
    items, _ = stack.env.vault.list("acme", "alice", limit=10)
    assert [i.text for i in items] == ["I keep bees in my garden."]
    entries, _ = stack.audit.list("acme", 50, None)
    assert [e.request_id for e in entries if e.action == "memory.write"] == ["req-1"]


class SeenWriteBack:
    """A MemoryObserver that keeps what the write-back reported."""

    def __init__(self) -> None:
        self.written: list[tuple[str, int, int, int]] = []
        self.failed: list[tuple[str, str]] = []

    def recalled(self, tenant: str, seconds: float) -> None: ...

    def query_embedded(self, batch: int, seconds: float) -> None: ...

    def written_back(self, tenant: str, *, added: int, merged: int, superseded: int) -> None:
        self.written.append((tenant, added, merged, superseded))

    def write_back_failed(self, tenant: str, error: str) -> None:
        self.failed.append((tenant, error))


async def test_write_back_reports_what_it_wrote_and_what_failed(stack: Stack, tmp_path: Path) -> None:
    from memos.db import Database
    from memos.storage.vault import MemVault
    from memos.storage.vectors import VectorIndex

    seen = SeenWriteBack()
    operator = MemOperator(stack.env.vault)
    writeback = WriteBack(MemReader(), operator, stack.policies, stack.audit, observer=seen)
    await stack.chat("alice", "I live in Lyon and my dog is called Rex.")
    await stack.chat("alice", "I live in Lyon and my dog is called Rex.")  # the same again: nothing new
    records = stack.outbox.claim()
    assert (await writeback.process_group(records)).error is None
    assert [(t, a > 0) for t, a, _, _ in seen.written] == [("acme", True), ("acme", False)]
    assert seen.failed == []

    # The vault's database is gone: the exchange fails, is reported, and stays for a retry.
    unreachable = Database(f"sqlite:///{tmp_path / 'gone.db'}")  # no tables: every write fails
    broken = MemVault(unreachable, stack.env.keyring, VectorIndex(str(tmp_path / "v")), stack.env.embedder)
    failing = WriteBack(MemReader(), MemOperator(broken), stack.policies, stack.audit, observer=seen)
    await stack.chat("bob", "I play the cello.")
    outcome = await failing.process_group(stack.outbox.claim())
    assert outcome.error is not None and outcome.done == 0
    assert seen.failed == [("acme", type(outcome.error).__name__)]
    unreachable.dispose()
