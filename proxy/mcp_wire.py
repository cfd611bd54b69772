"""The MCP endpoint's tools: their arguments (validated models), input schemas and descriptions.

Each tool is a memory REST call under another name, and reads its arguments with the REST call's own
types (proxy/memory_wire.py: the user id rule, the text, query, metadata and time rules, `top_k`,
`limit`, cursors, memory ids, a patch), so what a tool takes and refuses is what the REST API takes
and refuses, with the same limits and the same words (`param` names the argument). The published
input schema of a tool is its model's JSON schema, cleaned as the OpenAPI document cleans its own.

| tool | REST twin |
|---|---|
| `search_memories` | `POST /v1/memories/search` |
| `add_memory` | `POST /v1/memories` (one entry) |
| `list_memories` | `GET /v1/memories` |
| `get_memory` | `GET /v1/memories/{id}` |
| `update_memory` | `PATCH /v1/memories/{id}` |
| `delete_memory` | `DELETE /v1/memories/{id}` |
| `memory_history` | `GET /v1/memories/{id}/history` |
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

from pydantic import ConfigDict, Field, StrictBool, StringConstraints

from memos import Entry
from proxy.memory_wire import (
    MAX_LIMIT,
    MEMORY_ID_PATTERN,
    ListQuery,
    Metadata,
    PatchMemory,
    Query,
    Text,
    Time,
    TopK,
)
from proxy.openapi import published
from proxy.wire import USER_HEADER, UserId, WireModel, matching

_USER = (
    "The user (owner) inside the tenant whose memories these are. Omit it when the key is bound to a "
    f"user (that user is meant) or when the MCP connection sends {USER_HEADER}. A key bound to a user "
    "may name only that user."
)
_MEMORY_ID = "A memory id as the other tools return it (`id`: `mem_` and 28 hex digits)."

User = Annotated[UserId | None, Field(description=_USER)]
MemoryId = Annotated[
    str,
    StringConstraints(min_length=1),
    matching(MEMORY_ID_PATTERN, "is not a memory id (`mem_` and 28 hex digits)"),
    Field(description=_MEMORY_ID),
]


class ToolArguments(WireModel):
    """A tool's arguments: an unknown one is an error (a misspelt argument must not read as absent)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SearchArguments(ToolArguments):
    user: User = None
    query: Annotated[Query, Field(description="What to look for, in words (hybrid dense + keyword search).")]
    top_k: Annotated[
        TopK | None, Field(description="How many memories at most, best first; absent: the tenant's default.")
    ] = None


class AddArguments(ToolArguments):
    user: User = None
    text: Annotated[Text, Field(description="The memory: one fact, stated plainly.")]
    metadata: Metadata | None = None
    observed_at: Time | None = None  # absent: now
    infer: StrictBool = Field(
        default=False,
        description="false: the text becomes one memory as given; true: facts are extracted from it and "
        "merged with (or supersede) the user's existing memories.",
    )
    session: Annotated[
        str | None,
        StringConstraints(min_length=1, max_length=256),
        Field(description="A session id the memory is tagged with (neighbouring turns)."),
    ] = None

    def entry(self) -> Entry:
        return Entry(text=self.text, metadata=self.metadata or {}, observed_at=self.observed_at)


class ListArguments(ToolArguments, ListQuery):
    user: User = None


class MemoryRef(ToolArguments):
    memory_id: MemoryId


class UpdateArguments(ToolArguments):
    """`memory_id` and a PATCH body: validated by PatchMemory itself (see `update_schema`)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    memory_id: MemoryId

    def patch_body(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    arguments: type[ToolArguments]
    read_only: bool
    destructive: bool = False


TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "search_memories",
        "Search memories",
        "Search one user's long-term memories for what is relevant to a query; best first, each with "
        "its score, text, dates, sources and neighbouring turns. Use it before answering a question "
        "that may depend on what the user said earlier.",
        SearchArguments,
        read_only=True,
    ),
    ToolSpec(
        "add_memory",
        "Add a memory",
        "Store a fact about the user as a long-term memory (for example a preference, a plan, a "
        "correction); `observed_at` (when it was observed) defaults to now. Returns the memory (or, "
        "with infer, the memories) written.",
        AddArguments,
        read_only=False,
    ),
    ToolSpec(
        "list_memories",
        "List memories",
        "List one user's active memories, newest first, a page at a time: pass `next_cursor` of a "
        f"page as `cursor` for the next one (`limit` up to {MAX_LIMIT} per page).",
        ListArguments,
        read_only=True,
    ),
    ToolSpec(
        "get_memory",
        "Get a memory",
        "Get one memory by id: text, state, version, dates, importance, hits and sources.",
        MemoryRef,
        read_only=True,
    ),
    ToolSpec(
        "update_memory",
        "Update a memory",
        "Change a memory (its text, metadata, importance, state or dates), which makes a new version; "
        "or roll it back to an earlier version with `rollback_to` alone. Give at least one change.",
        UpdateArguments,
        read_only=False,
    ),
    ToolSpec(
        "delete_memory",
        "Delete a memory",
        "Delete a memory: its text leaves every version and index. It cannot be undone.",
        MemoryRef,
        read_only=False,
        destructive=True,
    ),
    ToolSpec(
        "memory_history",
        "Memory history",
        "Every version of a memory, oldest first: what changed, when, and by which request.",
        MemoryRef,
        read_only=True,
    ),
)
TOOLS_BY_NAME = {t.name: t for t in TOOLS}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """An optional argument as published: its type without `null` (null counts as absent), the
    description kept."""
    options = schema.get("anyOf")
    if not options:
        return schema
    kept = [s for s in options if s.get("type") != "null"]
    if len(kept) != 1:
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    inner = dict(kept[0])
    if "description" in rest:
        inner["description"] = rest.pop("description")
    return {**inner, **rest}


def _object_schema(model: type[WireModel]) -> dict[str, Any]:
    schema = published(model.model_json_schema())
    assert "$defs" not in schema, f"{model.__name__}: a tool's schema must be self-contained"
    schema["properties"] = {name: _without_null(p) for name, p in schema["properties"].items()}
    schema.pop("description", None)  # the tool's own description says it
    return schema


def _update_schema() -> dict[str, Any]:
    """`memory_id` and every change a PATCH takes, flat (an MCP input schema is one object); the
    rules between the changes (at least one; `rollback_to` alone) are PatchMemory's, and said in the
    tool's description."""
    patch = published(PatchMemory.model_json_schema())
    changes, rollback = patch["oneOf"]
    properties = {name: p for name, p in changes["properties"].items() if name != "user"}
    properties["rollback_to"] = rollback["properties"]["rollback_to"]
    memory_id = _object_schema(MemoryRef)["properties"]["memory_id"]
    return {
        "type": "object",
        "properties": {"memory_id": memory_id, **properties},
        "required": ["memory_id"],
        "additionalProperties": False,
    }


@cache
def input_schema(name: str) -> dict[str, Any]:
    """The published input schema of a tool (built once)."""
    spec = TOOLS_BY_NAME[name]
    if spec.arguments is UpdateArguments:
        return _update_schema()
    schema = _object_schema(spec.arguments)
    schema["additionalProperties"] = False
    return schema
