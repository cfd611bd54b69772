"""GET /v1/models, GET /v1/models/{id}, POST /v1/embeddings: relayed to the tenant's upstream.

Models: the upstream's list (limited to the tenant's `upstream.allowed_models`) plus the local
runtime's `local/<name>` models. Embeddings pass through untouched, float or base64 alike.
"""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.auth import Caller, authenticate, authorize_upstream_use
from proxy.disconnect import ClientDisconnected, until_disconnect
from proxy.errors import (
    client_gone_response,
    json_response,
    not_found,
    raw_json_response,
    upstream_error_response,
)
from proxy.services import Services
from proxy.targets import check_model_allowed, model_allowed, upstream_target
from proxy.upstream.base import JsonCall, UpstreamError
from proxy.upstream.router import UnknownModel, UpstreamKind
from proxy.wire import check_embeddings, read_json_object

MODELS = "/v1/models"
EMBEDDINGS = "/v1/embeddings"


def routes() -> list[BaseRoute]:
    return [
        Route(MODELS, list_models, methods=["GET"]),
        Route(MODELS + "/{model:path}", get_model, methods=["GET"]),
        Route(EMBEDDINGS, embeddings, methods=["POST"]),
    ]


async def _models(request: Request, services: Services, caller: Caller) -> list[dict[str, Any]] | Response:
    router = services.upstreams
    target = upstream_target(services.settings, caller, UpstreamKind.HTTP, request.headers)
    try:
        models = await until_disconnect(request.receive, router.http.models(target))
        if router.local is not None:
            models = models + await router.local.models(
                upstream_target(services.settings, caller, UpstreamKind.LOCAL)
            )
    except UpstreamError as exc:
        services.metrics.upstream_error(caller.principal.tenant, MODELS, exc.kind)
        return upstream_error_response(exc)
    except ClientDisconnected:
        return client_gone_response()
    return [m for m in models if model_allowed(caller.policy, str(m.get("id", "")))]


async def list_models(request: Request) -> Response:
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    models = await _models(request, services, caller)
    if isinstance(models, Response):
        return models
    return json_response({"object": "list", "data": models})


async def get_model(request: Request) -> Response:
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    model_id = request.path_params["model"]
    models = await _models(request, services, caller)
    if isinstance(models, Response):
        return models
    for model in models:
        if model.get("id") == model_id:
            return json_response(model)
    raise not_found(
        f"The model `{model_id}` does not exist or you do not have access to it.", code="model_not_found"
    )


async def embeddings(request: Request) -> Response:
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    body = await read_json_object(request)
    model = check_embeddings(body)
    # Embeddings spend the tenant's upstream budget just like a chat: the same right and allow-list.
    authorize_upstream_use(request, caller, body)
    check_model_allowed(caller.policy, model)
    try:
        kind, upstream = services.upstreams.route(model)
    except UnknownModel as exc:
        raise not_found(str(exc), param="model", code="model_not_found") from None
    call = JsonCall(
        upstream_target(services.settings, caller, kind, request.headers),
        body,
        request.state.request_id,
    )
    started = time.perf_counter()
    try:
        reply = await until_disconnect(request.receive, upstream.embeddings(call))
    except UpstreamError as exc:
        services.metrics.upstream_error(caller.principal.tenant, EMBEDDINGS, exc.kind)
        return upstream_error_response(exc)
    except ClientDisconnected:
        return client_gone_response()
    services.metrics.observe_upstream(caller.principal.tenant, EMBEDDINGS, time.perf_counter() - started)
    return raw_json_response(reply.content, reply.status, reply.headers)
