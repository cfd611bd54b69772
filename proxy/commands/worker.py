"""`memos-proxy worker`: drain the outbox (write chats back into memory) without serving HTTP.

For deployments that keep write-back apart from the servers answering chats: start the servers with
`MEMOS_WORKER_ENABLED=false` and run workers beside them on the same database and vector store (on
PostgreSQL, as many as wanted: rows are claimed with `FOR UPDATE SKIP LOCKED`; on SQLite, one per data
directory, since a starting worker takes over claims left by a killed one). Stops on SIGTERM or
SIGINT after finishing the rows in hand.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal

from proxy.cli import CommandRegistry
from proxy.settings import Settings


def register(cli: CommandRegistry) -> None:
    parser = cli.command("worker", "drain the outbox: write chats back into memory (no HTTP)")
    parser.set_defaults(handler=worker)


def worker(args: argparse.Namespace, settings: Settings) -> int:
    import uvloop

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvloop.run(_run(settings))
    return 0


async def _run(settings: Settings) -> None:
    from proxy.services import build_services

    services = await asyncio.to_thread(build_services, settings, role="worker")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await services.start()
    try:
        await stop.wait()
    finally:
        await services.stop()
