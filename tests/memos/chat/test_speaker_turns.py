"""The chat path keeps who spoke: a user message's `name` travels with its turn to the write-back."""

from __future__ import annotations

from memos.chat.memory import new_turns


def test_new_turns_keep_the_speakers_name() -> None:
    messages = [
        {"role": "user", "name": "Melanie", "content": "What are your plans for the summer?"},
        {"role": "assistant", "content": "Okay."},
        {"role": "user", "name": "Caroline", "content": "Researching adoption agencies."},
        {"role": "user", "content": "And I bake."},
        {"role": "user", "name": 3, "content": "Not a name."},
    ]
    assert new_turns(messages) == [
        (1, {"role": "assistant", "content": "Okay."}),
        (2, {"role": "user", "content": "Researching adoption agencies.", "name": "Caroline"}),
        (3, {"role": "user", "content": "And I bake."}),
        (4, {"role": "user", "content": "Not a name."}),
    ]
