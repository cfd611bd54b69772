"""`/mcp`: the memory API as MCP tools, over streamable HTTP (the `mcp` SDK's low-level server).

Stateless: every POST is one exchange answered with JSON (no session to keep, so any replica may
answer any call, as for REST). Authentication is the REST API's: the tenant key as
`Authorization: Bearer <key>` (or `X-Memos-Key`), checked before the SDK sees the request, so a
missing or unknown key answers 401 (and repeated failures 429) in the API's error envelope, audited
like any failed authentication. GET and DELETE (a standalone stream, ending a session) answer 405:
there are no sessions.

Each tool (proxy/mcp_wire.py) is its REST twin: the same argument rules, the same MemoryService
call with the caller's Principal and Policy (so the same ACL: a user-bound key reaches only its user,
another user's memory is not found), the same audit entry (with the HTTP request's id), the same
answer shapes (as `structuredContent` and as JSON text). What the REST call answers with a 4xx or
5xx, a tool answers as a tool error (`isError`), its text the REST error's message and its
`structuredContent` the REST error envelope; never a protocol error, never a 500.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

import mcp.types as types
import orjson
from mcp.server import Server, ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.requests import Request
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from memos import MemosError, exception_summary
from proxy.auth import Caller, authenticate
from proxy.errors import ApiError, memos_error, server_error
from proxy.mcp_wire import (
    TOOLS,
    TOOLS_BY_NAME,
    AddArguments,
    ListArguments,
    MemoryRef,
    SearchArguments,
    UpdateArguments,
    input_schema,
)
from proxy.memory_wire import (
    Memories,
    Memory,
    MemoryDeleted,
    MemoryList,
    PatchMemory,
    SearchHits,
    hit_json,
    memory_json,
)
from proxy.routes.memories import memory_service, user_from
from proxy.wire import parse

if TYPE_CHECKING:
    from proxy.services import Services

log = logging.getLogger(__name__)

PATH = "/mcp"
INSTRUCTIONS = (
    "Long-term memory of the users of this tenant: search a user's memories before answering what may "
    "depend on earlier conversations, add what the user tells you to remember, and correct or delete "
    "memories when asked. Name the user with `user` unless the key is bound to one."
)


def routes(endpoint: McpEndpoint) -> list[BaseRoute]:
    return [Route(PATH, endpoint, methods=["POST"])]


def _package_version() -> str:
    try:
        return version("memos-proxy")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "0"


class McpEndpoint:
    """The ASGI app at /mcp. `running()` (entered by the app's lifespan) runs the SDK's session
    manager; outside it the endpoint answers 503."""

    def __init__(self) -> None:
        self.server: Server[Any] = Server(
            "memos-proxy",
            version=_package_version(),
            title="memos-proxy memory",
            instructions=INSTRUCTIONS,
            on_list_tools=_list_tools,
            on_call_tool=_call_tool,
        )
        self._manager: StreamableHTTPSessionManager | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        # A manager runs once: a fresh one for each run of the app.
        manager = StreamableHTTPSessionManager(self.server, stateless=True, json_response=True)
        async with manager.run():
            self._manager = manager
            try:
                yield
            finally:
                self._manager = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        services: Services = request.app.state.services
        # Raises the API's 401/429 (the app's handlers answer it) before the SDK reads anything.
        request.state.caller = await authenticate(request, services)
        manager = self._manager
        if manager is None:
            raise ApiError(
                503, "The MCP endpoint is not running.", type="server_error", code="mcp_unavailable"
            )
        await manager.handle_request(scope, receive, send)


async def _list_tools(
    ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
) -> types.ListToolsResult:
    return types.ListToolsResult(
        tools=[
            types.Tool(
                name=spec.name,
                title=spec.title,
                description=spec.description,
                input_schema=input_schema(spec.name),
                annotations=types.ToolAnnotations(
                    title=spec.title,
                    read_only_hint=spec.read_only,
                    destructive_hint=spec.destructive,
                    idempotent_hint=spec.read_only,
                    open_world_hint=False,
                ),
            )
            for spec in TOOLS
        ]
    )


async def _call_tool(
    ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
) -> types.CallToolResult:
    request = ctx.request
    assert isinstance(request, Request), "the streamable HTTP transport passes the request"
    services: Services = request.app.state.services
    caller: Caller = request.state.caller
    outcome = "ok"
    try:
        handler = _HANDLERS.get(params.name)
        if handler is None:
            raise ApiError(
                404,
                f"Unknown tool: {params.name!r}; the tools are {', '.join(TOOLS_BY_NAME)}.",
                code="unknown_tool",
            )
        answer = await handler(request, caller, params.arguments or {})
    except Exception as exc:
        error = _api_error(exc, request)
        outcome = str(error.code or error.status)
        return types.CallToolResult(
            content=[types.TextContent(text=error.message)],
            structured_content=error.envelope(),
            is_error=True,
        )
    finally:
        tool = params.name if params.name in TOOLS_BY_NAME else "unknown"  # a bounded label
        services.metrics.mcp_tool_called(caller.principal.tenant, tool, outcome)
    return types.CallToolResult(
        content=[types.TextContent(text=orjson.dumps(answer).decode())], structured_content=answer
    )


def _api_error(exc: Exception, request: Request) -> ApiError:
    """What the REST twin would have answered for `exc` (proxy/errors.py, the one mapping)."""
    if isinstance(exc, ApiError):
        return exc
    error = memos_error(exc) if isinstance(exc, MemosError) else server_error(exc)
    if error.status >= 500:
        log.error(
            "MCP tool failed (request %s, as %d): %s",
            request.state.request_id,
            error.status,
            exception_summary(exc),
        )
    return error


# ---------------------------------------------------------------------------------------------- tools
# Each the REST handler of the same call (proxy/routes/memories.py), reading tool arguments.

Handler = Callable[[Request, Caller, dict[str, Any]], Awaitable[Mapping[str, object]]]


async def _search(request: Request, caller: Caller, arguments: dict[str, Any]) -> SearchHits:
    args = parse(SearchArguments, arguments)
    memory = memory_service(request.app.state.services)
    hits = await memory.search(
        caller.principal,
        caller.policy,
        user_from(request, args.user),
        args.query,
        args.top_k,
        request.state.request_id,
    )
    answer: SearchHits = {"object": "list", "data": [hit_json(h) for h in hits]}
    return answer


async def _add(request: Request, caller: Caller, arguments: dict[str, Any]) -> Memories:
    args = parse(AddArguments, arguments)
    memory = memory_service(request.app.state.services)
    items = await memory.add(
        caller.principal,
        caller.policy,
        user_from(request, args.user),
        [args.entry()],
        infer=args.infer,
        request_id=request.state.request_id,
        session=args.session or request.headers.get("x-memos-session") or None,
    )
    answer: Memories = {"object": "list", "data": [memory_json(i) for i in items]}
    return answer


async def _list(request: Request, caller: Caller, arguments: dict[str, Any]) -> MemoryList:
    args = parse(ListArguments, arguments)
    memory = memory_service(request.app.state.services)
    items, next_cursor = await memory.list(
        caller.principal,
        caller.policy,
        user_from(request, args.user),
        args.limit,
        args.cursor or None,
        request.state.request_id,
    )
    answer: MemoryList = {
        "object": "list",
        "data": [memory_json(i) for i in items],
        "next_cursor": next_cursor,
        "has_more": next_cursor is not None,
    }
    return answer


async def _get(request: Request, caller: Caller, arguments: dict[str, Any]) -> Memory:
    memory_id = parse(MemoryRef, arguments).memory_id
    memory = memory_service(request.app.state.services)
    item = await memory.get(caller.principal, caller.policy, memory_id, request.state.request_id)
    return memory_json(item)


async def _update(request: Request, caller: Caller, arguments: dict[str, Any]) -> Memory:
    args = parse(UpdateArguments, arguments)
    patch = parse(PatchMemory, args.patch_body()).patch()
    memory = memory_service(request.app.state.services)
    item = await memory.patch(
        caller.principal, caller.policy, args.memory_id, patch, request.state.request_id
    )
    return memory_json(item)


async def _delete(request: Request, caller: Caller, arguments: dict[str, Any]) -> MemoryDeleted:
    memory_id = parse(MemoryRef, arguments).memory_id
    memory = memory_service(request.app.state.services)
    await memory.delete(caller.principal, caller.policy, memory_id, request.state.request_id)
    answer: MemoryDeleted = {"id": memory_id, "object": "memory.deleted", "deleted": True}
    return answer


async def _history(request: Request, caller: Caller, arguments: dict[str, Any]) -> Memories:
    memory_id = parse(MemoryRef, arguments).memory_id
    memory = memory_service(request.app.state.services)
    versions = await memory.history(caller.principal, caller.policy, memory_id, request.state.request_id)
    answer: Memories = {"object": "list", "data": [memory_json(v) for v in versions]}
    return answer


_HANDLERS: dict[str, Handler] = {
    "search_memories": _search,
    "add_memory": _add,
    "list_memories": _list,
    "get_memory": _get,
    "update_memory": _update,
    "delete_memory": _delete,
    "memory_history": _history,
}
assert set(_HANDLERS) == set(TOOLS_BY_NAME), "every tool has its handler"
