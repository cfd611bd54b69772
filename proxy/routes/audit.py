"""`GET /v1/audit`: the caller's tenant's audit trail, oldest first, with a cursor; never any text.

`GET /v1/audit?limit=100&cursor=<seq>` answers `{"object": "list", "data": [entries], "next_cursor"}`;
`GET /v1/audit/verify` checks the tenant's hash chain (`{"ok", "entries", "first_bad", "reason"}`).
Both need the `audit.read` operation (admin by default; a policy may grant it to another role).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from memos import Operation, authorize
from proxy.audit_wire import AuditQuery
from proxy.auth import Caller, authenticate
from proxy.errors import json_response
from proxy.wire import parse_query

if TYPE_CHECKING:
    from proxy.services import Services



def routes() -> list[BaseRoute]:
    return [
        Route("/v1/audit", list_audit, methods=["GET"]),
        Route("/v1/audit/verify", verify_audit, methods=["GET"]),
    ]


async def _caller(request: Request) -> tuple[Services, Caller]:
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    authorize(caller.principal, caller.policy, Operation.AUDIT_READ, None)
    return services, caller


async def list_audit(request: Request) -> Response:
    services, caller = await _caller(request)
    query = parse_query(request, AuditQuery)
    entries, next_cursor = await anyio.to_thread.run_sync(
        services.audit.list, caller.principal.tenant, query.limit, query.cursor or None
    )
    return json_response(
        {
            "object": "list",
            "data": [e.to_dict() for e in entries],
            "next_cursor": next_cursor,
            "has_more": next_cursor is not None,
        }
    )


async def verify_audit(request: Request) -> Response:
    services, caller = await _caller(request)
    result = await anyio.to_thread.run_sync(services.audit.verify, caller.principal.tenant)
    return json_response(
        {
            "tenant": result.tenant,
            "ok": result.ok,
            "entries": result.entries,
            "first_bad": result.first_bad,
            "reason": result.reason,
            "head_mac": result.head_mac,
        }
    )
