"""The local runtime as an upstream: `local/<name>` models answered in the OpenAI wire format.

The memory the plan chose arrives in `call.local_memory` (a memos.local.runtime.LocalMemory): its block
goes first (prefilled now in plaintext mode, taken from its KV cache in activation mode) and its
adapter, if any, is active for the call (parametric mode). Without it the conversation is served as it
came. Generation runs on the runtime's threads; streamed answers keep the upstream contract
(chunk JSON payloads, usage last when `stream_options.include_usage`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

import orjson

from memos import GenerationResult, MemoryMode, SamplingParams, build_prompt
from proxy.upstream.base import (
    ChatCall,
    JsonCall,
    UpstreamError,
    UpstreamReply,
    UpstreamTarget,
)
from proxy.upstream.router import LOCAL_PREFIX

if TYPE_CHECKING:
    from memos import LocalModels

OWNER = "memos-local"


class LocalRequestError(UpstreamError):
    error_type = "invalid_request_error"


class LocalUpstream:
    def __init__(self, models: LocalModels) -> None:
        self.registry = models.registry
        self.runtime = models.runtime

    async def _prepare(self, call: ChatCall) -> tuple[Any, Any, Any, dict[str, Any]]:

        body = call.body
        model = str(body.get("model", ""))
        name = self.registry.resolve(model)
        if name is None:
            raise LocalRequestError(f"The model `{model}` does not exist", status=404, code="model_not_found")
        if body.get("tools") or body.get("functions"):
            raise LocalRequestError("Local models do not support tools.", status=400, code="unsupported")
        choices = body.get("n")
        if choices is not None and (isinstance(choices, bool) or not isinstance(choices, int)):
            # Checked here, not by int(): a string or float `n` is the client's error (400), not ours.
            raise LocalRequestError(
                "Invalid type for 'n': expected an integer.", status=400, code="invalid_type"
            )
        if choices not in (None, 1):
            raise LocalRequestError("Local models answer with one choice.", status=400, code="unsupported")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise LocalRequestError(
                "`messages` must be a non-empty list.", status=400, code="invalid_messages"
            )
        loaded = await self.registry.get(name)
        memory = call.local_memory
        kv = adapter = block = None
        if memory is not None:
            block = memory.block
            # Parametric mode, or activation with the adapter too (its cache was built under it).
            adapter = memory.adapter if memory.mode is not MemoryMode.PLAINTEXT else None
            kv = memory.kv if memory.mode is MemoryMode.ACTIVATION else None
        from jinja2 import TemplateError

        try:
            params = SamplingParams.from_body(body)
            prompt = await self.runtime.run(build_prompt, loaded.tokenizer, messages, block)
        except (TypeError, ValueError) as exc:
            raise LocalRequestError(f"Invalid request: {exc}", status=400, code="invalid_request") from None
        except TemplateError as exc:
            message = f"The model's chat template rejected these messages: {exc}"
            raise LocalRequestError(message, status=400, code="invalid_messages") from None
        return loaded, prompt, params, {"kv": kv, "adapter": adapter}

    async def chat(self, call: ChatCall) -> UpstreamReply:
        loaded, prompt, params, options = await self._prepare(call)
        result = await self.runtime.complete(loaded, prompt, params, **options)
        return UpstreamReply.from_data(
            {
                "id": _completion_id(call),
                "object": "chat.completion",
                "created": int(time.time()),
                "model": call.body.get("model"),
                "system_fingerprint": f"{OWNER}-{loaded.fingerprint[:12]}",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": result.text},
                        "finish_reason": result.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": _usage(result),
            }
        )

    async def chat_stream(self, call: ChatCall) -> AsyncGenerator[bytes, None]:
        loaded, prompt, params, options = await self._prepare(call)
        return _stream(self.runtime, call, loaded, prompt, params, options)

    async def embeddings(self, call: JsonCall) -> UpstreamReply:
        raise LocalRequestError("Local models do not serve embeddings.", status=400, code="unsupported")

    async def models(self, target: UpstreamTarget) -> list[dict[str, Any]]:
        return [
            {"id": LOCAL_PREFIX + name, "object": "model", "created": 0, "owned_by": OWNER}
            for name in self.registry.names()
        ]

    async def aclose(self) -> None:
        self.runtime.close()


def _completion_id(call: ChatCall) -> str:
    return f"chatcmpl-{call.request_id}"


def _usage(result: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": result.cached_tokens},
    }


async def _stream(
    runtime: Any, call: ChatCall, loaded: Any, prompt: Any, params: Any, options: dict[str, Any]
) -> AsyncGenerator[bytes, None]:

    base = {
        "id": _completion_id(call),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": call.body.get("model"),
        "system_fingerprint": f"{OWNER}-{loaded.fingerprint[:12]}",
    }

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return orjson.dumps({**base, "choices": [choice]})

    include_usage = bool((call.body.get("stream_options") or {}).get("include_usage"))
    events = runtime.stream(loaded, prompt, params, **options)
    started = False
    try:
        async for item in events:
            if not started:
                # Sent once the first token exists, so a failure before it keeps its HTTP status.
                started = True
                yield chunk({"role": "assistant", "content": ""})
            if isinstance(item, GenerationResult):
                yield chunk({}, item.finish_reason)
                if include_usage:
                    yield orjson.dumps({**base, "choices": [], "usage": _usage(item)})
            elif item:
                yield chunk({"content": item})
    finally:
        await events.aclose()
