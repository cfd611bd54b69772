"""MemOperator over the real vault: duplicates collapse or merge, contradictions supersede (with history)."""

from __future__ import annotations

from datetime import UTC, datetime

from memos.item import Source, State
from memos.operator import MemOperator, parse_judgement
from memos.reader import Fact, slots_of
from tests.memos.vault_support import VaultEnv, db_url, env  # noqa: F401

T1 = datetime(2026, 1, 10, tzinfo=UTC)
T2 = datetime(2026, 2, 10, tzinfo=UTC)
T3 = datetime(2026, 3, 10, tzinfo=UTC)


def fact(text: str, when: datetime = T1, request: str = "req-1", index: int = 0) -> Fact:
    return Fact(
        text=text,
        observed_at=when,
        valid_from=when,
        source=Source(request_id=request, message_index=index, session="s1", metadata={"app": "t"}),
        slots=slots_of(text),
    )


def active_texts(env: VaultEnv, owner: str = "alice") -> list[str]:
    items, _ = env.vault.list("acme", owner, limit=100)
    return sorted(i.text for i in items if i.state == State.ACTIVE)


async def test_a_new_fact_is_added_with_its_provenance(env: VaultEnv) -> None:
    result = await MemOperator(env.vault).apply("acme", "alice", [fact("I have two cats.")])
    [mid] = result.added
    item = env.vault.get("acme", mid)
    assert item.text == "I have two cats." and item.observed_at == T1
    assert [(s.request_id, s.message_index, s.metadata) for s in item.sources] == [("req-1", 0, {"app": "t"})]


async def test_exact_duplicates_collapse_and_merge_sources(env: VaultEnv) -> None:
    op = MemOperator(env.vault)
    first = await op.apply("acme", "alice", [fact("I have two cats.")])
    second = await op.apply("acme", "alice", [fact("i have two cats", T2, request="req-2")])
    assert second.added == [] and second.merged == first.added
    item = env.vault.get("acme", first.added[0])
    assert [s.request_id for s in item.sources] == ["req-1", "req-2"]
    assert active_texts(env) == ["I have two cats."]


async def test_a_fact_repeated_in_many_chats_keeps_its_first_and_latest_sources(env: VaultEnv) -> None:
    from memos.item import MAX_SOURCES

    op = MemOperator(env.vault)
    for i in range(MAX_SOURCES + 15):
        await op.apply("acme", "alice", [fact("I have two cats.", request=f"req-{i}")])
    [item] = env.vault.list("acme", "alice", limit=10)[0]
    kept = [s.request_id for s in item.sources]
    assert kept == ["req-0", *[f"req-{i}" for i in range(16, MAX_SOURCES + 15)]]
    # exact duplicates added through the API are bounded the same way
    from memos.vault import NewMemory

    for i in range(MAX_SOURCES + 3):
        env.vault.add_many(
            "acme", "bob", [NewMemory(text="I cycle to work.", sources=[Source(request_id=f"r{i}")])]
        )
    [bobs] = env.vault.list("acme", "bob", limit=10)[0]
    assert [s.request_id for s in bobs.sources] == ["r0", *[f"r{i}" for i in range(4, MAX_SOURCES + 3)]]


async def test_reading_the_same_exchange_twice_changes_nothing(env: VaultEnv) -> None:
    op = MemOperator(env.vault)
    first = await op.apply("acme", "alice", [fact("I have two cats.")])
    version = env.vault.get("acme", first.added[0]).version
    again = await op.apply("acme", "alice", [fact("I have two cats.")])
    assert again.written == []
    assert env.vault.get("acme", first.added[0]).version == version


async def test_near_duplicates_merge(env: VaultEnv) -> None:
    op = MemOperator(env.vault, near_threshold=0.85)
    first = await op.apply("acme", "alice", [fact("I really love hiking in the Swiss Alps every summer")])
    [(_, cosine)] = env.vault.nearest(
        "acme", "alice", "I really love hiking in the Swiss Alps every summer!!", 1
    )
    assert cosine >= 0.85
    second = await op.apply(
        "acme", "alice", [fact("I really love hiking in the Swiss Alps every single summer", request="req-2")]
    )
    assert second.merged == first.added and second.added == []
    assert len(active_texts(env)) == 1


