"""MemReader: heuristic reading of user turns, slot detection, LLM extraction with tolerant parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memos.writeback.reader import (
    MAX_EXCHANGE_CHARS,
    MAX_EXCHANGE_TURNS,
    MAX_FACTS_PER_EXCHANGE,
    Exchange,
    MemReader,
    Slot,
    bound_turns,
    parse_facts,
    slots_of,
)

WHEN = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)


def exchange(*turns: tuple[int, dict], assistant: str = "Sure.", metadata: dict | None = None) -> Exchange:
    return Exchange(
        tenant="acme",
        owner="alice",
        request_id="req-7",
        session="sess-1",
        observed_at=WHEN,
        turns=list(turns),
        assistant_text=assistant,
        metadata=metadata or {},
    )


def user(text: str | list) -> dict:
    return {"role": "user", "content": text}


def test_user_turns_become_dated_memories_with_provenance() -> None:
    facts = MemReader().read_heuristic(
        exchange((3, user("I'm training for the Berlin marathon in September.")), metadata={"app": "coach"})
    )
    [fact] = facts
    assert fact.text == "I'm training for the Berlin marathon in September."
    assert fact.observed_at == WHEN and fact.valid_from == WHEN
    assert (fact.source.request_id, fact.source.message_index, fact.source.session) == ("req-7", 3, "sess-1")
    assert fact.source.metadata == {"app": "coach"}


@pytest.mark.parametrize(
    "text",
    ["hi", "Hello!", "thanks", "Thank you so much!", "ok", "okay, cool", "hi there", "bye", "👍", "   "],
)
def test_small_talk_is_skipped(text: str) -> None:
    assert MemReader().read_heuristic(exchange((0, user(text)))) == []


@pytest.mark.parametrize(
    "text",
    [
        "What is the capital of France?",
        "How do I sort a list in Python?",
        "Can you tell me a joke?",
        "What is my favourite colour?",
        "Do I live in Paris?",
        "Where do I live, Paris or Lyon?",
    ],
)
def test_questions_that_disclose_nothing_are_skipped(text: str) -> None:
    assert MemReader().read_heuristic(exchange((0, user(text)))) == []


@pytest.mark.parametrize(
    "text",
    [
        "I just moved, can you suggest a bakery near my flat in Lyon?",
        "My sister is visiting next week, any ideas for what to do?",
        "I live in Lyon, what should I visit?",
    ],
)
def test_a_question_that_discloses_something_is_kept(text: str) -> None:
    [fact] = MemReader().read_heuristic(exchange((0, user(text))))
    assert fact.text == text


def test_only_user_turns_are_read_and_small_talk_inside_a_turn_is_dropped() -> None:
    facts = MemReader().read_heuristic(
        exchange(
            (0, {"role": "assistant", "content": "I live in the cloud."}),
            (1, {"role": "system", "content": "My name is System."}),
            (2, user("Hi! My dog is called Rex. Thanks!")),
        )
    )
    assert [f.text for f in facts] == ["My dog is called Rex."]
    assert facts[0].slots == (Slot("name_of:dog", "rex"),)


def test_slot_statements_become_their_own_memories() -> None:
    facts = MemReader().read_heuristic(
        exchange((0, user("I love hiking in the Alps. I live in Paris. I have two cats.")))
    )
    assert [(f.text, f.slots) for f in facts] == [
        ("I live in Paris.", (Slot("home", "paris"),)),
        ("I love hiking in the Alps. I have two cats.", ()),
    ]


def test_content_parts_are_read() -> None:
    parts = [{"type": "text", "text": "My favourite colour is teal."}, {"type": "image_url", "image_url": {}}]
    [fact] = MemReader().read_heuristic(exchange((0, user(parts))))
    assert fact.text == "My favourite colour is teal."


def test_long_turns_are_cut() -> None:
    [fact] = MemReader().read_heuristic(exchange((0, user("I wrote this essay. " + "word " * 300))))
    assert len(fact.text) <= 1000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I live in Paris.", {"home": "paris"}),
        ("The user lives in Lyon, France.", {"home": "lyon"}),
        ("I moved to Berlin last month.", {"home": "berlin"}),
        ("The user moved from Paris to Lyon in 2025.", {"home": "lyon"}),
        ("I live in Paris and work at Acme Corp.", {"home": "paris", "employer": "acme corp"}),
        ("I work as a data scientist at Google", {"job": "data scientist", "employer": "google"}),
        ("My name is Alice Smith.", {"name": "alice smith"}),
        ("Call me Bob.", {"name": "bob"}),
        ("My favorite color is red", {"favourite:colour": "red"}),
        ("The user's favourite food is sushi.", {"favourite:food": "sushi"}),
        ("My dog's name is Rex", {"name_of:dog": "rex"}),
        ("I'm 34 years old", {"age": "34"}),
        ("I love jazz.", {}),
        ("I live in it", {}),
    ],
)
def test_slots(text: str, expected: dict) -> None:
    assert {s.key: s.value for s in slots_of(text)} == expected


def test_slot_conflicts() -> None:
    [paris] = slots_of("I live in Paris")
    [lyon] = slots_of("I live in Lyon")
    [paris_fr] = slots_of("I live in Paris, France")
    [no_paris] = slots_of("I no longer live in Paris")
    assert lyon.conflicts_with(paris)
    assert not paris_fr.conflicts_with(paris)  # the same place, said more precisely
    assert no_paris.conflicts_with(paris) and not no_paris.conflicts_with(lyon)
    assert not lyon.conflicts_with(slots_of("I work at Paris Labs")[0])  # another slot


# -- LLM mode -----------------------------------------------------------------------------------------


class Completer:
    """Answers from a script and records the prompts (a TextCompleter)."""

    def __init__(self, *answers: str | Exception) -> None:
        self.answers = list(answers)
        self.calls: list[tuple[str, list[dict]]] = []

    async def complete(self, model: str, messages: list[dict]) -> str:
        self.calls.append((model, messages))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_llm_mode_returns_dated_third_person_facts() -> None:
    completer = Completer(
        '```json\n{"facts": [{"text": "The user moved to Lyon.", "date": "2026-03-01", "importance": 0.9},'
        ' {"text": "The user has a dog named Rex.", "date": null}]}\n```'
    )
    ex = exchange(
        (0, {"role": "assistant", "content": "Where do you live?"}), (1, user("Lyon, since March 1."))
    )
    facts = await MemReader(completer).read(ex, "llm:extractor-small")
    assert [f.text for f in facts] == ["The user moved to Lyon.", "The user has a dog named Rex."]
    assert facts[0].valid_from == datetime(2026, 3, 1, tzinfo=UTC)
    assert facts[1].valid_from == WHEN  # undated facts date from the exchange
    assert facts[0].importance == 0.9
    assert facts[0].slots == (Slot("home", "lyon"),)
    assert facts[0].source.request_id == "req-7" and facts[0].source.message_index == 1
    [(model, prompt)] = completer.calls
    assert model == "extractor-small"
    assert "2026-03-14" in prompt[1]["content"] and "Where do you live?" in prompt[1]["content"]


@pytest.mark.parametrize(
    "answer",
    [
        '[{"fact": "The user likes tea."}]',
        'Here you go: {"memories": ["The user likes tea."]} Hope this helps!',
        '{"text": "The user likes tea."}',
        '["The user likes tea."]',
    ],
)
def test_llm_answers_are_parsed_tolerantly(answer: str) -> None:
    assert [t for t, _, _ in parse_facts(answer)] == ["The user likes tea."]


def test_an_empty_fact_list_is_a_valid_answer() -> None:
    assert parse_facts('{"facts": []}') == []


@pytest.mark.parametrize("answer", ["I cannot help with that.", RuntimeError("upstream down"), "{not json"])
async def test_llm_failure_falls_back_to_the_heuristic(answer) -> None:
    facts = await MemReader(Completer(answer)).read(exchange((0, user("I live in Oslo."))), "llm:m")
    assert [f.text for f in facts] == ["I live in Oslo."]


async def test_heuristic_extractor_never_calls_the_model() -> None:
    completer = Completer()
    facts = await MemReader(completer).read(exchange((0, user("I live in Oslo."))), "heuristic")
    assert [f.text for f in facts] == ["I live in Oslo."] and completer.calls == []


# -- what one exchange may yield -------------------------------------------------------------------------


def test_bound_turns_keeps_the_latest_user_turns_and_the_context_turn() -> None:
    context = (0, {"role": "assistant", "content": "Earlier answer."})
    turns = [context] + [(i, user(f"I have pet number {i}.")) for i in range(1, 2001)]
    kept = bound_turns(turns)
    assert kept[0] == context
    assert [i for i, _ in kept[1:]] == list(range(2001 - MAX_EXCHANGE_TURNS, 2001))


def test_bound_turns_caps_the_characters_newest_first_cutting_the_turn_that_crosses() -> None:
    half = "x" * (MAX_EXCHANGE_CHARS // 2)
    turns = [(1, user("older " + half)), (2, user(half)), (3, user([{"type": "text", "text": half}]))]
    kept = bound_turns(turns)
    assert [i for i, _ in kept] == [2, 3]  # the newest two fill the budget: the oldest goes
    assert sum(len(m["content"]) for _, m in kept) == MAX_EXCHANGE_CHARS
    [(_, alone)] = bound_turns([(0, user("y" * (MAX_EXCHANGE_CHARS + 5)))])
    assert alone["content"] == "y" * MAX_EXCHANGE_CHARS


async def test_a_huge_exchange_yields_at_most_the_capped_facts_the_newest() -> None:
    turns = [(i, user(f"My locker code number {i} is {i:05d}. I live in Town{i}.")) for i in range(10_000)]
    facts = await MemReader().read(exchange(*turns))
    assert len(facts) == MAX_FACTS_PER_EXCHANGE
    assert min(f.source.message_index for f in facts) >= 10_000 - MAX_EXCHANGE_TURNS
    assert facts[-1].source.message_index == 9_999  # the newest statement is kept


async def test_an_extractors_facts_are_capped_and_it_sees_only_the_bounded_turns() -> None:
    many = '{"facts": [' + ",".join(f'{{"text": "The user owns bike {i}."}}' for i in range(500)) + "]}"
    completer = Completer(many)
    turns = [(i, user(f"I own bike {i}.")) for i in range(3000)]
    facts = await MemReader(completer).read(exchange(*turns), "llm:m")
    assert len(facts) == MAX_FACTS_PER_EXCHANGE
    assert facts[-1].text == "The user owns bike 499."
    [(_, prompt)] = completer.calls
    transcript = prompt[-1]["content"]
    assert "I own bike 2999." in transcript
    oldest_kept = 3000 - MAX_EXCHANGE_TURNS
    assert f"I own bike {oldest_kept}." in transcript and f"I own bike {oldest_kept - 1}." not in transcript
