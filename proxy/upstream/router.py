"""Which upstream serves a model: `local/<name>` -> the local runtime, litellm prefixes -> litellm,
anything else -> the OpenAI-compatible HTTP passthrough."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from proxy.upstream.base import Upstream
from proxy.upstream.http import HttpUpstream

LOCAL_PREFIX = "local/"


class UpstreamKind(StrEnum):
    HTTP = "http"
    LITELLM = "litellm"
    LOCAL = "local"


class UnknownModel(Exception):
    """The model names an upstream that is not configured (e.g. `local/x` without a local runtime)."""


class UpstreamRouter:
    def __init__(
        self,
        http: HttpUpstream,
        *,
        litellm: Upstream | None = None,
        litellm_prefixes: Sequence[str] = (),
        local: Upstream | None = None,
    ) -> None:
        self.http = http
        self.litellm = litellm
        self.litellm_prefixes = tuple(litellm_prefixes)
        # Set by the composition root when the local runtime is configured (proxy/upstream/local.py).
        self.local = local

    def kind(self, model: str) -> UpstreamKind:
        if model.startswith(LOCAL_PREFIX):
            return UpstreamKind.LOCAL
        if self.litellm_prefixes and model.startswith(self.litellm_prefixes):
            return UpstreamKind.LITELLM
        return UpstreamKind.HTTP

    def route(self, model: str) -> tuple[UpstreamKind, Upstream]:
        kind = self.kind(model)
        if kind is UpstreamKind.LOCAL:
            if self.local is None:
                raise UnknownModel(f"The model `{model}` does not exist: no local runtime is configured")
            return kind, self.local
        if kind is UpstreamKind.LITELLM:
            if self.litellm is None:
                raise UnknownModel(f"The model `{model}` needs the litellm adapter, which is not enabled")
            return kind, self.litellm
        return kind, self.http

    async def aclose(self) -> None:
        for upstream in (self.http, self.litellm, self.local):
            if upstream is not None:
                await upstream.aclose()
