"""The request bodies memory works on, by API: how to read a body's turns as chat-like messages (the
recall query and write-back read those), and where the memory block goes.

- Chat completions: `messages`, as the client sent them; the block as memos.recall.injection places
  it (after the leading system/developer messages).
- Responses: `instructions` (kept exactly where the client put it, never read as a turn) and `input`,
  a string (one user message) or a list of items: messages (`role`, `content` a string or parts:
  input_text, output_text, input_image, input_file, ...), function_call and function_call_output
  items, and others (reasoning, item_reference, built-in tool calls) that carry no turn text. Each
  item becomes one chat-like message, so that positions are the client's `input` indices; items
  without text become empty messages of their type. The block is one system input item after the
  client's leading system/developer items (the client's prefix, `instructions` then those items,
  stays first); a string `input` becomes the equivalent one-message list to make room for it.
  With `single_system_message` it is appended to the last leading system item, else to a string
  `instructions`, else it is still the first item.

Only the current request's body is read: history held upstream (`previous_response_id`,
`conversation`) is not this request's turns and is never fetched. Bodies are never mutated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from memos.chat.contract import ApiShape
from memos.recall import injection
from memos.recall.injection import RenderedMemory

# Content parts whose text is a turn's text (chat's `text`, the Responses API's input/output text).
TEXT_PARTS = ("text", "input_text", "output_text")


def conversation_of(shape: ApiShape, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The body's turns as chat-like messages (`role`, `content`, ...), in the client's order."""
    if shape is ApiShape.RESPONSES:
        return responses_messages(body)
    messages = body.get("messages")
    return list(messages) if isinstance(messages, list) else []


def inject(
    shape: ApiShape,
    body: dict[str, Any],
    memories: Sequence[RenderedMemory],
    *,
    single_system_message: bool = False,
) -> dict[str, Any]:
    """A copy of the body with the memory block placed (the body itself when there is no block)."""
    if shape is ApiShape.RESPONSES:
        return inject_responses(body, memories, single_system_message=single_system_message)
    return injection.inject(body, memories, single_system_message=single_system_message)


# -- the Responses API -------------------------------------------------------------------------------


def parts_text(content: Any) -> str:
    """The text of a content that is a string or a list of parts (text parts only, joined by lines)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    texts = [
        part["text"]
        for part in content
        if isinstance(part, dict) and part.get("type") in TEXT_PARTS and isinstance(part.get("text"), str)
    ]
    return "\n".join(texts)


def item_type(item: Any) -> str | None:
    """An input item's type; a message may leave it out (the API's "easy input message")."""
    if not isinstance(item, dict):
        return None
    kind = item.get("type")
    if kind is None and "role" in item:
        return "message"
    return kind if isinstance(kind, str) else None


def item_message(item: Any) -> dict[str, Any]:
    """One input item as a chat-like message."""
    kind = item_type(item)
    if kind == "message":
        role = item.get("role")
        return {"role": role if isinstance(role, str) else "user", "content": parts_text(item.get("content"))}
    if kind == "function_call":
        call = {"name": item.get("name") or "", "arguments": item.get("arguments") or ""}
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"id": item.get("call_id"), "type": "function", "function": call}],
        }
    if kind == "function_call_output":
        return {
            "role": "tool",
            "tool_call_id": item.get("call_id"),
            "content": parts_text(item.get("output")),
        }
    return {"role": kind or "unknown", "content": ""}  # reasoning, item_reference, tool calls, ...


def responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The turns of a Responses request's `input` (instructions are the system prompt, not a turn)."""
    items = body.get("input")
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        return []
    return [item_message(item) for item in items]


def is_system_item(item: Any) -> bool:
    return item_type(item) == "message" and item.get("role") in injection.SYSTEM_ROLES


def inject_responses(
    body: dict[str, Any], memories: Sequence[RenderedMemory], *, single_system_message: bool = False
) -> dict[str, Any]:
    block = injection.render(memories)
    if not block:
        return body
    given = body.get("input")
    items: list[Any] = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
    out = dict(body)
    instructions = body.get("instructions")
    if (
        single_system_message
        and not injection.leading(items, is_system_item)
        and isinstance(instructions, str)
        and instructions
    ):
        out["instructions"] = f"{instructions}\n\n{block}"
        return out
    out["input"] = placed_items(items, block, single_system_message=single_system_message)
    return out


def placed_items(items: list[Any], block: str, *, single_system_message: bool) -> list[Any]:
    new_item = {"type": "message", "role": "system", "content": block}
    return injection.placed(
        items,
        block,
        new_item,
        is_system=is_system_item,
        single_system_message=single_system_message,
        text_part="input_text",
    )
