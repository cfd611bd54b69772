"""CORS for browser apps: Starlette's CORSMiddleware configured from settings, outermost in the app.

Off unless `MEMOS_CORS_ORIGINS` names origins. A preflight (OPTIONS with an Origin and
Access-Control-Request-Method) carries no key, so it is answered here from the settings alone, before
authentication; a refused one is a 400 in the API's error envelope. Actual requests get the
Access-Control-* headers and may read the proxy's own response headers (`EXPOSED_HEADERS`). What a
tenant's key may be used from is narrowed further by its policy (`cors.allowed_origins`), checked once
the key is known (proxy/auth.py: 403).
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from proxy.errors import ApiError, error_response
from proxy.settings import Settings

# Response headers a browser app may read (the CORS-safelisted ones it may read anyway).
EXPOSED_HEADERS = (
    "x-request-id",
    "x-memos-memory-mode",
    "x-memos-memories",
    "x-memos-memory-reason",
    "retry-after",
)


class ProxyCORSMiddleware(CORSMiddleware):
    """Starlette's middleware, with refused preflights in the API's error envelope."""

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code == 200:
            return response
        refused = bytes(response.body).decode("utf-8", "replace").removeprefix("Disallowed CORS ")
        kept = {
            name: value
            for name, value in response.headers.items()
            if name.lower() not in ("content-type", "content-length")
        }
        return error_response(
            ApiError(
                400,
                f"CORS preflight refused: this {refused} is not allowed (MEMOS_CORS_* settings).",
                code="cors_not_allowed",
                headers=kept,
            )
        )


def cors_middleware(settings: Settings) -> Middleware | None:
    """The middleware for these settings; None when CORS is off."""
    if not settings.cors_origins:
        return None
    return Middleware(
        ProxyCORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=settings.cors_allow_methods,
        allow_headers=settings.cors_allow_headers,
        expose_headers=list(EXPOSED_HEADERS),
        allow_credentials=settings.cors_allow_credentials,
        max_age=settings.cors_max_age_s,
    )
