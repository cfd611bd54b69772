"""`memos-proxy serve --host --port`: run the proxy under uvicorn (uvloop, httptools)."""

from __future__ import annotations

import argparse
import logging

from proxy.cli import CommandRegistry
from proxy.settings import Settings


def register(cli: CommandRegistry) -> None:
    parser = cli.command("serve", "serve the OpenAI-compatible API")
    parser.add_argument("--host", default=None, help="bind address (default: MEMOS_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: MEMOS_PORT or 8080)")
    parser.set_defaults(handler=serve)


def serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from proxy.app import create_app

    updates = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if updates:
        settings = settings.model_copy(update=updates)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        log_level=settings.log_level,
        access_log=settings.access_log,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0
