"""Memory on the Responses API, end to end: the official openai SDK (`client.responses.create`, with and
without `stream=True`, and the `client.responses.stream` helper) -> proxy -> loopback upstream.

What a user tells the model in one response call reaches the upstream request of a later call of that
user (a system input item after the client's own leading system/developer items), never another
user's; `instructions`, `previous_response_id` and `store` go upstream as the client sent them; the
answer read from the output items is written back; bad input is a 400 in the API's error shape and
writes nothing. Write-back is awaited by polling the memory API with a deadline, never by sleeping.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support.memory import listed, remembered
from tests.support.proxy import RunningProxy, proxy_stack
from tests.support.upstream import FakeUpstream

MODEL = "gpt-4o-mini"
INSTRUCTIONS = "You are a concise assistant. Answer in one sentence."


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    # The real default embedder, as for chat: this is the product's core promise on the other API.
    data_dir = tmp_path_factory.mktemp("responses-e2e")
    with proxy_stack(data_dir, key_cache_ttl_s=0, worker_poll_interval_s=0.02) as pair:
        yield pair


@pytest.fixture
def upstream(stack: tuple[FakeUpstream, RunningProxy]) -> FakeUpstream:
    stack[0].reset()
    return stack[0]


def tell(client: openai.OpenAI, how: str, user: str, **params: Any) -> tuple[str, str, dict[str, str]]:
    """One response call as `user`, the way `how` says; returns (response id, output text, headers)."""
    name = {"safety_identifier": user} if how == "create" else {}
    name |= {"user": user} if how == "stream" else {}
    headers = {"X-Memos-User": user} if how == "helper" else {}
    if how == "create":
        raw = client.responses.with_raw_response.create(model=MODEL, **name, **params)
        response = raw.parse()
        return response.id, response.output_text, dict(raw.headers)
    if how == "stream":
        with client.responses.with_streaming_response.create(
            model=MODEL, stream=True, **name, **params
        ) as raw:
            events = list(raw.parse())
            headers = dict(raw.headers)
        types = [event.type for event in events]
        assert types[0] == "response.created" and types[-1] == "response.completed", types
        final = events[-1].response
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas == final.output_text
        return final.id, final.output_text, headers
    with client.responses.stream(model=MODEL, extra_headers=headers, **params) as stream:
        for _ in stream:
            pass
        response = stream.get_final_response()
    return response.id, response.output_text, {}


@pytest.mark.parametrize("how", ["create", "stream", "helper"])
def test_a_fact_told_in_one_response_is_injected_into_a_later_one_of_the_same_user_only(
    client: openai.OpenAI, upstream: FakeUpstream, running: RunningProxy, key: str, how: str
) -> None:
    user, other = f"ann-{how}", f"ben-{how}"
    fact = {
        "create": "My favourite colour is teal.",
        "stream": "My favourite tree is the ginkgo.",
        "helper": "My favourite river is the Loire.",
    }[how]
    first_id, answer, headers = tell(client, how, user, input=fact, instructions=INSTRUCTIONS)
    assert answer == f"You said: {fact}"
    if headers:
        assert headers["x-memos-memory-mode"] == "plaintext" and "x-memos-memory-reason" not in headers
    remembered(running, key, user, fact)

    question = "Tell me about it, what is my favourite one?"
    items: list[Any] = [
        {"role": "developer", "content": "Use British spelling."},
        {"role": "user", "content": [{"type": "input_text", "text": question}]},
    ]
    _, answer, headers = tell(
        client, how, user, input=items, instructions=INSTRUCTIONS, previous_response_id=first_id, store=False
    )
    assert answer == f"You said: {question}"
    if headers:
        assert headers["x-memos-memory-mode"] == "plaintext" and int(headers["x-memos-memories"]) >= 1
    sent = upstream.responses_requests[-1]
    # The client's prefix first and untouched: instructions, then its developer item; then the block.
    assert sent["instructions"] == INSTRUCTIONS
    assert sent["previous_response_id"] == first_id and sent["store"] is False
    assert sent["input"][0] == items[0] and sent["input"][2:] == items[1:]
    block = sent["input"][1]
    assert block["type"] == "message" and block["role"] == "system"
    assert fact in block["content"] and "reference data" in block["content"]
    # Only this request was sent upstream: the history held there was not fetched.
    assert [r.method for r in upstream.requests if r.path.startswith("/v1/responses")] == ["POST", "POST"]

    # Another user of the same tenant never sees it.
    tell(client, how, other, input=question)
    assert fact not in str(upstream.responses_requests[-1]["input"])


def test_the_new_turns_and_the_answer_read_from_the_output_are_written_back(
    client: openai.OpenAI, upstream: FakeUpstream, running: RunningProxy, key: str
) -> None:
    user = "cleo"
    upstream.reply("Noted: you are allergic to peanuts.")
    history = [
        {"role": "user", "content": "I used to live in Porto."},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Nice city."}]},
        {"role": "user", "content": "I am allergic to peanuts."},
    ]
    client.responses.create(model=MODEL, input=history, safety_identifier=user)
    remembered(running, key, user, "I am allergic to peanuts.")
    texts = [m["memory"] for m in listed(running, key, user)]
    # The turns after the last assistant item are what this request adds; earlier ones are history.
    assert not any("Porto" in text for text in texts)


def test_tool_calls_and_their_outputs_pass_through(
    client: openai.OpenAI, upstream: FakeUpstream, running: RunningProxy, key: str
) -> None:
    user = "dora"
    tools: list[Any] = [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}
    ]
    response = client.responses.create(
        model=MODEL, input="What is the weather in Paris?", tools=tools, safety_identifier=user
    )
    call = response.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    follow_up: list[Any] = [
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"celsius": 21}'},
    ]
    client.responses.create(model=MODEL, input=follow_up, tools=tools, safety_identifier=user)
    assert upstream.responses_requests[-1]["input"] == follow_up  # no user turn: no query, no block
    assert upstream.responses_requests[-1]["tools"] == tools


@pytest.mark.parametrize(
    ("input_", "param"),
    [
        (5, "input"),
        ({"role": "user", "content": "hi"}, "input"),
        (["hi"], "input[0]"),
        ([{"role": "user", "content": "hi"}, 7], "input[1]"),
        ([{"content": "hi"}], "input[0].type"),
        ([{"role": "user", "content": 3}], "input[0].content"),
        ([{"role": "user", "content": ["hi"]}], "input[0].content[0]"),
    ],
)
def test_bad_input_is_a_400_in_the_error_shape_and_nothing_is_written(
    client: openai.OpenAI,
    upstream: FakeUpstream,
    running: RunningProxy,
    key: str,
    input_: Any,
    param: str,
) -> None:
    user = "eve"
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model=MODEL, input=input_, safety_identifier=user)
    assert refused.value.status_code == 400
    error = refused.value.body
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert upstream.requests == []
    assert listed(running, key, user) == []
