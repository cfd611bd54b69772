"""POST /v1/responses: validation, the memory seam, the stream relay and its error paths, models that
cannot serve it. (The SDK's view, with real memory, is tests/e2e/test_responses.py.)"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest

from memos.chat.contract import ApiShape, ChatContext, FinishedExchange, MemoryPlan, MemorySwitch
from memos.chat.planner import memory_switch
from memos.modes import MemoryMode
from tests.proxy.conftest import Api
from tests.support.proxy import RunningProxy
from tests.support.upstream import FakeUpstream

RESPONSES = "/responses"
BLOCK = {"type": "message", "role": "system", "content": "MEMORY: likes tea"}


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "input": "hi", **extra}


def stream(
    api: Api, payload: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[httpx.Response, bytes]:
    with httpx.stream(
        "POST", api.proxy.base_url + RESPONSES, json=payload, headers=api.headers(headers), timeout=30
    ) as response:
        return response, response.read()


def events_of(raw: bytes) -> list[tuple[str | None, dict[str, Any]]]:
    """(the `event:` line's value, the data) of each SSE event."""
    found = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = block.split("\n")
        name = next((line[len("event: ") :] for line in lines if line.startswith("event: ")), None)
        data = next(line[len("data: ") :] for line in lines if line.startswith("data: "))
        found.append((name, orjson.loads(data)))
    return found


class RecordingMemory:
    """Injects a fixed block as the planner would place it; records what it was handed."""

    def __init__(self) -> None:
        self.contexts: list[ChatContext] = []
        self.completed: list[FinishedExchange] = []
        self.completed_at: float | None = None
        self.fail = False
        self.delay_s = 0.0

    async def plan(self, ctx: ChatContext, body: dict[str, Any]) -> MemoryPlan:
        self.contexts.append(ctx)
        switch = memory_switch(ctx.requested_switch, ctx.principal, ctx.policy, ctx.user)
        given = body.get("input")
        items = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
        sent = {**body, "input": [BLOCK, *items]}
        return MemoryPlan(body=sent, switch=switch, mode=MemoryMode.PLAINTEXT, injected_ids=("m1",))

    async def complete(self, ctx: ChatContext, plan: MemoryPlan, exchange: FinishedExchange) -> None:
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("outbox down")
        self.completed.append(exchange)
        self.completed_at = time.monotonic()


@pytest.fixture
def memory(running: RunningProxy) -> RecordingMemory:
    recording = RecordingMemory()
    running.services.chat_memory = recording
    return recording


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"input": "hi"}, "model", "missing_required_parameter"),
        (body(model=""), "model", "invalid_value"),
        (body(input=5), "input", "invalid_type"),
        (body(input={"role": "user", "content": "hi"}), "input", "invalid_type"),
        (body(input=[None]), "input[0]", "invalid_type"),
        (body(input=[{"content": "hi"}]), "input[0].type", "invalid_value"),
        (body(input=[{"type": 3}]), "input[0].type", "invalid_type"),
        (body(input=[{"type": "message", "content": "hi"}]), "input[0].role", "missing_required_parameter"),
        (body(input=[{"role": "user"}]), "input[0].content", "missing_required_parameter"),
        (body(input=[{"role": "user", "content": None}]), "input[0].content", "invalid_type"),
        (body(input=[{"role": "user", "content": [{"text": "x"}]}]), "input[0].content[0].type", None),
        (body(stream="yes"), "stream", "invalid_type"),
        (body(user=5), "user", None),
        (body(safety_identifier=5), "safety_identifier", "invalid_type"),
    ],
)
def test_bad_bodies_are_400_naming_the_field_and_reach_nothing(
    api: Api,
    upstream: FakeUpstream,
    memory: RecordingMemory,
    payload: dict[str, Any],
    param: str,
    code: str | None,
) -> None:
    r = api.post(RESPONSES, payload)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code
    assert upstream.requests == [] and memory.contexts == []


