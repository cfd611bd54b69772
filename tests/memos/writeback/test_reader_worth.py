"""What the reader keeps: speaker attribution (a message's `name`) and what is not a memory (issue #13)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from memos.item import MemoryItem, Source
from memos.writeback.operator import memory_slots
from memos.writeback.reader import (
    DOCUMENT_CHARS,
    Exchange,
    MemReader,
    Slot,
    not_a_memory,
    speaker_of,
    user_words,
)

WHEN = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)

# Open WebUI's own generation requests (its default templates, as a chat body's one user message).
_HISTORY = "<chat_history>\nUSER: I adopted a cat named Miso.\nASSISTANT: Lovely!\n</chat_history>"
OPEN_WEBUI_TASKS = [
    "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.\n"
    "### Guidelines:\n- The title should clearly represent the main theme or subject of the conversation.\n"
    '### Output:\nJSON format: { "title": "your concise title here" }\n### Chat History:\n' + _HISTORY,
    "### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history, along with 1-3 "
    "more specific subtopic tags.\n### Guidelines:\n- Start with high-level domains (e.g. Science, "
    'Technology)\n### Output:\nJSON format: { "tags": ["tag1", "tag2", "tag3"] }\n### Chat History:\n'
    + _HISTORY,
    "### Task:\nSuggest 3-5 relevant follow-up questions or prompts that the user might naturally ask next "
    "in this conversation as a **user**, based on the chat history, to help continue or deepen the "
    'discussion.\n### Output:\nJSON format: { "follow_ups": ["Question 1?", "Question 2?"] }\n'
    "### Chat History:\n" + _HISTORY,
]


def exchange(*turns: tuple[int, dict], owner: str = "alice") -> Exchange:
    return Exchange(
        tenant="acme", owner=owner, request_id="r", session="s", observed_at=WHEN, turns=list(turns)
    )


def user(text: str | list, name: str | None = None) -> dict:
    return {"role": "user", "content": text, **({"name": name} if name else {})}


def read(*turns: tuple[int, dict], owner: str = "alice") -> list[str]:
    return [f.text for f in MemReader().read_heuristic(exchange(*turns, owner=owner))]


def test_a_named_speakers_memory_says_who_spoke_and_keeps_it_in_its_source() -> None:
    [fact] = MemReader().read_heuristic(exchange((0, user("I went to the pride parade.", name="Caroline"))))
    assert fact.text == "Caroline: I went to the pride parade."
    assert fact.source.metadata["speaker"] == "Caroline"


def test_the_users_own_words_stay_as_they_were_said() -> None:
    assert read((0, user("I went to the pride parade."))) == ["I went to the pride parade."]
    assert read((0, user("I went to the pride parade.", name="Alice"))) == ["I went to the pride parade."]


@pytest.mark.parametrize(
    ("name", "expected"), [("jon_smith", "jon smith"), ("  Gina ", "Gina"), ("", None), (7, None)]
)
def test_speaker_names(name: object, expected: str | None) -> None:
    assert speaker_of({"role": "user", "content": "x", "name": name}) == expected


def test_a_named_speakers_slots_are_theirs() -> None:
    [fact] = MemReader().read_heuristic(exchange((0, user("I live in Paris.", name="Jon"))))
    assert fact.slots == (Slot("home@jon", "paris"),)
    stored = MemoryItem(
        id="m1",
        tenant="acme",
        owner="alice",
        text="Jon: I live in Lyon.",
        sources=[Source(metadata={"speaker": "Jon"})],
    )
    assert memory_slots(stored) == (Slot("home@jon", "lyon"),)
    assert fact.slots[0].conflicts_with(memory_slots(stored)[0])
    [mine] = MemReader().read_heuristic(exchange((0, user("I live in Paris."))))
    assert not mine.slots[0].conflicts_with(memory_slots(stored)[0])  # Jon's home is not the user's


@pytest.mark.parametrize("text", ["k", "?", "5", " x ", "👍"])
def test_a_one_letter_turn_is_not_a_memory(text: str) -> None:
    assert read((0, user(text))) == []


@pytest.mark.parametrize("prompt", OPEN_WEBUI_TASKS)
async def test_a_clients_own_task_prompts_are_not_memories(prompt: str) -> None:
    assert not_a_memory(prompt) == "task_prompt"
    assert await MemReader().read(exchange((0, user(prompt)))) == []
    # beside a real turn, only the real turn is read
    assert read((0, user("I adopted a cat named Miso.")), (1, user(prompt))) == [
        "I adopted a cat named Miso."
    ]


def test_a_pasted_document_is_read_only_for_the_users_note() -> None:
    document = "\n".join(f"Clause {i}: the party of the first part shall indemnify." for i in range(60))
    assert len(document) > DOCUMENT_CHARS
    assert read((0, user(document))) == []
    assert read((0, user("I am reviewing my lease before I sign it.\n\n" + document))) == [
        "I am reviewing my lease before I sign it."
    ]
    code = "I'm learning Rust for my new job.\n```rust\nfn main() {}\n```"
    assert user_words(code) == "I'm learning Rust for my new job."
    assert read((0, user(code))) == ["I'm learning Rust for my new job."]


def test_tool_results_are_not_memories() -> None:
    turns = (
        (0, {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "type": "function"}]}),
        (1, {"role": "tool", "tool_call_id": "t1", "content": "I live in Paris. Weather: 21C, sunny."}),
        (2, {"role": "function", "name": "weather", "content": "I have two cats."}),
        (
            3,
            user(
                [{"type": "tool_result", "content": "I work at Acme."}, {"type": "text", "text": "Thanks!"}]
            ),
        ),
    )
    assert read(*turns) == []


def test_a_named_speakers_question_is_what_was_said() -> None:
    assert read((0, user("What are your plans for the summer?", name="Melanie"))) == [
        "Melanie: What are your plans for the summer?"
    ]
    assert read((0, user("What are your plans for the summer?"))) == []  # a request to the assistant
