"""`GET /v1/users`: the users (memory owners) of the caller's tenant the key may read, sorted.

Answers `{"object": "list", "data": [{"object": "user", "user": "<id>"}]}`. A key restricted to some
users sees only those; a role without `memory.read` sees none. The memory inspector (`/ui`) lists
users with it; it is the tenant's owners as memos' vault knows them (an erased user is gone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.to_thread
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from memos import AccessDenied, Operation, authorize
from proxy.auth import Caller, authenticate
from proxy.errors import json_response
from proxy.routes.memories import memory_service

if TYPE_CHECKING:
    from proxy.services import Services


def routes() -> list[BaseRoute]:
    return [Route("/v1/users", list_users, methods=["GET"])]


def _may_read(caller: Caller, user: str) -> bool:
    try:
        authorize(caller.principal, caller.policy, Operation.MEMORY_READ, user)
    except AccessDenied:
        return False
    return True


async def list_users(request: Request) -> Response:
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    memory = memory_service(services)
    owners = await anyio.to_thread.run_sync(memory.vault.owners, caller.principal.tenant)
    visible = [o for o in owners if _may_read(caller, o)]
    return json_response({"object": "list", "data": [{"object": "user", "user": o} for o in visible]})
