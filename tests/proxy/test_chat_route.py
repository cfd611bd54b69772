"""POST /v1/chat/completions: validation, memory seam, policy, pass-through auth, streaming error paths."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from memos.chat.contract import ChatContext, FinishedExchange, MemoryPlan, MemorySwitch
from memos.chat.planner import memory_switch
from memos.governance.policy import Policy, UpstreamPolicy
from memos.local.runtime import LocalMemory
from memos.modes import MemoryMode
from proxy.services import DefaultPolicies
from proxy.upstream.base import ChatCall, JsonCall, UpstreamReply, UpstreamTarget
from tests.proxy.conftest import Api
from tests.support.proxy import RunningProxy
from tests.support.upstream import FakeUpstream

CHAT = "/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": 5, "messages": MESSAGES}, "model"),
        ({"model": ""}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": [{"role": "user", "content": "a"}, 7]}, "messages[1]"),
        ({"model": "m", "messages": [{"content": "a"}]}, "messages[0].role"),
        (body(stream="yes"), "stream"),
        (body(stream_options=[]), "stream_options"),
        (body(stream=True, stream_options={"include_usage": "yes"}), "stream_options.include_usage"),
        (body(user=5), "user"),
    ],
)
def test_wrong_types_are_400_naming_the_field(
    api: Api, upstream: FakeUpstream, payload: dict[str, Any], param: str
) -> None:
    r = api.post(CHAT, payload)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert upstream.requests == []


@pytest.mark.parametrize("content", [b"[1, 2]", b'"text"', b"", b"{bad json"])
def test_body_must_be_a_json_object(api: Api, content: bytes) -> None:
    r = api.post(CHAT, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("header", ["X-Memos-Memory", "X-Memos-Memory-Mode"])
def test_bad_memory_headers_are_400(api: Api, header: str) -> None:
    r = api.post(CHAT, body(), headers={header: "sometimes"})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == header.lower()


def test_unknown_fields_and_tools_pass_untouched(api: Api, upstream: FakeUpstream) -> None:
    sent = body(
        tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        tool_choice="none",
        logprobs=True,
        top_logprobs=2,
        seed=7,
        metadata={"k": "v"},
        some_future_field=[1, {"a": None}],
        max_completion_tokens=5,
    )
    assert api.post(CHAT, sent).status_code == 200
    assert upstream.chat_requests[-1] == sent


# ---------------------------------------------------------------- memory seam


class RecordingMemory:
    def __init__(
        self, inject: str | None = "MEMORY: likes tea", fail: bool = False, delay_s: float = 0.0
    ) -> None:
        self.inject = inject
        self.fail = fail
        self.delay_s = delay_s
        self.contexts: list[ChatContext] = []
        self.switches: list[MemorySwitch] = []  # what the planner made of each request's switch
        self.completed: list[FinishedExchange] = []
        self.completed_at: float | None = None

    async def plan(self, ctx: ChatContext, body: dict[str, Any]) -> MemoryPlan:
        self.contexts.append(ctx)
        switch = memory_switch(ctx.requested_switch, ctx.principal, ctx.policy, ctx.user)
        self.switches.append(switch)
        if self.inject is None:
            return MemoryPlan(body=body, switch=switch)
        if ctx.local_model:  # the local runtime gets the block apart from the conversation
            local = LocalMemory(MemoryMode.PLAINTEXT, block=self.inject, memory_ids=("m1", "m2"))
            return MemoryPlan(body=body, switch=switch, mode=MemoryMode.PLAINTEXT, local=local)
        body["messages"].insert(0, {"role": "system", "content": self.inject})  # in place, on purpose
        return MemoryPlan(body=body, switch=switch, mode=MemoryMode.PLAINTEXT, injected_ids=("m1", "m2"))

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


def test_memory_injects_and_records_non_streamed(
    api: Api, upstream: FakeUpstream, memory: RecordingMemory
) -> None:
    r = api.post(
        CHAT,
        body(),
        headers={"X-Memos-User": "alice", "X-Memos-Session": "s1", "X-Memos-Memory-Mode": "Plaintext"},
    )
    assert r.status_code == 200
    assert r.headers["x-memos-memory-mode"] == "plaintext"
    assert r.headers["x-memos-memories"] == "2"
    assert upstream.chat_requests[-1]["messages"][0] == {"role": "system", "content": "MEMORY: likes tea"}
    (ctx,) = memory.contexts
    assert (ctx.user, ctx.session, memory.switches[0], ctx.requested_mode) == (
        "alice",
        "s1",
        MemorySwitch.ON,
        MemoryMode.PLAINTEXT,
    )
    assert ctx.principal.tenant == "acme" and ctx.request_id == r.headers["x-request-id"]
    (exchange,) = memory.completed
    assert exchange.request_messages == MESSAGES  # what the client asked, without the injected block
    assert exchange.assistant_text == "You said: hi"


def test_user_from_body_and_streamed_exchange(api: Api, memory: RecordingMemory) -> None:
    r, lines = api.stream_lines(body(stream=True, user="bob"))
    assert r.status_code == 200 and lines[-1] == "data: [DONE]"
    assert memory.contexts[0].user == "bob"
    assert memory.completed[0].assistant_text == "You said: hi"


def test_streamed_tool_calls_are_assembled_for_memory(
    api: Api, upstream: FakeUpstream, memory: RecordingMemory
) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    api.stream_lines(body(stream=True, tools=tools), headers={"X-Memos-User": "alice"})
    (exchange,) = memory.completed
    assert exchange.tool_calls == [
        {
            "id": "call_fake_1",
            "type": "function",
            "function": {"name": "lookup", "arguments": upstream.tool_arguments},
        }
    ]


@pytest.mark.parametrize(
    ("header", "user", "expected", "writes"),
    [
        ("read", "alice", MemorySwitch.READ, False),
        ("off", "alice", MemorySwitch.OFF, False),
        ("write", "alice", MemorySwitch.WRITE, True),
        ("on", None, MemorySwitch.OFF, False),  # no user: nobody's memory
    ],
)
def test_memory_switch(
    api: Api, memory: RecordingMemory, header: str, user: str | None, expected: MemorySwitch, writes: bool
) -> None:
    headers = {"X-Memos-Memory": header} | ({"X-Memos-User": user} if user else {})
    assert api.post(CHAT, body(), headers=headers).status_code == 200
    assert memory.switches[0] is expected
    assert bool(memory.completed) is writes


def test_readonly_key_does_not_write_back(running: RunningProxy, memory: RecordingMemory) -> None:
    api = Api(running, running.create_key("acme", "readonly"))
    assert api.post(CHAT, body(), headers={"X-Memos-User": "alice"}).status_code == 200
    assert memory.switches[0] is MemorySwitch.READ and memory.completed == []


def test_user_bound_key_may_not_act_for_another_user(running: RunningProxy, memory: RecordingMemory) -> None:
    api = Api(running, running.create_key("acme", "user", user="alice"))
    assert api.post(CHAT, body(), headers={"X-Memos-User": "mallory"}).status_code == 403
    assert api.post(CHAT, body()).status_code == 200
    assert memory.contexts[-1].user == "alice"  # the bound user when none is named


def test_complete_runs_before_done(api: Api, memory: RecordingMemory) -> None:
    memory.delay_s = 0.3
    done_at = None
    with httpx.stream(
        "POST",
        api.proxy.base_url + CHAT,
        json=body(stream=True),
        headers=api.headers({"X-Memos-User": "alice"}),
    ) as r:
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done_at = time.monotonic()
    assert done_at is not None
    assert memory.completed_at is not None and memory.completed_at <= done_at


def test_failed_write_back_is_not_acknowledged(api: Api, memory: RecordingMemory) -> None:
    memory.fail = True
    r, lines = api.stream_lines(body(stream=True), headers={"X-Memos-User": "alice"})
    assert "data: [DONE]" not in lines
    assert orjson.loads(lines[-1].removeprefix("data: "))["error"]["code"] == "memory_unavailable"
    r = api.post(CHAT, body(), headers={"X-Memos-User": "alice"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "memory_unavailable"


# ---------------------------------------------------------------- policy and auth


def set_policy(running: RunningProxy, **upstream: Any) -> None:
    running.services.policies = DefaultPolicies({"acme": Policy(upstream=UpstreamPolicy(**upstream))})


def test_allowed_models(api: Api, running: RunningProxy, upstream: FakeUpstream) -> None:
    set_policy(running, allowed_models=["gpt-4o*"])
    assert api.post(CHAT, body()).status_code == 200
    r = api.post(CHAT, body(model="o1-pro"))
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    ids = [m["id"] for m in api.get("/models").json()["data"]]
    assert ids == ["gpt-4o-mini", "gpt-4o"]
    assert api.get("/models/text-embedding-3-small").status_code == 404


def test_local_model_without_runtime_is_404(api: Api) -> None:
    r = api.post(CHAT, body(model="local/tiny"))
    assert r.status_code == 404 and r.json()["error"]["param"] == "model"


def test_passthrough_auth(api: Api, running: RunningProxy, upstream: FakeUpstream) -> None:
    headers = {
        "Authorization": "Bearer sk-client-own",
        "X-Memos-Key": api.key,
        "OpenAI-Organization": "org-1",
    }
    r = api.post(CHAT, body(), headers=headers)
    assert r.status_code == 403 and r.json()["error"]["code"] == "passthrough_disabled"
    set_policy(running, passthrough_auth=True)
    assert api.post(CHAT, body(), headers=headers).status_code == 200
    seen = upstream.requests[-1].headers
    assert seen["authorization"] == "Bearer sk-client-own" and seen["openai-organization"] == "org-1"
    assert api.key not in str(seen)


def test_proxy_key_alone_in_x_memos_key(running: RunningProxy, key: str) -> None:
    r = httpx.post(running.base_url + CHAT, json=body(), headers={"X-Memos-Key": key})
    assert r.status_code == 200


def test_policy_upstream_override(
    api: Api, running: RunningProxy, upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeUpstream(api_key="sk-acme") as other:
        monkeypatch.setenv("ACME_UPSTREAM_KEY", "sk-acme")
        set_policy(running, base_url=other.base_url, api_key_env="ACME_UPSTREAM_KEY")
        assert api.post(CHAT, body()).status_code == 200
        assert len(other.chat_requests) == 1 and upstream.requests == []
        monkeypatch.delenv("ACME_UPSTREAM_KEY")
        r = api.post(CHAT, body())
        assert r.status_code == 500 and r.json()["error"]["code"] == "upstream_key_missing"


def test_configured_upstream_key_is_sent(proxy: Callable[..., RunningProxy], upstream: FakeUpstream) -> None:
    running = proxy(upstream_api_key="sk-configured")
    assert Api(running, running.create_key()).post(CHAT, body()).status_code == 200
    assert upstream.requests[-1].headers["authorization"] == "Bearer sk-configured"


# ---------------------------------------------------------------- upstream failures


def test_upstream_non_json_error_is_wrapped(api: Api, upstream: FakeUpstream) -> None:
    upstream.fail(502, body=b"<html>bad gateway</html>")
    r = api.post(CHAT, body())
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "upstream_error" and "bad gateway" in r.json()["error"]["message"]


def test_upstream_dropping_connection_is_502(api: Api, upstream: FakeUpstream) -> None:
    upstream.drop()
    r = api.post(CHAT, body())
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"


@pytest.mark.parametrize("status", [400, 401, 429, 500, 503])
def test_stream_error_status_before_first_byte(api: Api, upstream: FakeUpstream, status: int) -> None:
    upstream.fail(status)
    r, _ = api.stream_lines(body(stream=True))
    assert r.status_code == status
    assert r.json()["error"]["message"] == f"scripted failure {status}"


def test_streams_reuse_the_upstream_connection(api: Api, upstream: FakeUpstream) -> None:
    for _ in range(3):
        _, lines = api.stream_lines(body(stream=True))
        assert lines[-1] == "data: [DONE]"
    assert len({r.client for r in upstream.requests}) == 1


def test_error_as_first_event_keeps_an_http_status(api: Api, upstream: FakeUpstream) -> None:
    upstream.stream_error(after_chunks=0)
    r, _ = api.stream_lines(body(stream=True))
    assert r.status_code == 502 and r.json()["error"]["message"] == "scripted stream failure"


def test_error_after_first_byte_is_an_event(api: Api, upstream: FakeUpstream) -> None:
    upstream.stream_error(after_chunks=2)
    r, lines = api.stream_lines(body(stream=True))
    assert r.status_code == 200
    assert len(lines) == 3 and "data: [DONE]" not in lines
    assert orjson.loads(lines[-1].removeprefix("data: "))["error"]["message"] == "scripted stream failure"


def test_connection_dropped_mid_stream_is_an_error_event(api: Api, upstream: FakeUpstream) -> None:
    upstream.drop(after_chunks=2)
    r, lines = api.stream_lines(body(stream=True))
    assert r.status_code == 200 and "data: [DONE]" not in lines
    assert orjson.loads(lines[-1].removeprefix("data: "))["error"]["code"] == "upstream_unreachable"


def test_stalled_stream_is_a_timeout_event(api: Api, upstream: FakeUpstream) -> None:
    upstream.stream_delay_s = 5  # longer than the proxy's read timeout
    r, lines = api.stream_lines(body(stream=True))
    assert r.status_code == 200
    assert orjson.loads(lines[-1].removeprefix("data: "))["error"]["code"] == "upstream_timeout"
    upstream.wait_for(lambda: bool(upstream.disconnects))


# ---------------------------------------------------------------- any Upstream implementation


class ScriptedUpstream:
    """An Upstream that is not HTTP (as the local runtime is): streams the given chunks."""

    def __init__(self, chunks: list[Any]) -> None:
        self.chunks = chunks
        self.closed = False
        self.calls: list[ChatCall] = []
        self.burst = False  # offer everything after the first chunk through drain(), as one burst

    async def chat(self, call: ChatCall) -> UpstreamReply:
        self.calls.append(call)
        return UpstreamReply.from_data(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}
        )

    async def chat_stream(self, call: ChatCall) -> Any:
        self.calls.append(call)
        owner = self

        class Stream:
            def __init__(self) -> None:
                self._it = self._gen()

            async def _gen(self) -> AsyncIterator[bytes]:
                for chunk in owner.chunks:
                    yield chunk if isinstance(chunk, bytes) else orjson.dumps(chunk)

            def __aiter__(self) -> Stream:
                return self

            def drain(self) -> list[bytes]:
                if not owner.burst:
                    return []
                rest: list[bytes] = []
                for chunk in owner.chunks[1:]:
                    rest.append(chunk if isinstance(chunk, bytes) else orjson.dumps(chunk))
                owner.chunks = owner.chunks[:1]
                self._it = self._gen_empty()
                return rest

            async def _gen_empty(self) -> AsyncIterator[bytes]:
                for _ in ():
                    yield b""

            async def __anext__(self) -> bytes:
                return await self._it.__anext__()

            async def aclose(self) -> None:
                owner.closed = True

        return Stream()

    async def embeddings(self, call: JsonCall) -> UpstreamReply:
        return UpstreamReply.from_data({"object": "list", "data": []})

    async def models(self, target: UpstreamTarget) -> list[dict[str, Any]]:
        return [{"id": "local/tiny", "object": "model", "owned_by": "memos-local"}]

    async def aclose(self) -> None:
        return None


def _chunk(content: str | None = None, usage: bool = False) -> dict[str, Any]:
    if usage:
        return {"object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 3}}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": content}}]}


@pytest.fixture
def local(running: RunningProxy) -> Any:
    scripted = ScriptedUpstream([])
    running.services.upstreams.local = scripted
    yield scripted
    running.services.upstreams.local = None


def test_usage_chunk_is_moved_last(api: Api, local: ScriptedUpstream) -> None:
    local.chunks = [_chunk("a"), _chunk(usage=True), _chunk("b")]
    _, lines = api.stream_lines(body(model="local/tiny", stream=True))
    payloads = [orjson.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert [p["choices"] for p in payloads][-1] == [] and payloads[-1]["usage"] == {"total_tokens": 3}
    assert lines[-1] == "data: [DONE]" and local.closed


def test_non_json_event_is_an_error_event(api: Api, local: ScriptedUpstream) -> None:
    local.chunks = [_chunk("a"), b"not json"]
    _, lines = api.stream_lines(body(model="local/tiny", stream=True))
    assert "error" in orjson.loads(lines[-1].removeprefix("data: ")) and local.closed


def test_the_plan_reaches_the_upstream(api: Api, local: ScriptedUpstream, running: RunningProxy) -> None:
    memory = RecordingMemory()
    running.services.chat_memory = memory
    api.post(CHAT, body(model="local/tiny"), headers={"X-Memos-User": "alice"})
    (call,) = local.calls
    assert memory.contexts[0].local_model and call.local_memory is not None
    assert call.local_memory.block == "MEMORY: likes tea" and call.body["messages"] == MESSAGES
    assert call.target.api_key is None
    assert [m["id"] for m in api.get("/models").json()["data"]][-1] == "local/tiny"


def test_a_burst_is_relayed_in_order_up_to_a_bad_event(api: Api, local: ScriptedUpstream) -> None:
    local.burst = True
    local.chunks = [_chunk("a"), _chunk(usage=True), _chunk("b"), b"not json", _chunk("c")]
    _, lines = api.stream_lines(body(model="local/tiny", stream=True))
    contents = [orjson.loads(line.removeprefix("data: ")) for line in lines]
    assert [c["choices"][0]["delta"]["content"] for c in contents[:2]] == ["a", "b"]
    assert "error" in contents[2] and len(contents) == 3
