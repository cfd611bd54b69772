"""Where the memory block goes, seen from the upstream: the client's system prompt stays first.

Two turns of one conversation, with different memories injected, reach the upstream with the client's
whole system prompt (and, in the client's key order, its tools) as an identical byte prefix of the
forwarded body: a provider's prefix cache keeps hitting it whatever memory brings. The block is one
system message right after the client's; a tenant whose policy says its upstream takes only one
system message gets the block appended to the client's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from memos.recall.injection import HEADER
from tests.support.memory import add_memories
from tests.support.proxy import RunningProxy, proxy_stack
from tests.support.upstream import FakeUpstream

MODEL = "gpt-4o-mini"
SYSTEM = {"role": "system", "content": "You are Hive, a beekeeping assistant. " + "Be precise. " * 40}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "hive_weight",
            "description": "The weight of a hive in kilograms.",
            "parameters": {"type": "object", "properties": {"hive": {"type": "string"}}},
        },
    }
]
BLOCK_START = b'{"role":"system","content":' + orjson.dumps(HEADER)[:-1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    data_dir = tmp_path_factory.mktemp("placement")
    (data_dir / "policies").mkdir()
    solo = "memory:\n  placement:\n    single_system_message: true\n"
    (data_dir / "policies" / "solo.yaml").write_text(solo)
    with proxy_stack(data_dir, embedding_model="hash", key_cache_ttl_s=0) as pair:
        yield pair


@pytest.fixture
def upstream(stack: tuple[FakeUpstream, RunningProxy]) -> FakeUpstream:
    stack[0].reset()
    stack[0].tool_arguments = '{"hive": "north"}'
    return stack[0]


def post(running: RunningProxy, key: str, user: str, body: dict[str, Any]) -> httpx.Response:
    """The body sent as these exact bytes (its keys in this order)."""
    reply = httpx.post(
        f"{running.base_url}/chat/completions",
        content=orjson.dumps(body),
        headers={"Authorization": f"Bearer {key}", "X-Memos-User": user, "content-type": "application/json"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return reply


def forwarded(upstream: FakeUpstream) -> bytes:
    (request,) = [r for r in upstream.requests if r.path.endswith("/chat/completions")]
    upstream.requests.clear()
    return request.body


def test_two_turns_share_the_system_prompt_and_tools_as_an_identical_byte_prefix(
    running: RunningProxy, key: str, upstream: FakeUpstream
) -> None:
    user = "hive-keeper"
    first_turn = [SYSTEM, {"role": "user", "content": "How heavy should my bee hive be in autumn?"}]
    add_memories(running, key, user, ["I keep three bee hives in my garden."])
    turn1 = {"model": MODEL, "tools": TOOLS, "tool_choice": "none", "messages": first_turn}
    assert post(running, key, user, turn1).headers["x-memos-memories"] == "1"
    sent1 = forwarded(upstream)

    add_memories(running, key, user, ["My bee hives are Langstroth hives."])
    second_turn = [
        *first_turn,
        {"role": "assistant", "content": "Around 40 kg."},
        {"role": "user", "content": "And in spring, for my bee hives?"},
    ]
    turn2 = {"model": MODEL, "tools": TOOLS, "tool_choice": "none", "messages": second_turn}
    assert post(running, key, user, turn2).headers["x-memos-memories"] == "2"
    sent2 = forwarded(upstream)

    # The prefix up to the block: the client's model, tools and whole system prompt, byte for byte.
    prefix = orjson.dumps({"model": MODEL, "tools": TOOLS, "tool_choice": "none", "messages": [SYSTEM]})
    prefix = prefix[: -len(b"]}")] + b","
    cut1, cut2 = sent1.index(BLOCK_START), sent2.index(BLOCK_START)
    assert sent1[:cut1] == sent2[:cut2] == prefix
    # The blocks differ (different memories); everything after them is the client's own conversation.
    block1, block2 = orjson.loads(sent1)["messages"][1], orjson.loads(sent2)["messages"][1]
    assert block1 != block2 and "Langstroth" in block2["content"]
    assert orjson.loads(sent1)["messages"] == [SYSTEM, block1, *first_turn[1:]]
    assert orjson.loads(sent2)["messages"] == [SYSTEM, block2, *second_turn[1:]]


def test_the_sdk_body_keeps_the_system_prompt_first_and_tools_untouched(
    client: openai.OpenAI, running: RunningProxy, key: str, upstream: FakeUpstream
) -> None:
    user = "sdk-keeper"
    add_memories(running, key, user, ["My apiary is called Sunny Hill."])
    messages: list[Any] = [
        SYSTEM,
        {"role": "developer", "content": "Answer in metric units."},
        {"role": "user", "content": "What is the name of my apiary hill?"},
    ]
    client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, extra_headers={"X-Memos-User": user}
    )
    sent = orjson.loads(forwarded(upstream))
    assert sent["messages"][:2] == messages[:2] and sent["messages"][3:] == messages[2:]
    assert sent["messages"][2]["role"] == "system" and "Sunny Hill" in sent["messages"][2]["content"]
    assert sent["tools"] == TOOLS


def test_a_single_system_message_upstream_gets_the_block_merged_into_the_client_one(
    running: RunningProxy, upstream: FakeUpstream
) -> None:
    key = running.create_key("solo", "app")
    user = "solo-keeper"
    add_memories(running, key, user, ["My queen bee is marked blue."])
    body = {"model": MODEL, "messages": [SYSTEM, {"role": "user", "content": "What colour is my queen bee?"}]}
    post(running, key, user, body)
    sent = orjson.loads(forwarded(upstream))["messages"]
    assert [m["role"] for m in sent] == ["system", "user"]
    system = sent[0]["content"]
    assert system.startswith(SYSTEM["content"] + "\n\n" + HEADER) and "marked blue" in system
    # Without a system message of its own, the client's conversation gets the block first.
    post(running, key, user, {"model": MODEL, "messages": body["messages"][1:]})
    alone = orjson.loads(forwarded(upstream))["messages"]
    assert [m["role"] for m in alone] == ["system", "user"] and "marked blue" in alone[0]["content"]
