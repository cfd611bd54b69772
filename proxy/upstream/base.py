"""The one small interface every upstream implements (as httpx does with transports).

An upstream answers OpenAI-shaped calls and knows nothing of the client's HTTP request:

- `chat(call)` -> `UpstreamReply` (the JSON body of a non-streamed completion, raw bytes kept);
- `chat_stream(call)` -> `EventStream`: an async iterator over the `data:` payloads of the upstream's
  SSE events (JSON bytes of each `chat.completion.chunk`, `[DONE]` not included; it simply ends).
  It may also offer `drain() -> list[bytes]`: payloads already received, returned without waiting,
  which the relay then forwards together with the current one in a single write;
- `embeddings(call)` -> `UpstreamReply`; `models(target)` -> list of model objects;
- optionally (`ResponsesUpstream`) `responses(call)` and `responses_stream(call)`, the same for the
  Responses API (`POST /responses`; its stream's payloads are its typed events);
- `aclose()` releases pooled connections.

Failures are raised, never returned: `UpstreamHTTPError` (the upstream answered >= 400; status,
body and the headers worth relaying are kept so the proxy can pass them on faithfully),
`UpstreamUnreachable` (502), `UpstreamTimeout` (504). The same exceptions may come out of an
`EventStream` mid-stream. The proxy route owns SSE framing, memory and error envelopes.

Implementations: `proxy.upstream.http.HttpUpstream` (OpenAI-compatible passthrough, the default),
`proxy.upstream.litellm_adapter.LiteLLMUpstream` (lazy litellm) and `proxy.upstream.local` (the local
runtime, which reads `call.local_memory`). `proxy.upstream.router.UpstreamRouter` picks one
per model name.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

if TYPE_CHECKING:
    from memos import LocalMemory


@dataclass(frozen=True)
class UpstreamTarget:
    """Where and as whom to call: resolved per request from settings, the tenant policy and the client."""

    base_url: str | None  # None: the adapter's own default (e.g. litellm's provider endpoint)
    api_key: str | None = field(default=None, repr=False)
    # Extra headers sent upstream as they are (e.g. OpenAI-Organization in pass-through mode).
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ChatCall:
    target: UpstreamTarget
    body: dict[str, Any]  # what is sent (memory's plan decided it)
    request_id: str
    # A local model's memory inputs (block, KV cache, adapter), from the plan; remote upstreams ignore it.
    local_memory: LocalMemory | None = None


@dataclass
class JsonCall:
    """A call with a plain JSON body (embeddings)."""

    target: UpstreamTarget
    body: dict[str, Any]
    request_id: str


@dataclass
class UpstreamReply:
    """A complete JSON answer. `content` is relayed to the client byte for byte."""

    content: bytes
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)

    @cached_property
    def data(self) -> Any:
        return orjson.loads(self.content)

    @classmethod
    def from_data(cls, data: Any, status: int = 200) -> UpstreamReply:
        reply = cls(orjson.dumps(data), status)
        reply.__dict__["data"] = data
        return reply


class EventStream(Protocol):
    """The data payloads of an upstream SSE stream; `aclose()` cancels the upstream call."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def __anext__(self) -> bytes: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class Upstream(Protocol):
    async def chat(self, call: ChatCall) -> UpstreamReply: ...

    async def chat_stream(self, call: ChatCall) -> EventStream: ...

    async def embeddings(self, call: JsonCall) -> UpstreamReply: ...

    async def models(self, target: UpstreamTarget) -> list[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class ResponsesUpstream(Protocol):
    """An upstream that also serves the Responses API (`POST /responses`): the HTTP passthrough. Its
    stream's payloads are the API's events (`response.created` ... `response.completed`), each naming
    its type; the litellm adapter and the local runtime do not offer it."""

    async def responses(self, call: ChatCall) -> UpstreamReply: ...

    async def responses_stream(self, call: ChatCall) -> EventStream: ...


# Headers of an upstream answer worth relaying to the client (rate-limit state, retry advice).
RELAYED_HEADER_PREFIXES = ("x-ratelimit-", "retry-after", "openai-processing-ms")


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith(RELAYED_HEADER_PREFIXES)}


class UpstreamError(Exception):
    """A failed upstream call, with the HTTP status and OpenAI error fields the client should see."""

    status: int = 502
    error_type: str = "upstream_error"
    code: str | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers: dict[str, str] = {}
        # The upstream's own error body when it was an OpenAI envelope: relayed unchanged.
        self.body: bytes | None = None

    @property
    def kind(self) -> str:
        """For metrics: the HTTP status the upstream answered, or the failure's code."""
        return self.code or str(self.status)

    def envelope(self) -> dict[str, Any]:
        if self.body is not None:
            try:
                data = orjson.loads(self.body)
                if isinstance(data, dict) and isinstance(data.get("error"), dict):
                    return data
            except orjson.JSONDecodeError:
                pass
        return {"error": {"message": self.message, "type": self.error_type, "param": None, "code": self.code}}


class UpstreamHTTPError(UpstreamError):
    """The upstream answered with an error status; relayed with that status."""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        text = body[:300].decode("utf-8", "replace").strip() or "(empty body)"
        super().__init__(f"upstream answered HTTP {status}: {text}", status=status)
        self.error_type = "rate_limit_error" if status == 429 else "upstream_error"
        self.body = body
        self.headers = relayed_headers(headers or {})


class UpstreamUnreachable(UpstreamError):
    status = 502
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    error_type = "timeout_error"
    code = "upstream_timeout"