async def test_a_contradicted_memory_is_superseded_and_kept_in_history(env: VaultEnv) -> None:
    op = MemOperator(env.vault)
    paris = (await op.apply("acme", "alice", [fact("I live in Paris.", T1)])).added[0]
    result = await op.apply("acme", "alice", [fact("I moved to Lyon last month.", T2, request="req-2")])
    assert result.superseded == [paris]
    assert active_texts(env) == ["I moved to Lyon last month."]
    old = env.vault.get("acme", paris)
    assert old.state == State.SUPERSEDED and old.invalid_at == T2
    history = env.vault.history("acme", paris)
    assert [v.state for v in history][-1] == State.SUPERSEDED
    assert any(v.state == State.ACTIVE and v.text == "I live in Paris." for v in history)


async def test_the_same_value_said_differently_does_not_supersede(env: VaultEnv) -> None:
    op = MemOperator(env.vault)
    await op.apply("acme", "alice", [fact("I live in Paris.", T1)])
    result = await op.apply("acme", "alice", [fact("I live in Paris, France.", T2)])
    assert result.superseded == []


async def test_a_negation_supersedes_without_a_new_value(env: VaultEnv) -> None:
    op = MemOperator(env.vault)
    await op.apply("acme", "alice", [fact("I work at Acme Corp.", T1)])
    await op.apply("acme", "alice", [fact("I live in Oslo.", T1)])
    result = await op.apply("acme", "alice", [fact("I no longer work at Acme Corp.", T2)])
    assert len(result.superseded) == 1
    assert active_texts(env) == ["I live in Oslo.", "I no longer work at Acme Corp."]


async def test_an_older_statement_does_not_override_a_newer_one(env: VaultEnv) -> None:
    op = MemOperator(env.vault)
    lyon = (await op.apply("acme", "alice", [fact("I live in Lyon.", T3)])).added[0]
    late = await op.apply("acme", "alice", [fact("I live in Paris.", T1, request="req-old")])
    [paris] = late.added
    assert late.superseded == [paris]
    assert env.vault.get("acme", lyon).state == State.ACTIVE
    stale = env.vault.get("acme", paris)
    assert stale.state == State.SUPERSEDED and stale.invalid_at == T3


async def test_other_users_memories_are_never_touched(env: VaultEnv) -> None:
    op = MemOperator(env.vault)
    await op.apply("acme", "bob", [fact("I live in Paris.", T1)])
    result = await op.apply("acme", "alice", [fact("I live in Lyon.", T2)])
    assert result.superseded == []
    assert active_texts(env, "bob") == ["I live in Paris."]


class Judge:
    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.prompts: list[list[dict]] = []

    async def complete(self, model: str, messages: list[dict]) -> str:
        self.prompts.append(messages)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_llm_mode_supersedes_what_the_model_says_is_contradicted(env: VaultEnv) -> None:
    judge = Judge('```json\n{"contradicted": [1], "duplicate": null}\n```')
    op = MemOperator(env.vault, judge, llm_min_cosine=-1.0)
    veg = (await op.apply("acme", "alice", [fact("The user is vegetarian.")], extractor="llm:judge")).added
    result = await op.apply(
        "acme", "alice", [fact("The user eats steak every day.", T2)], extractor="llm:judge"
    )
    assert result.superseded == veg
    assert len(judge.prompts) == 1  # the first fact had no neighbours to judge
    assert "The user is vegetarian." in judge.prompts[-1][1]["content"]


async def test_llm_mode_falls_back_to_slots_when_the_model_fails(env: VaultEnv) -> None:
    op = MemOperator(env.vault, Judge(RuntimeError("down"), "no json here"), llm_min_cosine=-1.0)
    await op.apply("acme", "alice", [fact("The user lives in Paris.")], extractor="llm:judge")
    result = await op.apply("acme", "alice", [fact("The user lives in Rome.", T2)], extractor="llm:judge")
    assert len(result.superseded) == 1


def test_parse_judgement_is_tolerant() -> None:
    assert parse_judgement('Sure! {"contradicted": ["2", 9, 1], "duplicate": 2}', 3) == ([0, 1], None)
    assert parse_judgement('{"contradicts": 3, "duplicate": "1"}', 3) == ([2], 0)


async def test_retention_sets_an_expiry_on_new_memories(env: VaultEnv) -> None:
    result = await MemOperator(env.vault).apply(
        "acme", "alice", [fact("I have two cats.", T1)], retention_days=30
    )
    item = env.vault.get("acme", result.added[0])
    assert item.expires_at == datetime(2026, 2, 9, tzinfo=UTC)
