"""Any other /v1/* call (responses, completions, audio, files, ...): relayed to the tenant's upstream as is.

No memory is involved; auth, the tenant's upstream and key, the body limit, x-request-id and metrics
apply as everywhere. The answer is streamed back byte for byte.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from proxy.auth import authenticate
from proxy.disconnect import ClientDisconnected, until_disconnect
from proxy.errors import client_gone_response, not_found, upstream_error_response
from proxy.services import Services
from proxy.targets import upstream_target
from proxy.upstream.base import UpstreamError, relayed_headers
from proxy.upstream.router import UpstreamKind

ROUTE = "/v1/{path:path}"
# memos-proxy's own API lives under these; never relayed.
_OWN_PREFIXES = ("memories", "audit")
_REQUEST_HEADERS = ("content-type", "accept", "openai-beta")
_RESPONSE_HEADERS = ("content-type", "content-encoding", "content-disposition", "cache-control")


def routes() -> list[BaseRoute]:
    return [Route(ROUTE, relay, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])]


async def relay(request: Request) -> Response:
    path: str = request.path_params["path"]
    if path.split("/", 1)[0] in _OWN_PREFIXES:
        raise not_found(f"Unknown path /v1/{path}.")
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    body = await request.body()
    target = upstream_target(services.settings, caller, UpstreamKind.HTTP, request.headers)
    headers = {k: v for k, v in request.headers.items() if k in _REQUEST_HEADERS}
    # The body is relayed still encoded, so only encodings the client accepts may be asked for.
    headers["accept-encoding"] = request.headers.get("accept-encoding", "identity")
    try:
        response = await until_disconnect(
            request.receive,
            services.upstreams.http.send_raw(
                request.method, path, target, headers, body, request.scope["query_string"]
            ),
        )
    except UpstreamError as exc:
        services.metrics.upstream_error(caller.principal.tenant, ROUTE, exc.kind)
        return upstream_error_response(exc)
    except ClientDisconnected:
        return client_gone_response()
    if response.status_code >= 400:
        services.metrics.upstream_error(caller.principal.tenant, ROUTE, str(response.status_code))
    out_headers = {k: v for k, v in response.headers.items() if k in _RESPONSE_HEADERS}
    out_headers.update(relayed_headers(response.headers))
    return StreamingResponse(
        _body(response),
        status_code=response.status_code,
        headers=out_headers,
        background=BackgroundTask(_close, response),
    )


async def _body(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for piece in response.aiter_raw():
            yield piece
    except httpx.HTTPError:
        return  # the client sees a truncated body, as it would from the upstream itself
    finally:
        await _close(response)


async def _close(response: httpx.Response) -> None:
    with anyio.CancelScope(shield=True):
        await response.aclose()
