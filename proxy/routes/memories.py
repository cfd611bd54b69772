"""The memory REST API (ARCHITECTURE.md) and its OpenAPI document at `/openapi.json`.

- `POST /v1/memories` `{"user", "memories": [{"messages" | "text", "metadata", "observed_at"}], "infer"}`
- `GET /v1/memories?user=&limit=&cursor=`
- `POST /v1/memories/search` `{"user", "query", "top_k"}`
- `GET | PATCH | DELETE /v1/memories/{id}` (PATCH: text, metadata, importance, state, expires_at,
  invalid_at, valid_from, observed_at, or rollback_to alone)
- `GET /v1/memories/{id}/history`
- `DELETE /v1/memories?user=` erases every memory of the user, everywhere

`user` may also come from `X-Memos-User` (or the key's bound user); `X-Memos-Session` tags added memories
with a session (neighbouring turns). Bad input answers 400 in the OpenAI error envelope naming the field.
The handlers only translate between the wire and memos.memories.MemoryService.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from memos.item import MemoryItem, State
from memos.limits import (
    METADATA_MAX_DEPTH,
    METADATA_MAX_VALUES,
    NOT_BLANK_PATTERN,
    TIMESTAMP_END,
    TIMESTAMP_MIN,
    USER_ID_MAX_CHARS,
    USER_ID_PATTERN,
    YEAR_MAX,
    YEAR_MIN,
    YEAR_PATTERN,
    metadata_problem,
    time_problem,
)
from memos.memories import MAX_ENTRIES, MAX_TEXT_CHARS, Entry, Patch
from memos.recall.retrieval import Hit
from proxy.auth import Caller, authenticate
from proxy.errors import ApiError, bad_request, json_response
from proxy.wire import (
    MAX_JSON_DEPTH,
    MAX_JSON_ITEMS,
    USER_HEADER,
    header_user,
    query_param,
    read_json_object,
    user_id,
)

if TYPE_CHECKING:
    from memos.memories import MemoryService
    from proxy.services import Services

MAX_LIMIT = 1000
MAX_TOP_K = 200
MAX_QUERY_CHARS = MAX_TEXT_CHARS
MAX_VERSION = 10**9
# A list cursor is the vault's opaque token: URL-safe base64 (unpadded) of "s:<sequence number>"
# (memos.storage.vault.encode_cursor). The pattern admits exactly those tokens for numbers of up to 18
# digits (the vault's sequence numbers stay far below; more could overflow the database's integer),
# so what the document admits the server accepts. Empty means the first page.
_DIGITS3 = "(?:M[DTjz]|N[DTjz]|O[DT])[AEIMQUYcgk][w-z0-5]"  # three digits
_DIGITS2 = "(?:M[DTjz]|N[DTjz]|O[DT])[AEIMQUYcgk]"
_DIGITS1 = "(?:M[AQgw]|N[AQgw]|O[AQ])"
CURSOR_PATTERN = f"^(?:czo[w-z0-5](?:{_DIGITS3}){{0,5}}(?:{_DIGITS2}|{_DIGITS1})?)?$"
CURSOR_MAX_CHARS = 27  # the longest the pattern admits ("s:" and 18 digits)
_CURSOR = re.compile(CURSOR_PATTERN)
# Memory ids are "mem_" and 28 hex digits (memos.storage.vault.new_memory_id). The routes match only that
# shape, so /v1/memories/search is never read as an id and a path naming no possible memory is a 404
# before it reaches the database.
MEMORY_ID_REGEX = "mem_[0-9a-f]{28}"
MEMORY_ID_PATTERN = f"^{MEMORY_ID_REGEX}$"


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


# ---------------------------------------------------------------------------------------------- wire


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def item_json(item: MemoryItem) -> dict[str, Any]:
    sources = [
        {
            "request_id": s.request_id,
            "message_index": s.message_index,
            "session": s.session,
            "metadata": s.metadata or {},
        }
        for s in item.sources
    ]
    return {
        "id": item.id,
        "object": "memory",
        "user": item.owner,
        "memory": item.text,
        "metadata": sources[0]["metadata"] if sources else {},
        "sources": sources,
        "scope": str(item.scope),
        "kind": str(item.kind),
        "state": str(item.state),
        "version": item.version,
        "importance": item.importance,
        "observed_at": _iso(item.observed_at),
        "valid_from": _iso(item.valid_from),
        "invalid_at": _iso(item.invalid_at),
        "expires_at": _iso(item.expires_at),
        "created_at": _iso(item.created_at),
        "updated_at": _iso(item.updated_at),
        "hits": item.hits,
        "last_hit_at": _iso(item.last_hit_at),
    }


def hit_json(hit: Hit) -> dict[str, Any]:
    out = item_json(hit.item)
    out["score"] = round(float(hit.score), 6)
    out["context"] = [
        {
            "id": c.id,
            "memory": c.text,
            "observed_at": _iso(c.observed_at),
            "sources": [{"metadata": s.metadata or {}, "session": s.session} for s in c.sources],
        }
        for c in hit.context
    ]
    return out


def _parse_time(value: Any, param: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise bad_request(f"'{param}' must be an ISO 8601 date-time or a Unix timestamp.", param=param)
    if isinstance(value, int | float):
        try:
            parsed = datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            raise bad_request(f"'{param}' is not a valid Unix timestamp.", param=param) from None
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise bad_request(
                f"'{param}' must be an ISO 8601 date-time (e.g. 2024-05-01T12:00:00Z).", param=param
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
    else:
        raise bad_request(f"'{param}' must be an ISO 8601 date-time or a Unix timestamp.", param=param)
    problem = time_problem(parsed)
    if problem is not None:
        raise bad_request(f"'{param}' {problem}.", param=param, code="invalid_value")
    return parsed


def _int_param(raw: Any, name: str, low: int, high: int, default: int | None) -> int | None:
    if raw is None:
        return default
    if isinstance(raw, bool):
        raise bad_request(f"'{name}' must be an integer.", param=name, code="invalid_type")
    try:
        value = int(raw)
        if isinstance(raw, float) and raw != value:
            raise ValueError
    except (TypeError, ValueError):
        raise bad_request(f"'{name}' must be an integer.", param=name, code="invalid_type") from None
    if not low <= value <= high:
        raise bad_request(f"'{name}' must be between {low} and {high}.", param=name, code="invalid_value")
    return value


def _user_from(request: Request, body: dict[str, Any] | None = None) -> str | None:
    """The body's `user`, else the query's, else X-Memos-User (None: the key's bound user, if any).
    Whichever is given must be a valid user id (memos.limits), even when an earlier one wins."""
    header = header_user(request)
    query = query_param(request, "user")
    if query is not None:
        query = user_id(query, "user")
    if body is not None and body.get("user") is not None:
        return user_id(body["user"], "user")
    return query or header


def _metadata(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise bad_request(f"'{param}' must be an object.", param=param, code="invalid_type")
    problem = metadata_problem(value)
    if problem is not None:
        raise bad_request(
            f"'{param}' {problem} (metadata nests at most {METADATA_MAX_DEPTH} levels and holds at most "
            f"{METADATA_MAX_VALUES} values).",
            param=param,
            code="invalid_value",
        )
    return value


def _cursor(request: Request) -> str | None:
    raw = query_param(request, "cursor")
    if raw is not None and (len(raw) > CURSOR_MAX_CHARS or _CURSOR.fullmatch(raw) is None):
        raise bad_request("'cursor' is not a cursor this endpoint returned.", param="cursor")
    return raw or None


def _entries(body: dict[str, Any]) -> list[Entry]:
    memories = body.get("memories")
    if memories is None:
        raise bad_request(
            "Missing required parameter: 'memories'.", param="memories", code="missing_required_parameter"
        )
    if not isinstance(memories, list) or not memories:
        raise bad_request("'memories' must be a non-empty array.", param="memories", code="invalid_type")
    out: list[Entry] = []
    for i, raw in enumerate(memories):
        where = f"memories[{i}]"
        if isinstance(raw, str):
            raw = {"text": raw}
        if not isinstance(raw, dict):
            raise bad_request(f"'{where}' must be an object.", param=where, code="invalid_type")
        text, messages = raw.get("text"), raw.get("messages")
        if text is None and messages is None:
            raise bad_request(
                f"'{where}' needs 'text' or 'messages'.", param=where, code="missing_required_parameter"
            )
        if text is not None and messages is not None:
            raise bad_request(f"'{where}' takes 'text' or 'messages', not both.", param=where)
        if text is not None and (not isinstance(text, str) or not text.strip()):
            raise bad_request(
                f"'{where}.text' must be a non-empty string.", param=f"{where}.text", code="invalid_type"
            )
        if messages is not None:
            if not isinstance(messages, list) or not messages:
                raise bad_request(
                    f"'{where}.messages' must be a non-empty array.",
                    param=f"{where}.messages",
                    code="invalid_type",
                )
            for j, m in enumerate(messages):
                mp = f"{where}.messages[{j}]"
                if not isinstance(m, dict) or not isinstance(m.get("role"), str):
                    raise bad_request(
                        f"'{mp}' must be an object with a 'role'.", param=mp, code="invalid_type"
                    )
                content = m.get("content")
                if not isinstance(content, str | list):
                    raise bad_request(
                        f"'{mp}.content' must be a string or an array of parts.",
                        param=f"{mp}.content",
                        code="invalid_type",
                    )
        metadata = raw.get("metadata")
        metadata = {} if metadata is None else _metadata(metadata, f"{where}.metadata")
        out.append(
            Entry(
                text=text,
                messages=messages,
                metadata=metadata,
                observed_at=_parse_time(raw.get("observed_at"), f"{where}.observed_at"),
            )
        )
    return out


async def _context(request: Request) -> tuple[MemoryService, Caller, str]:
    services: Services = request.app.state.services
    caller = await authenticate(request, services)
    if services.memory is None:
        raise ApiError(
            503,
            "The memory API is not available on this server.",
            type="server_error",
            code="memory_unavailable",
        )
    return services.memory, caller, request.state.request_id


# ---------------------------------------------------------------------------------------------- handlers


async def add_memories(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    body = await read_json_object(request)
    infer = body.get("infer", False)
    if not isinstance(infer, bool):
        raise bad_request("'infer' must be a boolean.", param="infer", code="invalid_type")
    entries = _entries(body)
    items = await memory.add(
        caller.principal,
        caller.policy,
        _user_from(request, body),
        entries,
        infer=infer,
        request_id=request_id,
        session=request.headers.get("x-memos-session") or None,
    )
    return json_response({"object": "list", "data": [item_json(i) for i in items]})


async def list_memories(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    limit = _int_param(request.query_params.get("limit"), "limit", 1, MAX_LIMIT, 50)
    cursor = _cursor(request)
    items, next_cursor = await memory.list(
        caller.principal, caller.policy, _user_from(request), limit or 50, cursor, request_id
    )
    return json_response(
        {
            "object": "list",
            "data": [item_json(i) for i in items],
            "next_cursor": next_cursor,
            "has_more": next_cursor is not None,
        }
    )


async def search_memories(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    body = await read_json_object(request)
    query = body.get("query")
    if query is None:
        raise bad_request(
            "Missing required parameter: 'query'.", param="query", code="missing_required_parameter"
        )
    if not isinstance(query, str) or not query.strip():
        raise bad_request("'query' must be a non-empty string.", param="query", code="invalid_type")
    if len(query) > MAX_QUERY_CHARS:
        raise bad_request(
            f"'query' is longer than {MAX_QUERY_CHARS} characters.", param="query", code="invalid_value"
        )
    top_k = _int_param(body.get("top_k"), "top_k", 1, MAX_TOP_K, None)
    hits = await memory.search(
        caller.principal, caller.policy, _user_from(request, body), query, top_k, request_id
    )
    return json_response({"object": "list", "data": [hit_json(h) for h in hits]})


async def get_memory(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    memory_id = request.path_params["memory_id"]
    item = await memory.get(caller.principal, caller.policy, memory_id, request_id)
    return json_response(item_json(item))


_PATCH_FIELDS = {
    "text",
    "metadata",
    "importance",
    "state",
    "expires_at",
    "invalid_at",
    "valid_from",
    "observed_at",
    "rollback_to",
}
_PATCH_STATES = {State.ACTIVE.value, State.ARCHIVED.value, State.SUPERSEDED.value}


def _patch(body: dict[str, Any]) -> Patch:
    unknown = sorted(set(body) - _PATCH_FIELDS - {"user"})
    if unknown:
        raise bad_request(f"Unknown parameter: '{unknown[0]}'.", param=unknown[0], code="unknown_parameter")
    if not set(body) & _PATCH_FIELDS:
        raise bad_request(
            "Nothing to change: give at least one of " + ", ".join(sorted(_PATCH_FIELDS)) + ".", param=None
        )
    patch = Patch()
    if "text" in body:
        if not isinstance(body["text"], str) or not body["text"].strip():
            raise bad_request("'text' must be a non-empty string.", param="text", code="invalid_type")
        patch.text = body["text"]
    if "metadata" in body:
        patch.metadata = _metadata(body["metadata"], "metadata")
    if "importance" in body:
        value = body["importance"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise bad_request("'importance' must be a number between 0 and 1.", param="importance")
        patch.importance = float(value)
    if "state" in body:
        if not isinstance(body["state"], str) or body["state"] not in _PATCH_STATES:
            raise bad_request(
                "'state' must be one of " + ", ".join(sorted(_PATCH_STATES)) + " (use DELETE to delete).",
                param="state",
            )
        patch.state = State(body["state"])
    clear: list[str] = []
    for name in ("expires_at", "invalid_at", "valid_from", "observed_at"):
        if name in body:
            if body[name] is None:
                if name == "observed_at":
                    raise bad_request("'observed_at' cannot be cleared.", param=name)
                clear.append(name)
            else:
                setattr(patch, name, _parse_time(body[name], name))
    patch.clear = tuple(clear)
    if body.get("user") is not None:
        user_id(body["user"], "user")  # ignored, but held to the same rule as everywhere
    if "rollback_to" in body:
        if body["rollback_to"] is None:
            raise bad_request("'rollback_to' must be an integer.", param="rollback_to", code="invalid_type")
        patch.rollback_to = _int_param(body["rollback_to"], "rollback_to", 1, MAX_VERSION, None)
        if len(set(body) & _PATCH_FIELDS) > 1:
            raise bad_request("'rollback_to' cannot be combined with other changes.", param="rollback_to")
    return patch


async def patch_memory(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    memory_id = request.path_params["memory_id"]
    patch = _patch(await read_json_object(request))
    item = await memory.patch(caller.principal, caller.policy, memory_id, patch, request_id)
    return json_response(item_json(item))


async def delete_memory(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    memory_id = request.path_params["memory_id"]
    await memory.delete(caller.principal, caller.policy, memory_id, request_id)
    return json_response({"id": memory_id, "object": "memory.deleted", "deleted": True})


async def memory_history(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    memory_id = request.path_params["memory_id"]
    versions = await memory.history(caller.principal, caller.policy, memory_id, request_id)
    return json_response({"object": "list", "data": [item_json(v) for v in versions]})


async def erase_user(request: Request) -> Response:
    memory, caller, request_id = await _context(request)
    user = query_param(request, "user")
    if user is None:
        raise bad_request(
            "Missing required parameter: 'user' (DELETE /v1/memories?user=U erases every memory of U).",
            param="user",
            code="missing_required_parameter",
        )
    user = user_id(user, "user")
    counts = await memory.erase_user(caller.principal, caller.policy, user, request_id)
    return json_response({"object": "memory.erased", "user": user, "deleted": True, "counts": counts})


# ---------------------------------------------------------------------------------------------- OpenAPI


async def openapi_json(request: Request) -> Response:
    return json_response(openapi_document())


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": {
        "description": "Bad input; `error.param` names the field.",
        "content": {"application/json": {"schema": _ref("Error")}},
    },
    "401": {
        "description": "Missing or unknown API key.",
        "content": {"application/json": {"schema": _ref("Error")}},
    },
    "403": {
        "description": "The key may not do this (role or user binding).",
        "content": {"application/json": {"schema": _ref("Error")}},
    },
    "429": {
        "description": "Too many failed authentication attempts from this address or for this key; "
        "`Retry-After` says when to try again.",
        "content": {"application/json": {"schema": _ref("Error")}},
    },
}
_NOT_FOUND = {
    "404": {
        "description": "No such memory in the caller's tenant.",
        "content": {"application/json": {"schema": _ref("Error")}},
    }
}

_USER = {
    "type": "string",
    "minLength": 1,
    "maxLength": USER_ID_MAX_CHARS,
    "pattern": USER_ID_PATTERN,
    "description": f"A user id: 1 to {USER_ID_MAX_CHARS} characters, no control characters (NUL "
    "included), not only whitespace. The same rule holds for the chat body's `user` and X-Memos-User.",
}
_ID = {
    "name": "memory_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": MEMORY_ID_PATTERN},
    "description": "A memory id (`mem_` and 28 hex digits); a path with another is not found.",
}
_USER_Q = {
    "name": "user",
    "in": "query",
    "schema": _USER,
    "description": "The user (owner) inside the tenant; or X-Memos-User, or the key's bound user.",
}
# Response times: whatever was stored, in UTC.
_TIME = {"type": ["string", "null"], "format": "date-time"}
_TIME_RULE = (
    f"An ISO 8601 date-time (no offset: UTC) whose year, as written, lies in {YEAR_MIN}-{YEAR_MAX}, "
    "or a Unix timestamp in seconds within those years (UTC)."
)
_TIME_IN = {
    "oneOf": [
        {"type": "string", "format": "date-time", "pattern": YEAR_PATTERN},
        {"type": "number", "minimum": TIMESTAMP_MIN, "exclusiveMaximum": TIMESTAMP_END},
    ],
    "description": _TIME_RULE,
}
_TIME_IN_NULLABLE = {
    "oneOf": [*_TIME_IN["oneOf"], {"type": "null"}],
    "description": _TIME_RULE + " null clears it.",
}
_TEXT = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_TEXT_CHARS,
    "pattern": NOT_BLANK_PATTERN,
    "description": f"Not only whitespace; at most {MAX_TEXT_CHARS} characters (after redaction).",
}
_METADATA = {
    "type": "object",
    "additionalProperties": True,
    "maxProperties": METADATA_MAX_VALUES,
    "description": f"Caller metadata, kept with the memory's source: at most {METADATA_MAX_DEPTH} levels "
    f"deep (this object is level 1) and {METADATA_MAX_VALUES} values in all.",
}


def _nullable(schema: dict[str, Any], also: str = "") -> dict[str, Any]:
    described = {k: v for k, v in schema.items() if k != "description"}
    text = " ".join(t for t in (schema.get("description", ""), also) if t)
    return {"anyOf": [described, {"type": "null"}], **({"description": text} if text else {})}


_MESSAGES = {
    "type": "array",
    "items": _ref("Message"),
    "minItems": 1,
    "contains": _ref("SpokenMessage"),
    "description": "At least one message that is not a system message and has text.",
}
_PATCH_USER = {**_nullable(_USER), "description": "Ignored (the memory's id names its user)."}
_PATCH_CHANGES: dict[str, Any] = {
    "text": _TEXT,
    "metadata": {
        **_METADATA,
        "description": "Merged into the first source's metadata; "
        + str(_METADATA["description"]).split(": ", 1)[1],
    },
    "importance": {"type": "number", "minimum": 0, "maximum": 1},
    "state": {"enum": sorted(_PATCH_STATES)},
    "expires_at": _TIME_IN_NULLABLE,
    "invalid_at": {
        **_TIME_IN_NULLABLE,
        "description": _TIME_IN_NULLABLE["description"] + " Not before `valid_from`.",
    },
    "valid_from": {
        **_TIME_IN_NULLABLE,
        "description": _TIME_IN_NULLABLE["description"]
        + " Not after `invalid_at` (the one given, else the stored one).",
    },
    "observed_at": _TIME_IN,
}


def openapi_document() -> dict[str, Any]:
    """The memory API as OpenAPI 3.1 (hand-written, kept next to the handlers it documents)."""
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "message": {"type": "string"},
                        "type": {"type": "string"},
                        "param": {"type": ["string", "null"]},
                        "code": {"type": ["string", "null"]},
                    },
                    "required": ["message", "type"],
                }
            },
        },
        "Source": {
            "type": "object",
            "properties": {
                "request_id": {"type": ["string", "null"]},
                "message_index": {"type": ["integer", "null"]},
                "session": {"type": ["string", "null"]},
                "metadata": {"type": "object", "additionalProperties": True},
            },
        },
        "Memory": {
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "memory"},
                "user": {"type": "string"},
                "memory": {"type": "string", "description": "The memory's text."},
                "metadata": {"type": "object", "description": "The first source's caller metadata."},
                "sources": {"type": "array", "items": _ref("Source")},
                "scope": {"enum": ["user", "agent", "tenant"]},
                "kind": {"enum": ["plaintext", "activation", "parametric"]},
                "state": {"enum": ["active", "superseded", "archived", "deleted"]},
                "version": {"type": "integer"},
                "importance": {"type": "number"},
                "observed_at": _TIME,
                "valid_from": _TIME,
                "invalid_at": _TIME,
                "expires_at": _TIME,
                "created_at": _TIME,
                "updated_at": _TIME,
                "hits": {"type": "integer"},
                "last_hit_at": _TIME,
            },
            "required": ["id", "object", "user", "memory", "sources", "state", "version"],
        },
        "SearchHit": {
            "allOf": [
                _ref("Memory"),
                {
                    "type": "object",
                    "properties": {
                        "score": {"type": "number"},
                        "context": {
                            "type": "array",
                            "description": "Neighbouring turns of the same session.",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "id": {"type": "string"},
                                    "memory": {"type": "string"},
                                    "observed_at": _TIME,
                                    "sources": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                        },
                    },
                    "required": ["score"],
                },
            ]
        },
        "Message": {
            "type": "object",
            "properties": {
                "role": {"type": "string"},
                "content": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": ["object", "string"]}},
                    ]
                },
            },
            "required": ["role", "content"],
        },
        "SpokenMessage": {
            "type": "object",
            "description": "A message whose text counts: not a system message, with text content.",
            "properties": {
                "role": {"type": "string", "not": {"const": "system"}},
                "content": {
                    "oneOf": [
                        _TEXT,
                        {"type": "array", "items": _TEXT, "minItems": 1},
                    ]
                },
            },
            "required": ["role", "content"],
        },
        "MemoryEntry": {
            "type": "object",
            "properties": {
                "text": _nullable(_TEXT),
                "messages": _nullable(_MESSAGES),
                "metadata": _nullable(_METADATA),
                "observed_at": _nullable(_TIME_IN, "null or absent: now."),
            },
            # null counts as absent
            "oneOf": [
                {"properties": {"text": _TEXT, "messages": {"type": "null"}}, "required": ["text"]},
                {"properties": {"messages": _MESSAGES, "text": {"type": "null"}}, "required": ["messages"]},
            ],
            "description": "Exactly one of `text` or `messages` (null counts as absent).",
        },
        "AddMemories": {
            "type": "object",
            "properties": {
                "user": _nullable(_USER),
                "memories": {
                    "type": "array",
                    "items": {"oneOf": [_TEXT, _ref("MemoryEntry")]},
                    "description": "Each entry an object, or a string (its `text`).",
                    "minItems": 1,
                    "maxItems": MAX_ENTRIES,
                },
                "infer": {
                    "type": "boolean",
                    "default": False,
                    "description": "false: each entry becomes a memory as given; "
                    "true: the MemReader extracts facts and the MemOperator merges/supersedes.",
                },
            },
            "required": ["memories"],
        },
        "SearchMemories": {
            "type": "object",
            "properties": {
                "user": _nullable(_USER),
                "query": {**_TEXT, "maxLength": MAX_QUERY_CHARS, "description": "Not only whitespace."},
                "top_k": _nullable({"type": "integer", "minimum": 1, "maximum": MAX_TOP_K}),
            },
            "required": ["query"],
        },
        "PatchMemory": {
            "oneOf": [
                {
                    "type": "object",
                    "properties": {**_PATCH_CHANGES, "user": _PATCH_USER},
                    "additionalProperties": False,
                    "anyOf": [{"required": [name]} for name in sorted(_PATCH_CHANGES)],
                },
                {
                    "type": "object",
                    "properties": {
                        "rollback_to": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_VERSION,
                            "description": "Make a new version equal to this earlier version.",
                        },
                        "user": _PATCH_USER,
                    },
                    "additionalProperties": False,
                    "required": ["rollback_to"],
                },
            ],
            "description": "At least one change, or `rollback_to` alone.",
        },
        "MemoryList": {
            "type": "object",
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Memory")},
                "next_cursor": {"type": ["string", "null"]},
                "has_more": {"type": "boolean"},
            },
        },
    }
    list_of = lambda name: {  # noqa: E731
        "type": "object",
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _ref(name)}},
    }
    paths: dict[str, Any] = {
        "/v1/memories": {
            "post": {
                "summary": "Add memories (batch)",
                "operationId": "addMemories",
                "requestBody": _json_body(_ref("AddMemories")),
                "responses": {"200": _ok(list_of("Memory")), **_ERRORS},
            },
            "get": {
                "summary": "List a user's active memories, newest first",
                "operationId": "listMemories",
                "parameters": [
                    _USER_Q,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 50},
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "schema": {
                            "type": "string",
                            "maxLength": CURSOR_MAX_CHARS,
                            "pattern": CURSOR_PATTERN,
                        },
                        "description": "`next_cursor` of the previous page; empty or absent: the first page.",
                    },
                ],
                "responses": {"200": _ok(_ref("MemoryList")), **_ERRORS},
            },
            "delete": {
                "summary": "Erase every memory of a user from every store",
                "operationId": "eraseUser",
                "parameters": [{**_USER_Q, "required": True}],
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "properties": {
                                "object": {"const": "memory.erased"},
                                "user": {"type": "string"},
                                "deleted": {"type": "boolean"},
                                "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
                            },
                        }
                    ),
                    **_ERRORS,
                },
            },
        },
        "/v1/memories/search": {
            "post": {
                "summary": "Search a user's memories (hybrid dense + keyword), best first",
                "operationId": "searchMemories",
                "requestBody": _json_body(_ref("SearchMemories")),
                "responses": {"200": _ok(list_of("SearchHit")), **_ERRORS},
            }
        },
        "/v1/memories/{memory_id}": {
            "parameters": [_ID],
            "get": {
                "summary": "Get one memory",
                "operationId": "getMemory",
                "responses": {"200": _ok(_ref("Memory")), **_ERRORS, **_NOT_FOUND},
            },
            "patch": {
                "summary": "Change a memory (a new version) or roll it back to an earlier version",
                "operationId": "patchMemory",
                "requestBody": _json_body(_ref("PatchMemory")),
                "responses": {"200": _ok(_ref("Memory")), **_ERRORS, **_NOT_FOUND},
            },
            "delete": {
                "summary": "Delete a memory (its text leaves every version and index)",
                "operationId": "deleteMemory",
                "responses": {
                    "200": _ok(
                        {
                            "type": "object",
                            "properties": {
                                "id": {"type": "string"},
                                "object": {"const": "memory.deleted"},
                                "deleted": {"type": "boolean"},
                            },
                        }
                    ),
                    **_ERRORS,
                    **_NOT_FOUND,
                },
            },
        },
        "/v1/memories/{memory_id}/history": {
            "parameters": [_ID],
            "get": {
                "summary": "Every version of a memory, oldest first",
                "operationId": "memoryHistory",
                "responses": {"200": _ok(list_of("Memory")), **_ERRORS, **_NOT_FOUND},
            },
        },
    }

    user_header = {
        "name": USER_HEADER,
        "in": "header",
        "required": False,
        "schema": _USER,
        "description": "The user, when not in the body or query: the header's bytes read as UTF-8 "
        "(not percent-decoded). When present it must be a valid user id, even if the body names one.",
    }
    session_header = {
        "name": "X-Memos-Session",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "A session id for the memories added (neighbouring turns).",
    }
    extra = {
        "addMemories": [user_header, session_header],
        "listMemories": [user_header],
        "searchMemories": [user_header],
    }
    for ops in paths.values():
        for method, op in ops.items():
            if method == "parameters":
                continue
            op["parameters"] = [*op.get("parameters", []), *extra.get(op["operationId"], [])]
            op["tags"] = ["memories"]
    status_body = {"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}
    paths["/healthz"] = {
        "get": {
            "operationId": "healthz",
            "summary": "Liveness: 200 while the process serves.",
            "security": [],
            "tags": ["health"],
            "responses": {"200": _ok(status_body, "Serving.")},
        }
    }
    paths["/readyz"] = {
        "get": {
            "operationId": "readyz",
            "summary": "Readiness: storage takes writes, no acknowledged exchange is being lost, the "
            "write-back worker runs (where this process has one) and the outbox is not stalled.",
            "security": [],
            "tags": ["health"],
            "responses": {
                "200": _ok(status_body, "Ready."),
                "503": _ok(
                    status_body,
                    "Not ready; the body says which part (storage, write_retry, worker, outbox).",
                ),
            },
        }
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "memos-proxy memory API",
            "version": "1",
            "description": "Long-term memory for any OpenAI-compatible chat endpoint. Authenticate with "
            "`Authorization: Bearer <tenant key>`; `user` names the owner inside the tenant. Every JSON "
            f"body nests at most {MAX_JSON_DEPTH} levels (the body object is level 1) and no array or "
            f"object in it has more than {MAX_JSON_ITEMS} members; bad input answers 400 with "
            "`error.param` naming the field, and changes nothing.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
