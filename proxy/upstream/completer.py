"""A TextCompleter (memos.writeback.reader) over the upstream router: the extractor model's
non-streamed calls.

The model name picks the upstream as for clients (`local/<name>` -> local runtime, litellm prefixes ->
litellm, else the HTTP passthrough); the target is the process's default upstream (MEMOS_UPSTREAM_*),
since background extraction acts for no particular client.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from proxy.sse import message_of
from proxy.upstream.base import ChatCall, UpstreamTarget
from proxy.upstream.router import UpstreamKind, UpstreamRouter


class UpstreamCompleter:
    def __init__(
        self,
        router: UpstreamRouter,
        target_for: Callable[[UpstreamKind], UpstreamTarget],
        *,
        max_tokens: int = 1024,
    ) -> None:
        self._router = router
        self._target_for = target_for
        self.max_tokens = max_tokens

    async def complete(self, model: str, messages: list[dict]) -> str:
        kind, upstream = self._router.route(model)
        body = {"model": model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        call = ChatCall(self._target_for(kind), body, f"memos-extract-{uuid.uuid4().hex[:16]}")
        reply = await upstream.chat(call)
        text, _ = message_of(reply.data)
        return text


def default_target(api_key: str | None) -> Callable[[UpstreamKind], UpstreamTarget]:
    """The process's own upstream: its default base URL, and its key for the HTTP passthrough only."""

    def target(kind: UpstreamKind) -> UpstreamTarget:
        return UpstreamTarget(base_url=None, api_key=api_key if kind is UpstreamKind.HTTP else None)

    return target
