"""GET /healthz (liveness), GET /readyz (readiness) and GET /metrics (Prometheus text of this app's registry).

/healthz answers 200 while the process serves. /readyz answers 503 while the vault's database does not
answer a read, while the vector store does not answer, while the embedding model is not ready (the
bundled model still loading; memos.readiness), while this process's writes fail
on storage (full disk, lost database: `Database.health`, turned ok again by the next write that
commits, or the retry queue's probe), while acknowledged exchanges are being lost because the
write-back retry queue is full, while this process's write-back worker is not running, and while the
outbox's oldest exchange has waited over MEMOS_READY_OUTBOX_MAX_AGE_S (write-back stalled); else 200.
Both bodies hold counts and states only.
"""

from __future__ import annotations

import hmac
import time

import anyio
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.errors import json_response, unauthorized
from proxy.health_wire import Readiness, StorageState
from proxy.services import Services


def routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    health = services.db.health.state()
    storage: StorageState = {"writes": "failing" if health.failing else "ok"}
    if health.failing:
        storage["failure"] = health.kind
        storage["failing_for_s"] = round(time.time() - health.since, 3) if health.since else None
    body: Readiness = {"status": "not_ready", "storage": storage}
    ready = not health.failing
    if services.memory_readiness is not None:
        memory = await anyio.to_thread.run_sync(services.memory_readiness)
        body["vault"] = "ok" if memory.vault else "unreachable"
        body["vectors"] = "ok" if memory.vectors else "unreachable"
        body["embedder"] = {"name": memory.embedder_name, "ready": memory.embedder}
        ready = ready and memory.ready
    retry = services.write_retry
    if retry is not None:
        snap = retry.snapshot()
        losing = retry.full or retry.losing
        body["write_retry"] = {
            "waiting": snap.waiting,
            "capacity": snap.capacity,
            "oldest_age_s": round(snap.oldest_age_s, 3),
            "lost": snap.lost,
            "losing": losing,
        }
        ready = ready and not losing
    if services.worker_running is not None:
        running = services.worker_running()
        body["worker"] = "running" if running else "stopped"
        ready = ready and running
    if services.outbox_backlog is not None:
        try:
            backlog = await anyio.to_thread.run_sync(services.outbox_backlog)
        except SQLAlchemyError:
            body["outbox"] = {"readable": False}
            ready = False
        else:
            stalled = backlog.oldest_age_s > services.settings.ready_outbox_max_age_s
            body["outbox"] = {
                "pending": backlog.pending,
                "oldest_age_s": round(backlog.oldest_age_s, 3),
                "stalled": stalled,
            }
            ready = ready and not stalled
    body["status"] = "ready" if ready else "not_ready"
    return json_response(body, 200 if ready else 503)


async def metrics(request: Request) -> Response:
    services: Services = request.app.state.services
    token = services.settings.metrics_token
    if token is not None:
        presented = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            raise unauthorized("GET /metrics needs the scrape token: Authorization: Bearer <token>.")
    # In a worker thread: collecting reads the outbox's backlog from the database.
    body = await anyio.to_thread.run_sync(services.metrics.render)
    return Response(body, media_type=services.metrics.content_type)
