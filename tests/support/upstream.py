"""A real OpenAI-compatible upstream on loopback for tests: uvicorn in a background thread.

    with FakeUpstream() as upstream:            # or the `upstream` fixture (tests/conftest.py)
        upstream.base_url                       # "http://127.0.0.1:<port>/v1"
        ...point the proxy (or any client) at it...
        upstream.requests[-1].json              # what reached the upstream (body, headers, path)

Endpoints (under /v1):
- POST /chat/completions, non-streamed and streamed (SSE, `data: [DONE]`). The reply text is, in
  order of precedence: the next entry of `upstream.replies` (a deque; `upstream.reply("...")` appends),
  `upstream.responder(body)` if set, else `"You said: <last user message>"`. When `stream_options.
  include_usage` is true the stream ends with a usage chunk whose `choices` is `[]`. When `tools` is
  given (and tool_choice is not "none") the answer is a call of the first tool with arguments
  `upstream.tool_arguments` (streamed in pieces when streaming). `n` > 1 gives n identical choices.
  `upstream.stream_delay_s` pauses between streamed chunks; `upstream.chunk_words` words per chunk.
- POST /responses (the Responses API), non-streamed (a `response` object) and streamed (SSE with
  `event:` lines and the real event sequence: response.created, response.in_progress,
  response.output_item.added, response.content_part.added, response.output_text.delta...,
  response.output_text.done, response.content_part.done, response.output_item.done,
  response.completed; each with its `sequence_number`; no `[DONE]`). The reply text comes as for
  chat (`replies`, `responder(body)`, else `"You said: <last user text of input>"`); with a function
  tool in `tools` (and tool_choice not "none") the output is a function_call with
  `upstream.tool_arguments`. `instructions`, `previous_response_id`, `store`, `user`, `metadata` are
  echoed in the response object as the API does. `stream_error` sends an `error` event; `drop` cuts
  the stream.
- GET /models (ids from `upstream.models`), GET /models/{id}.
- POST /embeddings: deterministic unit vectors (sha256 of the text seeds them) of `dimensions`
  (default `upstream.embedding_dim`), as float lists or base64 little-endian float32 as
  `encoding_format` asks. `FakeUpstream.vector(text, dim)` gives the same vector for assertions.
- Auth: with `upstream.api_key` set, requests without `Authorization: Bearer <api_key>` get 401.

Scripted failures (FIFO, each consumed by the next matching request; `path`/`model` narrow them):
- `upstream.fail(status=429, times=1, body=None, headers=None)`: answer an error status (OpenAI
  envelope by default; 429 carries `retry-after: 0`).
- `upstream.hang(seconds=30, times=1)`: answer nothing for that long (a slow upstream), noticing
  when the client goes away.
- `upstream.drop(times=1, after_chunks=0)`: start the answer and then cut the connection (after
  that many streamed chunks for streams; mid-body for plain answers).
- `upstream.stream_error(after_chunks=1)`: a streamed answer that sends an `{"error": ...}` event.
- `upstream.behave_for_model(model, behaviour)`: a standing behaviour for every request naming that
  model (behaviour: a `Behaviour(kind=..., ...)`).

Observations: `requests` (every request: method, path, headers (lower-case names), body bytes, json,
client address),
`chat_requests` (only chat bodies), `responses_requests` (only POST /responses bodies), `disconnects`
(paths of requests whose client went away before the answer was complete: what a cancelled upstream
call looks like from here), `wait_for(pred)`.
`reset()` clears scripts and observations. Thread-safe for the simple uses above.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.types import Message, Receive, Scope, Send


@dataclass
class Behaviour:
    kind: str  # "fail" | "hang" | "drop" | "stream_error"
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 30.0
    after_chunks: int = 0
    path: str | None = None  # only requests to this path (e.g. "/v1/embeddings")
    model: str | None = None  # only requests naming this model
    times: int = 1

    def matches(self, path: str, model: str | None) -> bool:
        return (self.path is None or self.path == path) and (self.model is None or self.model == model)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client: tuple[str, int] | None = None  # the caller's address: equal ports mean a reused connection

    @property
    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class _Dropped(Exception):
    """Raised after the response started: uvicorn then closes the connection mid-answer."""


class FakeUpstream:
    def __init__(self, *, api_key: str | None = None, models: list[str] | None = None) -> None:
        self.api_key = api_key
        self.models = models or ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
        self.embedding_dim = 32
        self.tool_arguments = '{"city": "Paris", "unit": "celsius"}'
        self.stream_delay_s = 0.0
        self.chunk_words = 1
        self.replies: deque[str] = deque()
        self.responder: Callable[[dict[str, Any]], str] | None = None
        self.requests: list[RecordedRequest] = []
        self._response_count = 0
        self.disconnects: list[str] = []
        self._script: list[Behaviour] = []
        self._by_model: dict[str, Behaviour] = {}
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeUpstream:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self,
            log_config=None,
            log_level="critical",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-upstream", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake upstream did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ scripting

    def reply(self, *texts: str) -> None:
        self.replies.extend(texts)

    def _add(self, behaviour: Behaviour) -> None:
        with self._lock:
            self._script.append(behaviour)

    def fail(
        self,
        status: int = 500,
        *,
        times: int = 1,
        body: Any = None,
        headers: dict[str, str] | None = None,
        path: str | None = None,
        model: str | None = None,
    ) -> None:
        self._add(
            Behaviour(
                "fail", status=status, body=body, headers=headers or {}, times=times, path=path, model=model
            )
        )

    def hang(
        self, seconds: float = 30.0, *, times: int = 1, path: str | None = None, model: str | None = None
    ) -> None:
        self._add(Behaviour("hang", seconds=seconds, times=times, path=path, model=model))

    def drop(
        self, *, times: int = 1, after_chunks: int = 0, path: str | None = None, model: str | None = None
    ) -> None:
        self._add(Behaviour("drop", after_chunks=after_chunks, times=times, path=path, model=model))

    def stream_error(self, *, after_chunks: int = 1, status: int = 500, times: int = 1) -> None:
        self._add(Behaviour("stream_error", after_chunks=after_chunks, status=status, times=times))

    def behave_for_model(self, model: str, behaviour: Behaviour) -> None:
        self._by_model[model] = behaviour

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self._by_model.clear()
            self.requests.clear()
            self.disconnects.clear()
            self.replies.clear()
        self.responder = None
        self.stream_delay_s = 0.0

    def _next_behaviour(self, path: str, model: str | None) -> Behaviour | None:
        if model is not None and model in self._by_model:
            return self._by_model[model]
        with self._lock:
            for behaviour in self._script:
                if behaviour.matches(path, model):
                    behaviour.times -= 1
                    if behaviour.times <= 0:
                        self._script.remove(behaviour)
                    return behaviour
        return None

    # ------------------------------------------------------------------ observing

    @property
    def chat_requests(self) -> list[dict[str, Any]]:
        return [r.json for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def responses_requests(self) -> list[dict[str, Any]]:
        return [r.json for r in self.requests if r.method == "POST" and r.path == "/v1/responses"]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    @staticmethod
    def vector(text: str, dim: int) -> list[float]:
        """The deterministic unit vector this upstream answers for `text`."""
        seed = hashlib.sha256(text.encode("utf-8")).digest()
        values: list[float] = []
        counter = 0
        while len(values) < dim:
            block = hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
            values.extend((b - 127.5) / 127.5 for b in block)
            counter += 1
        values = values[:dim]
        norm = sum(v * v for v in values) ** 0.5 or 1.0
        return [float(struct.unpack("<f", struct.pack("<f", v / norm))[0]) for v in values]

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope["path"]
        with self._lock:
            client = tuple(scope["client"]) if scope.get("client") else None
            self.requests.append(RecordedRequest(scope["method"], path, headers, body, client))  # type: ignore[arg-type]
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            await _json(
                send,
                401,
                _envelope("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
            )
            return
        data: Any = None
        if body:
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                await _json(send, 400, _envelope("invalid JSON", "invalid_request_error"))
                return
        model = data.get("model") if isinstance(data, dict) else None
        behaviour = self._next_behaviour(path, model)
        try:
            await self._dispatch(scope, receive, send, path, data, behaviour)
        except _Dropped:
            raise
        except (OSError, asyncio.CancelledError):
            with self._lock:
                self.disconnects.append(path)
            raise

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, path: str, data: Any, behaviour: Behaviour | None
    ) -> None:
        method = scope["method"]
        if behaviour is not None and behaviour.kind == "fail":
            headers = dict(behaviour.headers)
            if behaviour.status == 429:
                headers.setdefault("retry-after", "0")
                headers.setdefault("x-ratelimit-remaining-requests", "0")
            if isinstance(behaviour.body, bytes):
                await _raw(send, behaviour.status, behaviour.body, "text/plain", headers)
            else:
                body = behaviour.body or _envelope(
                    f"scripted failure {behaviour.status}",
                    "rate_limit_error" if behaviour.status == 429 else "server_error",
                    "rate_limit_exceeded" if behaviour.status == 429 else None,
                )
                await _json(send, behaviour.status, body, headers)
            return
        if behaviour is not None and behaviour.kind == "hang":
            if await _disconnected_within(receive, behaviour.seconds):
                with self._lock:
                    self.disconnects.append(path)
                return
        if method == "GET" and path == "/v1/models":
            await _json(send, 200, {"object": "list", "data": [_model(m) for m in self.models]})
        elif method == "GET" and path.startswith("/v1/models/"):
            name = path.removeprefix("/v1/models/")
            if name in self.models:
                await _json(send, 200, _model(name))
            else:
                await _json(
                    send, 404, _envelope(f"The model `{name}` does not exist", "invalid_request_error")
                )
        elif method == "POST" and path == "/v1/embeddings":
            await self._embeddings(send, data, behaviour)
        elif method == "POST" and path == "/v1/chat/completions":
            if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
                await _json(send, 400, _envelope("messages is required", "invalid_request_error"))
            elif data.get("stream"):
                await self._stream(send, receive, path, data, behaviour)
            else:
                await self._complete(send, data, behaviour)
        elif method == "POST" and path == "/v1/responses":
            given = data.get("input") if isinstance(data, dict) else None
            if not isinstance(data, dict) or not isinstance(given, str | list):
                await _json(send, 400, _envelope("input is required", "invalid_request_error"))
            elif data.get("stream"):
                await self._responses_stream(send, receive, path, data, behaviour)
            else:
                await self._responses_once(send, data, behaviour)
        else:
            await _json(send, 404, _envelope(f"no route {method} {path}", "invalid_request_error"))

    def _reply_text(self, data: dict[str, Any]) -> str:
        with self._lock:
            if self.replies:
                return self.replies.popleft()
        if self.responder is not None:
            return self.responder(data)
        last = ""
        given = data.get("input")
        if isinstance(given, str):
            return f"You said: {given}"
        if isinstance(given, list):
            for item in given:
                if isinstance(item, dict) and item.get("role") == "user":
                    content = item.get("content")
                    if isinstance(content, list):
                        content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
                    last = str(content)
            return f"You said: {last}"
        for message in data.get("messages", []):
            if isinstance(message, dict) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, list):
                    content = " ".join(p.get("text", "") for p in content if isinstance(p, dict))
                last = str(content)
        return f"You said: {last}"

    @staticmethod
    def _wants_tool(data: dict[str, Any]) -> dict[str, Any] | None:
        tools = data.get("tools")
        if not tools or data.get("tool_choice") == "none":
            return None
        return tools[0].get("function", {}) if isinstance(tools[0], dict) else None

    async def _complete(self, send: Send, data: dict[str, Any], behaviour: Behaviour | None) -> None:
        created = int(time.time())
        tool = self._wants_tool(data)
        text = None if tool else self._reply_text(data)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if tool:
            message["tool_calls"] = [
                {
                    "id": "call_fake_1",
                    "type": "function",
                    "function": {"name": tool.get("name", "tool"), "arguments": self.tool_arguments},
                }
            ]
        n = data.get("n") or 1
        prompt_tokens = _count_tokens(data)
        completion_tokens = len((text or self.tool_arguments).split())
        body = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": created,
            "model": data.get("model"),
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": i,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if tool else "stop",
                }
                for i in range(n)
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        content = orjson.dumps(body)
        if behaviour is not None and behaviour.kind == "drop":
            await send(_start(200, "application/json", len(content)))
            await send(
                {"type": "http.response.body", "body": content[: len(content) // 2], "more_body": True}
            )
            raise _Dropped
        await _raw(send, 200, content, "application/json")

    async def _stream(
        self, send: Send, receive: Receive, path: str, data: dict[str, Any], behaviour: Behaviour | None
    ) -> None:
        created = int(time.time())
        model = data.get("model")
        tool = self._wants_tool(data)
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model}
        base["system_fingerprint"] = "fp_fake"

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            payload = {
                **base,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        events: list[bytes] = [chunk({"role": "assistant", "content": "" if not tool else None})]
        if tool:
            arguments = self.tool_arguments
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": "call_fake_1",
                                "type": "function",
                                "function": {"name": tool.get("name", "tool"), "arguments": ""},
                            }
                        ]
                    }
                )
            )
            step = max(1, len(arguments) // 4)
            for i in range(0, len(arguments), step):
                events.append(
                    chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[i : i + step]}}]})
                )
            events.append(chunk({}, "tool_calls"))
            completion_text = arguments
        else:
            text = self._reply_text(data)
            words = text.split(" ")
            size = max(1, self.chunk_words)
            pieces = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
            for index, piece in enumerate(pieces):
                events.append(chunk({"content": piece if index == 0 else " " + piece}))
            events.append(chunk({}, "stop"))
            completion_text = text
        options = data.get("stream_options") or {}
        if options.get("include_usage"):
            prompt_tokens = _count_tokens(data)
            completion_tokens = len(completion_text.split())
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            events.append(b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n")
        events.append(b"data: [DONE]\n\n")

        await send(_start(200, "text/event-stream", None))
        try:
            for index, event in enumerate(events):
                if behaviour is not None and index == behaviour.after_chunks:
                    if behaviour.kind == "drop":
                        raise _Dropped
                    if behaviour.kind == "stream_error":
                        error = _envelope("scripted stream failure", "server_error")
                        await send(
                            {
                                "type": "http.response.body",
                                "body": b"data: " + orjson.dumps(error) + b"\n\n",
                                "more_body": True,
                            }
                        )
                        break
                await send({"type": "http.response.body", "body": event, "more_body": True})
                if self.stream_delay_s and await _disconnected_within(receive, self.stream_delay_s):
                    with self._lock:
                        self.disconnects.append(path)
                    return
        except OSError:
            with self._lock:
                self.disconnects.append(path)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    # ------------------------------------------------------------------ the Responses API

    def _response_object(
        self, data: dict[str, Any], output: list[dict[str, Any]], status: str
    ) -> dict[str, Any]:
        with self._lock:
            self._response_count += 1
            number = self._response_count
        input_tokens = len(orjson.dumps(data.get("input"))) // 4
        output_tokens = sum(
            len(str(part.get("text", "")).split()) for item in output for part in item.get("content", [])
        ) + sum(len(str(item.get("arguments", "")).split()) for item in output)
        done = status == "completed"
        return {
            "id": f"resp_fake_{number}",
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": data.get("instructions"),
            "max_output_tokens": data.get("max_output_tokens"),
            "model": data.get("model"),
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": data.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "store": data.get("store", True),
            "temperature": 1.0,
            "text": {"format": {"type": "text"}},
            "tool_choice": data.get("tool_choice", "auto"),
            "tools": data.get("tools", []),
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": (
                {
                    "input_tokens": input_tokens,
                    "input_tokens_details": {"cached_tokens": 0},
                    "output_tokens": output_tokens,
                    "output_tokens_details": {"reasoning_tokens": 0},
                    "total_tokens": input_tokens + output_tokens,
                }
                if done
                else None
            ),
            "user": data.get("user"),
            "metadata": data.get("metadata") or {},
        }

    @staticmethod
    def _response_tool(data: dict[str, Any]) -> dict[str, Any] | None:
        tools = data.get("tools")
        if not tools or data.get("tool_choice") == "none":
            return None
        first = tools[0]
        return first if isinstance(first, dict) and first.get("type") == "function" else None

    def _response_output(self, data: dict[str, Any]) -> dict[str, Any]:
        """The one output item of a completed response: a message, or a call of the first function tool."""
        tool = self._response_tool(data)
        if tool is not None:
            return {
                "id": "fc_fake_1",
                "type": "function_call",
                "status": "completed",
                "arguments": self.tool_arguments,
                "call_id": "call_fake_1",
                "name": tool.get("name", "tool"),
            }
        text = self._reply_text(data)
        return {
            "id": "msg_fake_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
        }

    async def _responses_once(self, send: Send, data: dict[str, Any], behaviour: Behaviour | None) -> None:
        content = orjson.dumps(self._response_object(data, [self._response_output(data)], "completed"))
        if behaviour is not None and behaviour.kind == "drop":
            await send(_start(200, "application/json", len(content)))
            await send(
                {"type": "http.response.body", "body": content[: len(content) // 2], "more_body": True}
            )
            raise _Dropped
        await _raw(send, 200, content, "application/json")

    def _responses_events(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of a streamed response, in the API's order (sequence numbers added by the caller)."""
        done = self._response_output(data)
        started = self._response_object(data, [], "in_progress")
        events: list[dict[str, Any]] = [
            {"type": "response.created", "response": started},
            {"type": "response.in_progress", "response": started},
        ]
        item_id = done["id"]
        if done["type"] == "function_call":
            arguments = done["arguments"]
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": 0,
                    "item": {**done, "status": "in_progress", "arguments": ""},
                }
            )
            step = max(1, len(arguments) // 4)
            for i in range(0, len(arguments), step):
                events.append(
                    {
                        "type": "response.function_call_arguments.delta",
                        "item_id": item_id,
                        "output_index": 0,
                        "delta": arguments[i : i + step],
                    }
                )
            events.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": item_id,
                    "output_index": 0,
                    "name": done["name"],
                    "arguments": arguments,
                }
            )
        else:
            text = done["content"][0]["text"]
            empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append(
                {
                    "type": "response.output_item.added",
                    "output_index": 0,
                    "item": {**done, "status": "in_progress", "content": []},
                }
            )
            where = {"item_id": item_id, "output_index": 0, "content_index": 0}
            events.append({"type": "response.content_part.added", **where, "part": empty_part})
            words = text.split(" ")
            size = max(1, self.chunk_words)
            pieces = [" ".join(words[i : i + size]) for i in range(0, len(words), size)]
            for index, piece in enumerate(pieces):
                delta = piece if index == 0 else " " + piece
                events.append({"type": "response.output_text.delta", **where, "delta": delta, "logprobs": []})
            events.append({"type": "response.output_text.done", **where, "text": text, "logprobs": []})
            events.append({"type": "response.content_part.done", **where, "part": done["content"][0]})
        events.append({"type": "response.output_item.done", "output_index": 0, "item": done})
        final = self._response_object(data, [done], "completed")
        final["id"] = started["id"]
        events.append({"type": "response.completed", "response": final})
        return events

    async def _responses_stream(
        self, send: Send, receive: Receive, path: str, data: dict[str, Any], behaviour: Behaviour | None
    ) -> None:
        events = self._responses_events(data)
        await send(_start(200, "text/event-stream", None))
        try:
            for index, event in enumerate(events):
                event["sequence_number"] = index
                if behaviour is not None and index == behaviour.after_chunks:
                    if behaviour.kind == "drop":
                        raise _Dropped
                    if behaviour.kind == "stream_error":
                        error = {
                            "type": "error",
                            "code": "server_error",
                            "message": "scripted stream failure",
                            "param": None,
                            "sequence_number": index,
                        }
                        await send({"type": "http.response.body", "body": _sse(error), "more_body": True})
                        break
                await send({"type": "http.response.body", "body": _sse(event), "more_body": True})
                if self.stream_delay_s and await _disconnected_within(receive, self.stream_delay_s):
                    with self._lock:
                        self.disconnects.append(path)
                    return
        except OSError:
            with self._lock:
                self.disconnects.append(path)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _embeddings(self, send: Send, data: Any, behaviour: Behaviour | None) -> None:
        if not isinstance(data, dict) or data.get("input") is None:
            await _json(send, 400, _envelope("input is required", "invalid_request_error"))
            return
        inputs = data["input"]
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
            inputs = [inputs]
        dim = int(data.get("dimensions") or self.embedding_dim)
        fmt = data.get("encoding_format") or "float"
        items = []
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(str(t) for t in item)
            vector = self.vector(text, dim)
            embedding: Any = vector
            if fmt == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dim}f", *vector)).decode("ascii")
            items.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(len(str(i).split()) for i in inputs)
        await _json(
            send,
            200,
            {
                "object": "list",
                "data": items,
                "model": data.get("model"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            },
        )


def _sse(event: dict[str, Any]) -> bytes:
    """A Responses API event as the API frames it: `event: <type>` and its JSON on a `data:` line."""
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


def _count_tokens(data: dict[str, Any]) -> int:
    return sum(
        len(str(m.get("content", "")).split()) for m in data.get("messages", []) if isinstance(m, dict)
    )


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 1700000000, "owned_by": "fake-upstream"}


def _envelope(message: str, type: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


def _start(
    status: int, content_type: str, length: int | None, headers: dict[str, str] | None = None
) -> Message:
    raw = [(b"content-type", content_type.encode())]
    if length is not None:
        raw.append((b"content-length", str(length).encode()))
    for key, value in (headers or {}).items():
        raw.append((key.lower().encode(), value.encode()))
    return {"type": "http.response.start", "status": status, "headers": raw}


async def _raw(
    send: Send, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> None:
    await send(_start(status, content_type, len(body), headers))
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
    await _raw(send, status, orjson.dumps(data), "application/json", headers)


async def _disconnected_within(receive: Receive, seconds: float) -> bool:
    """Wait `seconds`; True as soon as the client disconnects."""

    async def wait() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    try:
        await asyncio.wait_for(wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
