"""The memory API as OpenAPI 3.1, served at /openapi.json: schemas generated from the wire models.

`components/schemas` is what pydantic generates for the request models (validation) and the response
shapes (proxy/memory_wire.py), with every `$defs` entry moved there; the paths are assembled below.
No limit is written here: each comes with the model (or the parameter's model) that enforces it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode
from typing_extensions import TypedDict

from proxy.health_wire import Readiness
from proxy.memory_wire import (
    MEMORY_ID_PATTERN,
    REF,
    AddMemories,
    EraseQuery,
    Error,
    ListQuery,
    Memories,
    Memory,
    MemoryDeleted,
    MemoryErased,
    MemoryList,
    PatchMemory,
    SearchHits,
    SearchMemories,
)
from proxy.wire import MAX_JSON_DEPTH, MAX_JSON_ITEMS, USER_HEADER, USER_ID_SCHEMA


class Status(TypedDict):
    status: str


_REQUESTS: tuple[type[Any], ...] = (AddMemories, SearchMemories, PatchMemory)
_RESPONSES: tuple[type[Any], ...] = (
    Memory,
    Memories,
    SearchHits,
    MemoryList,
    MemoryDeleted,
    MemoryErased,
    Error,
    Status,
    Readiness,
)


def published(node: Any, names: bool = False) -> Any:
    """A generated JSON schema as published: without pydantic's titles (class and field names
    restated) or its `default: null` (a field given null counts as not given, which the descriptions
    say). `names`: `node` maps names to schemas (`properties`, `$defs`)."""
    if isinstance(node, list):
        return [published(n) for n in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {name: published(schema) for name, schema in node.items()}
    return {
        key: value
        if key in ("enum", "const", "default", "examples")
        else published(value, names=key in ("properties", "$defs", "patternProperties"))
        for key, value in node.items()
        if key != "title" and not (key == "default" and value is None)
    }


def schemas() -> dict[str, Any]:
    """Every request and response schema, by name, referring to each other through REF."""
    inputs: list[tuple[str, JsonSchemaMode, TypeAdapter[Any]]] = [
        *((t.__name__, "validation", TypeAdapter(t)) for t in _REQUESTS),
        *((t.__name__, "serialization", TypeAdapter(t)) for t in _RESPONSES),
    ]
    _, definitions = TypeAdapter.json_schemas(inputs, ref_template=REF)
    return published(definitions["$defs"], names=True)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    """A query model's fields as OpenAPI parameters (each field's description on the parameter)."""
    schema = published(model.model_json_schema(ref_template=REF))
    required = set(schema.get("required", ()))
    out = []
    for name, field in schema["properties"].items():
        field = dict(field)
        description = field.pop("description", None)
        out.append(
            {
                "name": name,
                "in": "query",
                **({"required": True} if name in required else {}),
                "schema": field,
                **({"description": description} if description else {}),
            }
        )
    return out


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _ok(_ref("Error"), description)


_ERRORS = {
    "400": _error("Bad input; `error.param` names the field."),
    "401": _error("Missing or unknown API key."),
    "403": _error("The key may not do this (role or user binding)."),
    "429": _error(
        "Too many failed authentication attempts from this address or for this key; "
        "`Retry-After` says when to try again."
    ),
}
_NOT_FOUND = {"404": _error("No such memory in the caller's tenant.")}
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
    "schema": USER_ID_SCHEMA,
    "description": "The user (owner) inside the tenant; or X-Memos-User, or the key's bound user.",
}
_USER_HEADER = {
    "name": USER_HEADER,
    "in": "header",
    "required": False,
    "schema": USER_ID_SCHEMA,
    "description": "The user, when not in the body or query: the header's bytes read as UTF-8 "
    "(not percent-decoded). When present it must be a valid user id, even if the body names one.",
}
_SESSION_HEADER = {
    "name": "X-Memos-Session",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "A session id for the memories added (neighbouring turns).",
}
# Headers an operation reads besides Authorization, by operationId.
_HEADERS = {
    "addMemories": [_USER_HEADER, _SESSION_HEADER],
    "listMemories": [_USER_HEADER],
    "searchMemories": [_USER_HEADER],
}


def _memory_paths() -> dict[str, Any]:
    paths: dict[str, Any] = {
        "/v1/memories": {
            "post": {
                "summary": "Add memories (batch)",
                "operationId": "addMemories",
                "requestBody": _json_body(_ref("AddMemories")),
                "responses": {"200": _ok(_ref("Memories")), **_ERRORS},
            },
            "get": {
                "summary": "List a user's active memories, newest first",
                "operationId": "listMemories",
                "parameters": [_USER_Q, *_query_parameters(ListQuery)],
                "responses": {"200": _ok(_ref("MemoryList")), **_ERRORS},
            },
            "delete": {
                "summary": "Erase every memory of a user from every store",
                "operationId": "eraseUser",
                "parameters": _query_parameters(EraseQuery),
                "responses": {"200": _ok(_ref("MemoryErased")), **_ERRORS},
            },
        },
        "/v1/memories/search": {
            "post": {
                "summary": "Search a user's memories (hybrid dense + keyword), best first",
                "operationId": "searchMemories",
                "requestBody": _json_body(_ref("SearchMemories")),
                "responses": {"200": _ok(_ref("SearchHits")), **_ERRORS},
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
                "responses": {"200": _ok(_ref("MemoryDeleted")), **_ERRORS, **_NOT_FOUND},
            },
        },
        "/v1/memories/{memory_id}/history": {
            "parameters": [_ID],
            "get": {
                "summary": "Every version of a memory, oldest first",
                "operationId": "memoryHistory",
                "responses": {"200": _ok(_ref("Memories")), **_ERRORS, **_NOT_FOUND},
            },
        },
    }
    for ops in paths.values():
        for method, op in ops.items():
            if method != "parameters":
                op["parameters"] = [*op.get("parameters", []), *_HEADERS.get(op["operationId"], [])]
                op["tags"] = ["memories"]
    return paths


def _health_paths() -> dict[str, Any]:
    status = _ref("Status")
    readiness = _ref("Readiness")
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: 200 while the process serves.",
                "security": [],
                "tags": ["health"],
                "responses": {"200": _ok(status, "Serving.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Readiness: the vault's database, the vector store and the embedder are ready, "
                "storage takes writes, no acknowledged exchange is being lost, the write-back worker runs "
                "(where this process has one) and the outbox is not stalled.",
                "security": [],
                "tags": ["health"],
                "responses": {
                    "200": _ok(readiness, "Ready."),
                    "503": _ok(
                        readiness,
                        "Not ready; the body says which part (vault, vectors, embedder, storage, "
                        "write_retry, worker, outbox).",
                    ),
                },
            }
        },
    }


def _users_paths() -> dict[str, Any]:
    user = {
        "type": "object",
        "required": ["object", "user"],
        "properties": {"object": {"const": "user"}, "user": USER_ID_SCHEMA},
        "additionalProperties": False,
    }
    listing = {
        "type": "object",
        "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": user}},
        "additionalProperties": False,
    }
    return {
        "/v1/users": {
            "get": {
                "operationId": "listUsers",
                "summary": "The users (memory owners) of the caller's tenant that the key may read, sorted; "
                "a key restricted to some users sees only those (the memory inspector at /ui lists them).",
                "tags": ["memories"],
                "responses": {
                    "200": _ok(listing),
                    **{k: v for k, v in _ERRORS.items() if k != "400" and k != "403"},
                },
            }
        }
    }


def openapi_document() -> dict[str, Any]:
    """The document, built afresh (the route serves it encoded once)."""
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
        "paths": {**_memory_paths(), **_users_paths(), **_health_paths()},
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
