"""The memory REST API (ARCHITECTURE.md) and its OpenAPI document at `/openapi.json`.

- `POST /v1/memories` `{"user", "memories": [{"messages" | "text", "metadata", "observed_at"}], "infer"}`
- `GET /v1/memories?user=&limit=&cursor=`
- `POST /v1/memories/search` `{"user", "query", "top_k", "injection"}`
- `GET | PATCH | DELETE /v1/memories/{id}` (PATCH: text, metadata, importance, state, expires_at,
  invalid_at, valid_from, observed_at, or rollback_to alone)
- `GET /v1/memories/{id}/history`
- `DELETE /v1/memories?user=` erases every memory of the user, everywhere

`user` may also come from `X-Memos-User` (or the key's bound user); `X-Memos-Session` tags added memories
with a session (neighbouring turns). Bad input answers 400 in the OpenAI error envelope naming the field.
The handlers only translate between the wire (proxy/memory_wire.py: the models that validate, the
shapes answered) and memos' MemoryService; memory's errors become HTTP in one place (proxy/errors.py).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import orjson
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from proxy.auth import Caller, authenticate
from proxy.errors import ApiError, json_response, raw_json_response
from proxy.memory_wire import (
    MEMORY_ID_REGEX,
    AddMemories,
    EraseQuery,
    ListQuery,
    Memories,
    MemoryDeleted,
    MemoryErased,
    MemoryList,
    PatchMemory,
    SearchHits,
    SearchMemories,
    hit_json,
    memory_json,
)
from proxy.openapi import openapi_document
from proxy.wire import header_user, parse, parse_query, query_param, read_json_object, user_id

if TYPE_CHECKING:
    from memos import MemoryService
    from proxy.services import Services

__all__ = ["openapi_document", "routes"]


class _MemoryIdConvertor(Convertor[str]):
    regex = MEMORY_ID_REGEX

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


def routes() -> list[BaseRoute]:
    register_url_convertor("memory_id", _MemoryIdConvertor())  # idempotent; here, not at import time
    return [
        Route("/v1/memories", add_memories, methods=["POST"]),
        Route("/v1/memories", list_memories, methods=["GET"]),
        Route("/v1/memories", erase_user, methods=["DELETE"]),
        Route("/v1/memories/search", search_memories, methods=["POST"]),
        Route("/v1/memories/{memory_id:memory_id}", get_memory, methods=["GET"]),
        Route("/v1/memories/{memory_id:memory_id}", patch_memory, methods=["PATCH"]),
        Route("/v1/memories/{memory_id:memory_id}", delete_memory, methods=["DELETE"]),
        Route("/v1/memories/{memory_id:memory_id}/history", memory_history, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
    ]


async def _context(request: Request) -> tuple[MemoryService, Caller, str]:
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    return memory_service(services), caller, request.state.request_id


def memory_service(services: Services) -> MemoryService:
    """The memory API's service, or the 503 a server without memory answers (the MCP tools too)."""
    if services.memory is None:
        raise ApiError(
            503,
            "The memory API is not available on this server.",
            type="server_error",
            code="memory_unavailable",
        )
    return services.memory


def user_from(request: Request, body_user: str | None = None) -> str | None:
    """The body's `user`, else the query's, else X-Memos-User (None: the key's bound user, if any).
    Whichever is given must be a valid user id, even when an earlier one wins."""
    header = header_user(request)
    query = query_param(request, "user")
    if query is not None:
        query = user_id(query, "user")
    return body_user or query or header


# ---------------------------------------------------------------------------------------------- handlers


async def add_memories(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    body = parse(AddMemories, await read_json_object(request))
    items = await memory.add(
        caller.principal,
        caller.policy,
        user_from(request, body.user),
        body.entries(),
        infer=body.infer,
        request_id=request_id,
        session=request.headers.get("x-memos-session") or None,
    )
    answer: Memories = {"object": "list", "data": [memory_json(i) for i in items]}
    return json_response(answer)


async def list_memories(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    query = parse_query(request, ListQuery)
    items, next_cursor = await memory.list(
        caller.principal, caller.policy, user_from(request), query.limit, query.cursor or None, request_id
    )
    answer: MemoryList = {
        "object": "list",
        "data": [memory_json(i) for i in items],
        "next_cursor": next_cursor,
        "has_more": next_cursor is not None,
    }
    return json_response(answer)


async def search_memories(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    body = parse(SearchMemories, await read_json_object(request))
    user = user_from(request, body.user)
    hits = await memory.search(caller.principal, caller.policy, user, body.query, body.top_k, request_id)
    answer: SearchHits = {"object": "list", "data": [hit_json(h) for h in hits]}
    if body.injection:
        chosen = await memory.injection(caller.principal, caller.policy, user, body.query, request_id)
        answer["injection"] = {
            "block": chosen.block,
            "memory_ids": list(chosen.memory_ids),
            "tokens": chosen.tokens,
        }
    return json_response(answer)


async def get_memory(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    item = await memory.get(caller.principal, caller.policy, request.path_params["memory_id"], request_id)
    return json_response(memory_json(item))


async def patch_memory(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    patch = parse(PatchMemory, await read_json_object(request)).patch()
    item = await memory.patch(
        caller.principal, caller.policy, request.path_params["memory_id"], patch, request_id
    )
    return json_response(memory_json(item))


async def delete_memory(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    memory_id = request.path_params["memory_id"]
    await memory.delete(caller.principal, caller.policy, memory_id, request_id)
    answer: MemoryDeleted = {"id": memory_id, "object": "memory.deleted", "deleted": True}
    return json_response(answer)


async def memory_history(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    memory_id = request.path_params["memory_id"]
    versions = await memory.history(caller.principal, caller.policy, memory_id, request_id)
    answer: Memories = {"object": "list", "data": [memory_json(v) for v in versions]}
    return json_response(answer)


async def erase_user(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    user = parse_query(request, EraseQuery).user
    counts = await memory.erase_user(caller.principal, caller.policy, user, request_id)
    answer: MemoryErased = {"object": "memory.erased", "user": user, "deleted": True, "counts": counts}
    return json_response(answer)


@cache
def _openapi_bytes() -> bytes:
    return orjson.dumps(openapi_document())


async def openapi_json(request: Request) -> Response:
    return raw_json_response(_openapi_bytes())
