"""The composition root: `create_app(settings)` builds the Starlette app; its lifespan builds the services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from memos import MemosError
from proxy.cors import cors_middleware
from proxy.errors import ApiError, error_response, memos_error
from proxy.metrics import Metrics, TenantLabels
from proxy.middleware import ProxyMiddleware
from proxy.routes import audit, chat, health, mcp, memories, openai, passthrough, responses, ui, users
from proxy.services import Services, build_services
from proxy.settings import Settings


def routes(mcp_endpoint: mcp.McpEndpoint) -> list[BaseRoute]:
    # Order matters only for the catch-all passthrough, which goes last.
    return [
        *health.routes(),
        *chat.routes(),
        *responses.routes(),  # POST /v1/responses with memory (the rest of /v1/responses/* is relayed)
        *openai.routes(),
        *memories.routes(),  # memory API + /openapi.json
        *audit.routes(),
        *users.routes(),  # GET /v1/users: the tenant's memory owners (the inspector lists them)
        *ui.routes(),  # /ui: the memory inspector's static files, with a strict CSP
        *mcp.routes(mcp_endpoint),  # the memory API as MCP tools
        *passthrough.routes(),
    ]


def create_app(settings: Settings, *, configure: Callable[[Services], None] | None = None) -> Starlette:
    """`configure` runs after the services are built and before they start (tests swap parts there)."""
    metrics = Metrics(TenantLabels(settings.metrics_tenant_label))
    mcp_endpoint = mcp.McpEndpoint()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = await anyio.to_thread.run_sync(build_services, settings, metrics)
        if configure is not None:
            configure(services)
        app.state.services = services
        await services.start()
        try:
            async with mcp_endpoint.running():
                yield
        finally:
            await services.stop()

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def memory_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, MemosError)
        return error_response(memos_error(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        kind = (
            "not_found"
            if exc.status_code == 404
            else "method_not_allowed"
            if exc.status_code == 405
            else None
        )
        if exc.status_code == 405:
            # Starlette's Allow names the methods of the first route matching the path only; a path
            # served by several routes (one per method) answers with all of them.
            refused = passthrough.method_not_allowed(request)
            if refused is not None:
                return error_response(refused)
        return error_response(
            ApiError(
                exc.status_code,
                f"{exc.detail}: {request.method} {request.url.path}",
                code=kind,
                headers=exc.headers,
            )
        )

    middleware = [Middleware(ProxyMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)]
    cors = cors_middleware(settings)
    if cors is not None:
        # Outermost: a preflight is answered before authentication (browsers send it without a key).
        middleware.insert(0, cors)
    return Starlette(
        routes=routes(mcp_endpoint),
        middleware=middleware,
        exception_handlers={ApiError: api_error, MemosError: memory_error, HTTPException: http_error},
        lifespan=lifespan,
    )
