"""MemOperator over the real vault: duplicates collapse or merge, contradictions supersede (with history)."""

from __future__ import annotations

from datetime import UTC, datetime

from memos.item import Source, State, bounded_sources, omitted_count, omitted_sources
from memos.writeback.operator import MemOperator, content_words, mergeable, parse_judgement
from memos.writeback.reader import Fact, slots_of
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
    from memos.item import MAX_SOURCES, OMITTED_SOURCES

    op = MemOperator(env.vault)
    total = MAX_SOURCES + 15
    for i in range(total):
        await op.apply("acme", "alice", [fact("I have two cats.", request=f"req-{i}")])
    [item] = env.vault.list("acme", "alice", limit=10)[0]
    assert len(item.sources) == MAX_SOURCES
    first, marker, *latest = item.sources
    # the first, a marker counting those left out, the latest: every source accounted for
    assert first.request_id == "req-0"
    assert marker.request_id is None and marker.metadata == {OMITTED_SOURCES: total - 1 - len(latest)}
    assert [s.request_id for s in latest] == [f"req-{i}" for i in range(total - len(latest), total)]
    assert 1 + omitted_sources(item.sources) + len(latest) == total
    # exact duplicates added through the API are bounded the same way
    from memos.storage.batch import NewMemory

    for i in range(MAX_SOURCES + 3):
        env.vault.add_many(
            "acme", "bob", [NewMemory(text="I cycle to work.", sources=[Source(request_id=f"r{i}")])]
        )
    [bobs] = env.vault.list("acme", "bob", limit=10)[0]
    kept = [s.request_id for s in bobs.sources if omitted_count(s) is None]
    assert len(bobs.sources) == MAX_SOURCES
    assert kept == ["r0", *[f"r{i}" for i in range(MAX_SOURCES + 3 - (MAX_SOURCES - 2), MAX_SOURCES + 3)]]
    assert omitted_sources(bobs.sources) + len(kept) == MAX_SOURCES + 3


def test_bounded_sources_counts_what_it_leaves_out() -> None:
    from memos.item import MAX_SOURCES

    few = [Source(request_id=f"r{i}") for i in range(MAX_SOURCES)]
    assert bounded_sources(few) is few  # nothing to leave out: the list as it is
    many = bounded_sources([*few, Source(request_id="new")])
    assert len(many) == MAX_SOURCES and omitted_count(many[1]) == 2
    # bounding again adds to the count instead of losing it
    again = bounded_sources([*many, Source(request_id="newer")])
    assert len(again) == MAX_SOURCES and omitted_sources(again) == 3
    assert [s.request_id for s in again][-2:] == ["new", "newer"]
    # a caller's metadata that merely mentions the key is a real source, not a count
    assert omitted_count(Source(request_id="x", metadata={"memos.omitted_sources": 4})) is None
    assert omitted_count(Source(metadata={"memos.omitted_sources": True})) is None


async def test_a_new_source_without_a_request_is_not_taken_for_the_marker(env: VaultEnv) -> None:
    from memos.item import MAX_SOURCES

    op = MemOperator(env.vault)
    for i in range(MAX_SOURCES + 1):
        await op.apply("acme", "alice", [fact("I have two cats.", request=f"req-{i}")])
    bare = Fact(text="I have two cats.", observed_at=T2, valid_from=T2, source=Source())
    result = await op.apply("acme", "alice", [bare])
    [item] = env.vault.list("acme", "alice", limit=10)[0]
    assert result.merged == [item.id] and item.sources[-1] == Source()
    assert omitted_sources(item.sources) == 3


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
    # the memory said less than the fact: it takes the fuller wording, the old one stays in history
    assert active_texts(env) == ["I really love hiking in the Swiss Alps every single summer"]
    history = env.vault.history("acme", first.added[0])
    assert history[0].text == "I really love hiking in the Swiss Alps every summer"


# The merge rule: cosine is only a precondition. HashEmbedder scores these pairs 0.67-0.90, so the
# operators below use a threshold of 0.6 and each test first checks that the pair clears it.
LOW = 0.6


