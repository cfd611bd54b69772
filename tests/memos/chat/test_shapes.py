"""memos.chat.shapes: a body's turns as chat-like messages, and where the block goes, per API."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from memos.chat.contract import ApiShape
from memos.chat.memory import new_turns, query_of
from memos.chat.shapes import conversation_of, inject
from memos.recall.injection import RenderedMemory, render

MEMORIES = [RenderedMemory("m1", "I live in Lyon.", datetime(2026, 1, 2, tzinfo=UTC))]
BLOCK = render(MEMORIES)
SYSTEM_ITEM = {"type": "message", "role": "system", "content": BLOCK}


def test_chat_bodies_are_their_messages() -> None:
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]
    assert conversation_of(ApiShape.CHAT, {"messages": messages}) == messages
    assert conversation_of(ApiShape.CHAT, {}) == []


def test_a_string_input_is_one_user_turn_and_instructions_are_not_a_turn() -> None:
    body = {"instructions": "Be brief.", "input": "Where do I live?"}
    assert conversation_of(ApiShape.RESPONSES, body) == [{"role": "user", "content": "Where do I live?"}]
    assert conversation_of(ApiShape.RESPONSES, {"previous_response_id": "r1"}) == []


def test_input_items_become_one_message_each_at_their_index() -> None:
    items: list[Any] = [
        {"role": "developer", "content": "Rules."},
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "Look at this"},
                {"type": "input_image", "image_url": "https://example.invalid/a.png"},
                {"type": "input_text", "text": "and tell me."},
            ],
        },
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "A cat."}]},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "21 C"},
        {"type": "item_reference", "id": "msg_0"},
        {"role": "user", "content": "I moved to Oslo."},
    ]
    messages = conversation_of(ApiShape.RESPONSES, {"input": items})
    assert len(messages) == len(items)
    assert messages[1] == {"role": "user", "content": "Look at this\nand tell me."}
    assert messages[2] == {"role": "reasoning", "content": ""}
    assert messages[3] == {"role": "assistant", "content": "A cat."}
    assert (
        messages[4]["role"] == "assistant" and messages[4]["tool_calls"][0]["function"]["name"] == "weather"
    )
    assert messages[5] == {"role": "tool", "tool_call_id": "c1", "content": "21 C"}
    # The query and write-back read them as they read chat messages (indices are input positions).
    assert query_of(messages).endswith("I moved to Oslo.")
    assert [index for index, _ in new_turns(messages)] == [7]  # after the last assistant turn


def test_the_block_follows_the_leading_system_items_and_instructions_stay() -> None:
    items: list[Any] = [
        {"role": "system", "content": "Rules."},
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "More."}]},
        {"role": "user", "content": "hi"},
    ]
    body = {"model": "m", "instructions": "Be brief.", "input": items, "previous_response_id": "r1"}
    before = copy.deepcopy(body)
    out = inject(ApiShape.RESPONSES, body, MEMORIES)
    assert out["input"] == [items[0], items[1], SYSTEM_ITEM, items[2]]
    assert {k: v for k, v in out.items() if k != "input"} == {k: v for k, v in body.items() if k != "input"}
    assert body == before  # not mutated
    # A string input becomes the one-message list it stands for, the block first.
    out = inject(ApiShape.RESPONSES, {"input": "hi"}, MEMORIES)
    assert out["input"] == [SYSTEM_ITEM, {"role": "user", "content": "hi"}]
    assert inject(ApiShape.RESPONSES, body, []) is body


def test_single_system_message_merges_into_a_system_item_else_into_instructions() -> None:
    items: list[Any] = [{"role": "system", "content": "Rules."}, {"role": "user", "content": "hi"}]
    out = inject(ApiShape.RESPONSES, {"input": items}, MEMORIES, single_system_message=True)
    assert out["input"] == [{"role": "system", "content": f"Rules.\n\n{BLOCK}"}, items[1]]
    parts = [{"role": "system", "content": [{"type": "input_text", "text": "Rules."}]}, items[1]]
    out = inject(ApiShape.RESPONSES, {"input": parts}, MEMORIES, single_system_message=True)
    assert out["input"][0]["content"][1] == {"type": "input_text", "text": f"\n\n{BLOCK}"}
    body = {"instructions": "Be brief.", "input": "hi"}
    out = inject(ApiShape.RESPONSES, body, MEMORIES, single_system_message=True)
    assert out == {"instructions": f"Be brief.\n\n{BLOCK}", "input": "hi"}
    out = inject(ApiShape.RESPONSES, {"input": "hi"}, MEMORIES, single_system_message=True)
    assert out["input"] == [SYSTEM_ITEM, {"role": "user", "content": "hi"}]
