"""The official openai SDK, unchanged, through the proxy to a real upstream on loopback."""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from tests.support.proxy import (
    RunningProxy,
    free_port,
    proxy_env,
    proxy_stack,
    run_cli,
)
from tests.support.upstream import FakeUpstream

MESSAGES = [{"role": "user", "content": "hello there"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather of a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
BODY_LIMIT = 256 * 1024
READ_TIMEOUT_S = 2.0


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeUpstream, RunningProxy]]:
    data_dir = tmp_path_factory.mktemp("e2e")
    with proxy_stack(
        data_dir, max_body_bytes=BODY_LIMIT, upstream_read_timeout_s=READ_TIMEOUT_S, key_cache_ttl_s=0
    ) as stack:
        yield stack


@pytest.fixture
def upstream(stack: tuple[FakeUpstream, RunningProxy]) -> FakeUpstream:
    stack[0].reset()
    return stack[0]


def test_plain_completion_passes_every_field_through(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        temperature=0.2,
        n=1,
        logprobs=False,
        response_format={"type": "text"},
        extra_body={"vendor_knob": {"depth": 3}},
        extra_headers={"X-Request-Id": "client-chosen-id"},
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == "You said: hello there"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    assert raw.headers["x-request-id"] == "client-chosen-id"
    sent = upstream.chat_requests[-1]
    assert sent["vendor_knob"] == {"depth": 3}
    assert sent["response_format"] == {"type": "text"}
    assert sent["temperature"] == 0.2 and sent["messages"] == MESSAGES
    assert upstream.requests[-1].headers["x-request-id"] == "client-chosen-id"


def test_streaming_with_usage_chunk_last(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "You said: hello there"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_tool_calls_not_streamed(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS)
    (call,) = completion.choices[0].message.tool_calls or []
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"
    assert call.function.arguments == '{"city": "Paris", "unit": "celsius"}'


def test_tool_calls_streamed(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    name, arguments, finish = "", "", None
    for chunk in client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, tools=TOOLS, tool_choice="auto", stream=True
    ):
        choice = chunk.choices[0]
        for call in choice.delta.tool_calls or []:
            name += call.function.name or "" if call.function else ""
            arguments += call.function.arguments or "" if call.function else ""
        finish = choice.finish_reason or finish
    assert (name, arguments, finish) == ("get_weather", upstream.tool_arguments, "tool_calls")
    assert upstream.chat_requests[-1]["tools"] == TOOLS


async def test_async_streaming(running: RunningProxy, key: str) -> None:
    client = openai.AsyncOpenAI(base_url=running.base_url, api_key=key, max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    text, last = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        last = chunk
    assert text == "You said: hello there"
    assert last is not None and last.choices == [] and last.usage is not None
    await client.close()


def test_models_list(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    assert [m.id for m in client.models.list()] == upstream.models
    assert client.models.retrieve("gpt-4o").id == "gpt-4o"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_embeddings_base64_by_default_and_float(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    result = client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
    assert upstream.requests[-1].json["encoding_format"] == "base64"  # what the SDK asks for
    assert [d.embedding for d in result.data] == [FakeUpstream.vector(t, 32) for t in ("alpha", "beta")]
    result = client.embeddings.create(
        model="text-embedding-3-small", input="alpha", encoding_format="float", dimensions=8
    )
    assert result.data[0].embedding == FakeUpstream.vector("alpha", 8)


def test_embeddings_base64_bytes_untouched(running: RunningProxy, key: str) -> None:
    r = httpx.post(
        f"{running.base_url}/embeddings",
        json={"model": "e", "input": "alpha", "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {key}"},
    )
    packed = base64.b64decode(r.json()["data"][0]["embedding"])
    assert list(struct.unpack("<32f", packed)) == FakeUpstream.vector("alpha", 32)


def test_bad_key_is_authentication_error(running: RunningProxy) -> None:
    client = openai.OpenAI(base_url=running.base_url, api_key="mp-nope-nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 401
    assert info.value.response.headers["x-request-id"]
    assert info.value.body["code"] == "invalid_api_key"  # type: ignore[index]


def test_upstream_429_is_rate_limit_error(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.fail(429, headers={"retry-after": "7"})
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "7"
    assert info.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]  # the upstream's own


def test_upstream_500_relayed_faithfully(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.fail(
        503, body={"error": {"message": "overloaded", "type": "server_error", "param": None, "code": None}}
    )
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 503
    assert info.value.body["message"] == "overloaded"  # type: ignore[index]


def test_malformed_json_is_400_with_envelope(running: RunningProxy, key: str) -> None:
    r = httpx.post(
        f"{running.base_url}/chat/completions",
        content=b'{"model": "gpt-4o-mini", "messages": [',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_json"
    assert r.headers["x-request-id"]


def test_wrong_type_names_the_field(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages="hello")  # type: ignore[arg-type]
    assert info.value.body["param"] == "messages"  # type: ignore[index]


def test_body_over_limit_is_413(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * BODY_LIMIT}]
        )
    assert info.value.status_code == 413
    assert info.value.body["code"] == "request_too_large"  # type: ignore[index]
    assert upstream.chat_requests == []


def test_upstream_down_is_502(proxy: Callable[..., RunningProxy]) -> None:
    down = proxy(upstream_base_url=f"http://127.0.0.1:{free_port()}/v1")
    client = openai.OpenAI(base_url=down.base_url, api_key=down.create_key(), max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 502
    assert info.value.body["code"] == "upstream_unreachable"  # type: ignore[index]


def test_slow_upstream_is_504(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    upstream.hang(READ_TIMEOUT_S + 5)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert info.value.status_code == 504
    assert info.value.body["code"] == "upstream_timeout"  # type: ignore[index]
    assert time.monotonic() - started < READ_TIMEOUT_S + 3


def test_client_disconnect_cancels_streamed_upstream_call(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    upstream.stream_delay_s = 0.3
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "one two three four five six"}],
        stream=True,
    )
    next(iter(stream))
    stream.close()
    assert upstream.wait_for(lambda: upstream.disconnects == ["/v1/chat/completions"], timeout=5)


def test_client_disconnect_cancels_waiting_upstream_call(
    running: RunningProxy, key: str, upstream: FakeUpstream
) -> None:
    upstream.hang(30)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{running.base_url}/chat/completions",
            json={"model": "gpt-4o-mini", "messages": MESSAGES},
            headers={"Authorization": f"Bearer {key}"},
            timeout=httpx.Timeout(5, read=0.5),
        )
    assert upstream.wait_for(lambda: upstream.disconnects == ["/v1/chat/completions"], timeout=5)


def test_keys_cli_prints_key_last_and_revoke_gives_401(running: RunningProxy) -> None:
    env = proxy_env(running.settings.data_dir, running.settings.upstream_base_url)
    created = run_cli("keys", "create", "--tenant", "cli-tenant", "--role", "app", env=env)
    assert created.returncode == 0, created.stderr
    raw_key = created.stdout.strip().splitlines()[-1]
    assert raw_key.startswith("mp-")
    client = openai.OpenAI(base_url=running.base_url, api_key=raw_key, max_retries=0)
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES).choices

    key_id = raw_key.split("-")[1]
    listed = run_cli("keys", "list", "--tenant", "cli-tenant", env=env)
    assert key_id in listed.stdout and raw_key.split("-", 2)[2] not in listed.stdout
    revoked = run_cli("keys", "revoke", key_id, env=env)
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_every_response_has_a_request_id(running: RunningProxy, key: str) -> None:
    for method, path in (
        ("GET", "/healthz"),
        ("GET", "/metrics"),
        ("GET", "/nowhere"),
        ("POST", "/v1/chat/completions"),
    ):
        r = httpx.request(method, running.url + path, headers={"Authorization": f"Bearer {key}"})
        assert r.headers["x-request-id"], (method, path)
