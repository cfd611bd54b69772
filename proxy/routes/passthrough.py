"""Any other /v1/* call (legacy completions, stored responses `GET/DELETE /v1/responses/{id}`, audio,
files, ...): relayed to the tenant's upstream as is. (`POST /v1/chat/completions` and `POST /v1/responses`
have memory: proxy/routes/chat.py and responses.py.)

No memory is involved; auth, the `chat` right, the tenant's model allow-list (for a JSON body naming a
model), the tenant's upstream and key, the body limit, x-request-id and metrics apply as everywhere.
The answer is streamed back byte for byte.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import anyio
import httpx
import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from proxy.auth import Caller, authenticate, authorize_upstream_use
from proxy.disconnect import ClientDisconnected, until_disconnect
from proxy.errors import ApiError, client_gone_response, not_found, upstream_error_response
from proxy.services import Services
from proxy.targets import check_model_allowed, upstream_target
from proxy.upstream.base import UpstreamError, relayed_headers
from proxy.upstream.router import UpstreamKind
from proxy.wire import check_json_shape, require_string

ROUTE = "/v1/{path:path}"
# memos-proxy's own API lives under these; never relayed.
_OWN_PREFIXES = ("memories", "audit", "users")
_REQUEST_HEADERS = ("content-type", "accept", "openai-beta")
_RESPONSE_HEADERS = ("content-type", "content-encoding", "content-disposition", "cache-control")


def routes() -> list[BaseRoute]:
    return [Route(ROUTE, relay, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])]


def allowed_methods(routes: Iterable[BaseRoute], path: str) -> list[str]:
    """The methods the proxy's own routes answer at `path` (the catch-all aside), for a 405's Allow."""
    found: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.path != ROUTE and route.path_regex.match(path):
            found |= route.methods or set()
    return sorted(found)


def method_not_allowed(request: Request) -> ApiError | None:
    """405 with `Allow` when one of the proxy's own routes has this path but not this method."""
    allowed = allowed_methods(request.app.router.routes, request.url.path)
    if not allowed:
        return None
    return ApiError(
        405,
        f"Method Not Allowed: {request.method} {request.url.path}",
        code="method_not_allowed",
        headers={"Allow": ", ".join(allowed)},
    )


async def relay(request: Request) -> Response:
    path: str = request.path_params["path"]
    if path.split("/", 1)[0] in _OWN_PREFIXES:
        raise method_not_allowed(request) or not_found(f"Unknown path /v1/{path}.")
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    body = await request.body()
    _check_allowed(request, caller, body)
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


def _check_allowed(request: Request, caller: Caller, body: bytes) -> None:
    """What the chat route checks, since a relayed call spends the same upstream budget: the key's
    right to chat, and for a JSON object body that names a model, the tenant's allow-list.

    Any body is tried as JSON whatever its content type, so leaving the header off does not skip
    the check; a body that is not JSON is relayed as is (the upstream cannot read a model in it
    either)."""
    data: object = None
    if body:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
    if data is not None:
        check_json_shape(body, data)  # the same bounds as every JSON body the proxy reads
    fields = data if isinstance(data, dict) else {}
    authorize_upstream_use(request, caller, fields)
    if "model" in fields:
        check_model_allowed(caller.policy, require_string(fields, "model"))


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