async def assert_similar(env: VaultEnv, text: str, owner: str = "alice") -> None:
    [(_, cosine)] = env.vault.nearest("acme", owner, text, 1)
    assert cosine >= LOW, "the pair must clear the cosine threshold for the test to mean anything"


async def test_a_paraphrase_that_adds_nothing_merges_without_changing_the_text(env: VaultEnv) -> None:
    op = MemOperator(env.vault, near_threshold=LOW)
    first = await op.apply("acme", "alice", [fact("I really love hiking in the Swiss Alps every summer")])
    again = "Every summer I really love hiking in the Swiss Alps."
    await assert_similar(env, again)
    second = await op.apply("acme", "alice", [fact(again, T2, request="req-2")])
    assert second.merged == first.added and second.added == []
    assert active_texts(env) == ["I really love hiking in the Swiss Alps every summer"]
    assert [s.request_id for s in env.vault.get("acme", first.added[0]).sources] == ["req-1", "req-2"]


async def test_facts_that_differ_in_one_number_code_name_or_date_all_stay(env: VaultEnv) -> None:
    op = MemOperator(env.vault, near_threshold=LOW)
    pairs = [
        ("Flight AZ610 leaves from gate B12.", "Flight AZ611 leaves from gate B14."),
        ("Remember that parcel 3 has code kq003x.", "Remember that parcel 4 has code kq004x."),
        ("My sister Anna arrives on 2026-03-10.", "My sister Anna arrives on 2026-03-11."),
        ("Dinner with Marco on Friday at the usual place.", "Dinner with Paolo on Friday at the usual place"),
        ("I moved in May.", "I moved in June."),
        ("I have two cats.", "I have three cats."),
    ]
    for n, (one, other) in enumerate(pairs):
        owner = f"user-{n}"
        first = await op.apply("acme", owner, [fact(one)])
        await assert_similar(env, other, owner)
        second = await op.apply("acme", owner, [fact(other, T2, request="req-2")])
        assert second.merged == [] and len(second.added) == 1, (one, other)
        assert active_texts(env, owner) == sorted([one, other])
        assert env.vault.get("acme", first.added[0]).version == 1  # untouched


async def test_a_negated_statement_is_not_merged_into_the_plain_one(env: VaultEnv) -> None:
    op = MemOperator(env.vault, near_threshold=LOW)
    await op.apply("acme", "alice", [fact("I like strong black coffee.")])
    await assert_similar(env, "I don't like strong black coffee.")
    result = await op.apply("acme", "alice", [fact("I don't like strong black coffee.", T2, request="req-2")])
    assert result.merged == [] and len(result.added) == 1


async def test_a_duplicate_the_model_names_is_held_to_the_merge_rule(env: VaultEnv) -> None:
    judge = Judge('{"contradicted": [], "duplicate": 1}')
    op = MemOperator(env.vault, judge, llm_min_cosine=-1.0)
    await op.apply("acme", "alice", [fact("Flight AZ610 leaves from gate B12.")], extractor="llm:judge")
    result = await op.apply(
        "acme", "alice", [fact("Flight AZ611 leaves from gate B14.", T2)], extractor="llm:judge"
    )
    assert result.merged == [] and len(result.added) == 1
    assert len(active_texts(env)) == 2


def test_content_words() -> None:
    flight = content_words("Flight AZ611 leaves from gate B14.")
    assert flight.words == {"flight", "az611", "leave", "gate", "b14"} and not flight.negated
    # dates, times and decimals stay whole; plurals and possessives fold; stopwords go
    assert content_words("Alice's cats eat at 10:30 on 2026-03-10, 4.5 cans.").words == {
        "alice", "cat", "eat", "10:30", "2026-03-10", "4.5", "can",
    }  # fmt: skip
    # a capitalised word inside a sentence is a name, even when it is also a common word
    assert "may" in content_words("I moved in May.").words
    assert content_words("I don't like tea.").negated and content_words("I no longer smoke.").negated
    assert mergeable("I have two cats.", "i have 2 cats") is False
    assert mergeable("I have two cats.", "I have two cats!") is True
    assert mergeable("Parcel 3 has code kq003x.", "Parcel 3 has code kq004x.") is False
    assert mergeable("The gate is B14.", "The gate is B14 in terminal 2.") is True  # one says more


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
