"""Providers that are not OpenAI-compatible (Anthropic, Gemini, Bedrock, ...) through litellm.

litellm is imported on the first call only (it is heavy and not needed on the default path), with
LITELLM_LOCAL_MODEL_COST_MAP=True so that it never fetches its cost map over the network. The model
name goes to litellm as the client sent it (litellm's provider prefix included); every other body
field is passed on as a keyword argument.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import orjson

from proxy.upstream.base import (
    ChatCall,
    JsonCall,
    UpstreamError,
    UpstreamHTTPError,
    UpstreamReply,
    UpstreamTarget,
    UpstreamTimeout,
    UpstreamUnreachable,
)


def _import_litellm() -> ModuleType:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


class LiteLLMUpstream:
    def __init__(self, *, timeout_s: float = 600.0) -> None:
        self._timeout_s = timeout_s
        self._module: ModuleType | None = None

    @property
    def litellm(self) -> ModuleType:
        if self._module is None:
            self._module = _import_litellm()
        return self._module

    def _kwargs(self, target: UpstreamTarget, body: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(body)
        kwargs.setdefault("timeout", self._timeout_s)
        kwargs.setdefault("max_retries", 0)  # the client retries (it sees 429/5xx faithfully); we do not
        if target.api_key:
            kwargs["api_key"] = target.api_key
        if target.base_url:
            kwargs["api_base"] = target.base_url
        if target.headers:
            kwargs["extra_headers"] = dict(target.headers)
        return kwargs

    async def chat(self, call: ChatCall) -> UpstreamReply:
        kwargs = self._kwargs(call.target, call.body)
        kwargs["stream"] = False
        try:
            response = await self.litellm.acompletion(**kwargs)
        except Exception as exc:
            raise self._mapped(exc) from exc
        return UpstreamReply.from_data(response.model_dump(exclude_none=True))

    async def chat_stream(self, call: ChatCall) -> _LiteLLMStream:
        kwargs = self._kwargs(call.target, call.body)
        kwargs["stream"] = True
        try:
            response = await self.litellm.acompletion(**kwargs)
        except Exception as exc:
            raise self._mapped(exc) from exc
        return _LiteLLMStream(response, self)

    async def embeddings(self, call: JsonCall) -> UpstreamReply:
        kwargs = self._kwargs(call.target, call.body)
        try:
            response = await self.litellm.aembedding(**kwargs)
        except Exception as exc:
            raise self._mapped(exc) from exc
        return UpstreamReply.from_data(response.model_dump(exclude_none=True))

    async def models(self, target: UpstreamTarget) -> list[dict[str, Any]]:
        return []  # litellm providers are not listed; their models are named by the client

    async def aclose(self) -> None:
        return None

    def _mapped(self, exc: Exception) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        litellm = self.litellm
        message = str(exc)[:500]
        if isinstance(exc, litellm.Timeout):
            return UpstreamTimeout(message)
        if isinstance(exc, litellm.APIConnectionError):
            return UpstreamUnreachable(message)
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and 400 <= status < 600:
            body = orjson.dumps(
                {"error": {"message": message, "type": type(exc).__name__, "param": None, "code": status}}
            )
            return UpstreamHTTPError(status, body)
        return UpstreamError(message)


class _LiteLLMStream:
    def __init__(self, response: Any, owner: LiteLLMUpstream) -> None:
        self._response = response
        self._owner = owner
        self._events = self._iterate()

    def __aiter__(self) -> _LiteLLMStream:
        return self

    async def __anext__(self) -> bytes:
        return await self._events.__anext__()

    async def _iterate(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response:
                yield orjson.dumps(chunk.model_dump(exclude_none=True))
        except UpstreamError:
            raise
        except Exception as exc:
            raise self._owner._mapped(exc) from exc

    async def aclose(self) -> None:
        await self._events.aclose()  # type: ignore[attr-defined]
        close = getattr(self._response, "aclose", None)
        if close is not None:
            await close()