def test_items_the_proxy_does_not_read_pass_untouched(api: Api, upstream: FakeUpstream) -> None:
    items = [
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "item_reference", "id": "msg_0"},
        {"role": "user", "content": [{"type": "input_image", "image_url": "https://example.invalid/a.png"}]},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "21"}]},
    ]
    sent = body(
        input=items,
        instructions="Be brief.",
        previous_response_id="resp_0",
        store=False,
        conversation={"id": "conv_1"},
        metadata={"k": "v"},
        reasoning={"effort": "low"},
        some_future_field=[1, {"a": None}],
    )
    assert api.post(RESPONSES, sent).status_code == 200  # no user: memory off, the body as sent
    assert upstream.responses_requests[-1] == sent


def test_models_that_cannot_serve_the_responses_api_are_a_clear_400(
    api: Api, running: RunningProxy, upstream: FakeUpstream
) -> None:
    r = api.post(RESPONSES, body(model="anthropic/claude-sonnet"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_model"
    assert (
        "litellm" in r.json()["error"]["message"] and "/v1/chat/completions" in r.json()["error"]["message"]
    )
    assert api.post(RESPONSES, body(model="local/tiny")).status_code == 404  # no local runtime here
    router = running.services.upstreams
    router.local = object()  # type: ignore[assignment]  # a local runtime (never called)
    try:
        r = api.post(RESPONSES, body(model="local/tiny"), headers={"X-Memos-User": "alice"})
    finally:
        router.local = None
    assert r.status_code == 400 and "local runtime" in r.json()["error"]["message"]
    assert upstream.requests == []


def test_stored_responses_are_still_relayed(api: Api, upstream: FakeUpstream) -> None:
    api.get("/responses/resp_123")
    api.get("/responses/resp_123/input_items")
    assert [(r.method, r.path) for r in upstream.requests] == [
        ("GET", "/v1/responses/resp_123"),
        ("GET", "/v1/responses/resp_123/input_items"),
    ]


# ---------------------------------------------------------------- the memory seam


def test_memory_injects_and_records_non_streamed(
    api: Api, upstream: FakeUpstream, memory: RecordingMemory
) -> None:
    r = api.post(
        RESPONSES, body(instructions="Be brief."), headers={"X-Memos-User": "alice", "X-Memos-Session": "s1"}
    )
    assert r.status_code == 200
    assert r.headers["x-memos-memory-mode"] == "plaintext" and r.headers["x-memos-memories"] == "1"
    assert upstream.responses_requests[-1]["input"] == [BLOCK, {"role": "user", "content": "hi"}]
    (ctx,) = memory.contexts
    assert (ctx.user, ctx.session, ctx.shape, ctx.requested_switch) == (
        "alice",
        "s1",
        ApiShape.RESPONSES,
        MemorySwitch.ON,
    )
    assert ctx.request_id == r.headers["x-request-id"]
    (exchange,) = memory.completed
    assert exchange.request_messages == [{"role": "user", "content": "hi"}]  # the request's own turns
    assert exchange.assistant_text == "You said: hi" == r.json()["output"][0]["content"][0]["text"]


def test_the_streamed_answer_is_recorded_before_the_response_completes(
    api: Api, upstream: FakeUpstream, memory: RecordingMemory
) -> None:
    memory.delay_s = 0.3
    upstream.chunk_words = 1
    completed_at = None
    raw = b""
    with httpx.stream(
        "POST",
        api.proxy.base_url + RESPONSES,
        json=body(input="tell me a story", stream=True),
        headers=api.headers({"X-Memos-User": "alice"}),
        timeout=30,
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-memos-memory-mode"] == "plaintext"
        for piece in r.iter_bytes():
            raw += piece
            if b"event: response.completed" in raw and completed_at is None:
                completed_at = time.monotonic()
    assert (
        memory.completed_at is not None and completed_at is not None and memory.completed_at <= completed_at
    )
    (exchange,) = memory.completed
    assert exchange.assistant_text == "You said: tell me a story"
    events = events_of(raw)
    # Relayed untouched: each event's name is its type, its data the upstream's, in the API's order.
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    assert events[0][1]["type"] == "response.created" and events[-1][1]["type"] == "response.completed"
    assert b"[DONE]" not in raw


def test_tool_calls_are_the_written_back_answer(
    api: Api, upstream: FakeUpstream, memory: RecordingMemory
) -> None:
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    for streamed in (False, True):
        payload = body(input="weather in Paris?", tools=tools, stream=streamed)
        if streamed:
            assert stream(api, payload, {"X-Memos-User": "alice"})[0].status_code == 200
        else:
            assert api.post(RESPONSES, payload, headers={"X-Memos-User": "alice"}).status_code == 200
    for exchange in memory.completed:
        (call,) = exchange.tool_calls
        assert call["id"] == "call_fake_1" and call["function"]["name"] == "get_weather"
        assert call["function"]["arguments"] == upstream.tool_arguments


def test_a_failed_write_back_is_not_acknowledged(api: Api, memory: RecordingMemory) -> None:
    memory.fail = True
    r, raw = stream(api, body(stream=True), {"X-Memos-User": "alice"})
    events = events_of(raw)
    assert "response.completed" not in [data["type"] for _, data in events]
    name, error = events[-1]
    assert name == "error" and error["type"] == "error" and error["code"] == "memory_unavailable"
    assert set(error) == {"type", "code", "message", "param", "sequence_number"}
    assert error["sequence_number"] == events[-2][1]["sequence_number"] + 1
    r = api.post(RESPONSES, body(), headers={"X-Memos-User": "alice"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "memory_unavailable"


def test_no_user_says_why(api: Api) -> None:
    r = api.post(RESPONSES, body())
    assert r.headers["x-memos-memory-reason"] == "no_user" and r.headers["x-memos-memory-mode"] == "off"
    r, _ = stream(api, body(stream=True))
    assert r.headers["x-memos-memory-reason"] == "no_user"


# ---------------------------------------------------------------- upstream failures


@pytest.mark.parametrize("streamed", [False, True])
@pytest.mark.parametrize("status", [400, 429, 500])
def test_upstream_errors_keep_their_status_and_envelope(
    api: Api, upstream: FakeUpstream, memory: RecordingMemory, status: int, streamed: bool
) -> None:
    upstream.fail(status)
    r = stream(api, body(stream=True))[0] if streamed else api.post(RESPONSES, body())
    assert r.status_code == status
    if not streamed:
        assert r.json()["error"]["message"] == f"scripted failure {status}"
    assert memory.completed == []


def test_an_error_event_first_keeps_an_http_status(
    api: Api, upstream: FakeUpstream, memory: RecordingMemory
) -> None:
    upstream.stream_error(after_chunks=0)
    r, raw = stream(api, body(stream=True), {"X-Memos-User": "alice"})
    assert r.status_code == 502 and orjson.loads(raw)["error"]["message"] == "scripted stream failure"
    assert memory.completed == []


def test_an_upstream_error_event_mid_stream_is_relayed_and_nothing_is_written(
    api: Api, upstream: FakeUpstream, memory: RecordingMemory
) -> None:
    upstream.stream_error(after_chunks=4)
    r, raw = stream(api, body(stream=True), {"X-Memos-User": "alice"})
    assert r.status_code == 200
    events = events_of(raw)
    assert [data["type"] for _, data in events][-1] == "error"
    assert events[-1][1]["message"] == "scripted stream failure"
    assert memory.completed == []


def test_a_dropped_stream_ends_with_an_error_event(
    api: Api, upstream: FakeUpstream, memory: RecordingMemory
) -> None:
    upstream.drop(after_chunks=3)
    _, raw = stream(api, body(stream=True), {"X-Memos-User": "alice"})
    events = events_of(raw)
    assert len(events) == 4 and events[-1][0] == "error"
    assert events[-1][1]["code"] == "upstream_unreachable" and events[-1][1]["sequence_number"] == 3
    assert memory.completed == []
