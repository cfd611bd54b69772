"""`/ui`: the web memory inspector, static files served by the proxy itself (proxy/ui/).

No build step, no CDN: one HTML page, one script, one stylesheet. Every answer under `/ui` carries a
strict Content-Security-Policy (nothing but the proxy itself; no inline script or style, no frames, no
plugins) and `Referrer-Policy: no-referrer`. The page signs in with a tenant key kept in the tab's
sessionStorage and calls only the public REST API (/v1/memories, /v1/users, /v1/audit) with it.
"""

from __future__ import annotations

from pathlib import Path

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UI_DIR = Path(__file__).resolve().parents[1] / "ui"

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HEADERS = {
    "content-security-policy": CSP,
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


class _Secured:
    """Adds the inspector's security headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_secured)


async def _to_index(request: Request) -> Response:
    return RedirectResponse("/ui/", status_code=308, headers=HEADERS)


def routes() -> list[BaseRoute]:
    return [
        Route("/ui", _to_index, methods=["GET", "HEAD"]),
        Mount("/ui", app=_Secured(StaticFiles(directory=UI_DIR, html=True)), name="ui"),
    ]
