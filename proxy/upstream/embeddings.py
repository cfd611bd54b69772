"""An EmbeddingsClient (memos.embeddings) over the upstream router (`MEMOS_EMBEDDING_MODEL=upstream:<m>`).

The target is the process's default upstream (MEMOS_UPSTREAM_*), as for the extractor model: memory
embeddings act for no particular client.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from proxy.upstream.base import JsonCall, UpstreamTarget
from proxy.upstream.router import UpstreamKind, UpstreamRouter


class UpstreamEmbeddings:
    def __init__(self, router: UpstreamRouter, target_for: Callable[[UpstreamKind], UpstreamTarget]) -> None:
        self._router = router
        self._target_for = target_for

    async def embeddings(self, model: str, inputs: list[str]) -> list[list[float]]:
        kind, upstream = self._router.route(model)
        call = JsonCall(
            self._target_for(kind),
            {"model": model, "input": inputs, "encoding_format": "float"},
            f"memos-embed-{uuid.uuid4().hex[:16]}",
        )
        reply = await upstream.embeddings(call)
        if reply.status >= 400:
            raise RuntimeError(f"upstream embeddings failed with status {reply.status}")
        data = sorted(reply.data["data"], key=lambda d: d.get("index", 0))
        return [list(map(float, d["embedding"])) for d in data]
