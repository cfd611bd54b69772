"""`GET /v1/users`: the users (memory owners) of the caller's tenant the key may read, sorted.

Answers `{"object": "list", "data": [{"object": "user", "user": "<id>"}]}`. A key restricted to some
users sees only those; a role without `memory.read` sees none. The memory inspector (`/ui`) lists
users with it; it is the tenant's owners as memos' vault knows them (an erased user is gone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.auth import authenticate
from proxy.errors import json_response
from proxy.routes.memories import memory_service

if TYPE_CHECKING:
    from proxy.services import Services


def routes() -> list[BaseRoute]:
    return [Route("/v1/users", list_users, methods=["GET"])]


async def list_users(request: Request) -> Response:
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    users = await memory_service(services).users(caller.principal, caller.policy, request.state.request_id)
    return json_response({"object": "list", "data": [{"object": "user", "user": u} for u in users]})
