"""The memory REST API's wire: request models that validate, response shapes, their limits.

Every limit is defined once: the memory layer's own (`MAX_ENTRIES`, `MAX_TEXT_CHARS`, user ids,
metadata, timestamps: memos) and the API's (`MAX_LIMIT`, `MAX_TOP_K`, cursors, ids: here). The models
validate with them and proxy/openapi.py publishes the models' JSON schemas, so what the document
admits is what the server takes.

Requests are pydantic models (`parse` in proxy/wire.py turns a ValidationError into the 400 naming
the field). Responses are TypedDicts: handlers build plain dicts (encoded by orjson as before) whose
shape the type checker and the published schema both know.

Two limits are published here but enforced by memos after redaction, where the text is final: an
entry's or a patch's text length (MAX_TEXT_CHARS) and "at least one message with text".
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NotRequired, get_args

from pydantic import (
    MISSING,
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StringConstraints,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from memos import (
    MAX_ENTRIES,
    MAX_TEXT_CHARS,
    METADATA_MAX_DEPTH,
    METADATA_MAX_VALUES,
    NOT_BLANK_PATTERN,
    TIMESTAMP_END,
    TIMESTAMP_MIN,
    YEAR_MAX,
    YEAR_MIN,
    YEAR_PATTERN,
    Entry,
    Hit,
    MemoryItem,
    Patch,
    State,
    metadata_problem,
    time_problem,
)
from proxy.wire import UserId, WireModel, json_type, matching, no_bool

# REF: where the OpenAPI document keeps the schemas (proxy/openapi.py generates them there).
REF = "#/components/schemas/{model}"

MAX_LIMIT = 1000
DEFAULT_LIMIT = 50
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
# Memory ids are "mem_" and 28 hex digits (memos.storage.vault.new_memory_id). The routes match only that
# shape, so /v1/memories/search is never read as an id and a path naming no possible memory is a 404
# before it reaches the database.
MEMORY_ID_REGEX = "mem_[0-9a-f]{28}"
MEMORY_ID_PATTERN = f"^{MEMORY_ID_REGEX}$"

# ---------------------------------------------------------------------------------------------- values

_TEXT_RULE = f"Not only whitespace; at most {MAX_TEXT_CHARS} characters (after redaction)."
_NOT_BLANK = matching(NOT_BLANK_PATTERN, "must not be only whitespace")
# A memory's text. Its length is checked by memos once redacted (the text that is stored); the
# document states the same limit.
Text = Annotated[
    str,
    StringConstraints(min_length=1),
    _NOT_BLANK,
    Field(description=_TEXT_RULE, json_schema_extra={"maxLength": MAX_TEXT_CHARS}),
]
Query = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS),
    _NOT_BLANK,
    Field(description="Not only whitespace."),
]


# (The bounds come before the check, so that they stay the integer's own: validated and published.)
_NO_BOOL = BeforeValidator(no_bool)
TopK = Annotated[int, Field(ge=1, le=MAX_TOP_K), _NO_BOOL]
Version = Annotated[int, Field(ge=1, le=MAX_VERSION), _NO_BOOL]


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    problem = metadata_problem(value)
    if problem is not None:
        raise PydanticCustomError(
            "invalid_value",
            "{problem} (metadata nests at most {depth} levels and holds at most {values} values)",
            {"problem": problem, "depth": METADATA_MAX_DEPTH, "values": METADATA_MAX_VALUES},
        )
    return value


_METADATA_RULE = (
    f"at most {METADATA_MAX_DEPTH} levels deep (this object is level 1) and {METADATA_MAX_VALUES} "
    "values in all."
)
Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_metadata),
    Field(
        description="Caller metadata, kept with the memory's source: " + _METADATA_RULE,
        json_schema_extra={"maxProperties": METADATA_MAX_VALUES},
    ),
]


def _time(value: Any) -> datetime:
    """An ISO 8601 date-time (no offset: UTC) or a Unix timestamp in seconds, its year in range."""
    if value is None:
        raise PydanticCustomError("invalid_value", "cannot be cleared (null is not a time)")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PydanticCustomError(
            "invalid_type",
            "expected an ISO 8601 date-time or a Unix timestamp, but got {kind}",
            {"kind": json_type(value)},
        )
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise PydanticCustomError(
                "invalid_value", "expected an ISO 8601 date-time (e.g. 2024-05-01T12:00:00Z)"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
    else:
        try:
            parsed = datetime.fromtimestamp(float(value), UTC)
        except (OverflowError, OSError, ValueError):
            raise PydanticCustomError("invalid_value", "not a valid Unix timestamp") from None
    problem = time_problem(parsed)
    if problem is not None:
        raise PydanticCustomError("invalid_value", problem)
    return parsed


_TIME_RULE = (
    f"An ISO 8601 date-time (no offset: UTC) whose year, as written, lies in {YEAR_MIN}-{YEAR_MAX}, "
    "or a Unix timestamp in seconds within those years (UTC)."
)
_TIME_SCHEMA = {
    "oneOf": [
        {"type": "string", "format": "date-time", "pattern": YEAR_PATTERN},
        {"type": "number", "minimum": TIMESTAMP_MIN, "exclusiveMaximum": TIMESTAMP_END},
    ],
    "description": _TIME_RULE,
}
Time = Annotated[datetime, PlainValidator(_time), WithJsonSchema(_TIME_SCHEMA)]

# ---------------------------------------------------------------------------------------------- messages


def _content(value: Any) -> str | list[Any]:
    # The parts of a list are memos' business (it reads the text parts); the edge checks the shape.
    if not isinstance(value, str | list):
        raise PydanticCustomError(
            "invalid_type",
            "expected a string or an array of parts, but got {kind}",
            {"kind": json_type(value)},
        )
    return value


Content = Annotated[
    str | list[Any],
    PlainValidator(_content, json_schema_input_type=str | list[dict[str, Any] | str]),
]


class Message(TypedDict):
    """A chat message in an entry: an object with a string `role` and the content."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]

    role: str
    content: Content


def _has_role(value: Any) -> Any:
    # An entry's message that is no object, or has no string role, is wrong as a whole (`param` names
    # the message, as this API always has).
    if not isinstance(value, dict) or not isinstance(value.get("role"), str):
        raise PydanticCustomError("invalid_type", "expected an object with a string 'role'")
    return value


# Published as what an entry's messages must contain; memos enforces it, on the redacted text.
class SpokenMessage(TypedDict):
    """A message whose text counts: not a system message, with text content."""

    role: Annotated[str, WithJsonSchema({"type": "string", "not": {"const": "system"}})]
    content: Text | Annotated[list[Text], Field(min_length=1)]


Messages = Annotated[
    list[Annotated[Message, BeforeValidator(_has_role)]],
    Field(
        min_length=1,
        description="At least one message that is not a system message and has text.",
        json_schema_extra={"contains": TypeAdapter(SpokenMessage).json_schema()},
    ),
]

# ---------------------------------------------------------------------------------------------- requests


def _null_means_absent(schema: dict[str, Any]) -> dict[str, Any]:
    """`X | None` as published: X (a field given null counts as not given)."""
    return next(s for s in schema["anyOf"] if s.get("type") != "null")


def _exactly_one_source(schema: dict[str, Any]) -> None:
    props = schema["properties"]
    text, messages = _null_means_absent(props["text"]), _null_means_absent(props["messages"])
    schema["oneOf"] = [
        {"properties": {"text": text, "messages": {"type": "null"}}, "required": ["text"]},
        {"properties": {"messages": messages, "text": {"type": "null"}}, "required": ["messages"]},
    ]


class MemoryEntry(WireModel):
    """Exactly one of `text` or `messages` (null counts as absent)."""

    model_config = ConfigDict(json_schema_extra=_exactly_one_source)

    text: Text | None = None
    messages: Messages | None = None
    metadata: Metadata | None = None
    observed_at: Time | None = Field(None, description=_TIME_RULE + " null or absent: now.")

    @model_validator(mode="after")
    def _text_or_messages(self) -> MemoryEntry:
        if self.text is None and self.messages is None:
            raise PydanticCustomError("missing_required_parameter", "(give 'text' or 'messages')")
        if self.text is not None and self.messages is not None:
            raise PydanticCustomError("invalid_value", "takes 'text' or 'messages', not both")
        return self

    def entry(self) -> Entry:
        return Entry(
            text=self.text,
            messages=[dict(m) for m in self.messages] if self.messages is not None else None,
            metadata=self.metadata or {},
            observed_at=self.observed_at,
        )


def _text_as_entry(value: Any) -> Any:
    return {"text": value} if isinstance(value, str) else value


class AddMemories(WireModel):
    user: UserId | None = None
    memories: Annotated[
        list[
            Annotated[MemoryEntry, BeforeValidator(_text_as_entry, json_schema_input_type=Text | MemoryEntry)]
        ],
        Field(
            min_length=1,
            max_length=MAX_ENTRIES,
            description="Each entry an object, or a string (its `text`).",
        ),
    ]
    infer: StrictBool = Field(
        default=False,
        description="false: each entry becomes a memory as given; "
        "true: the MemReader extracts facts and the MemOperator merges/supersedes.",
    )

    def entries(self) -> list[Entry]:
        return [m.entry() for m in self.memories]


class SearchMemories(WireModel):
    user: UserId | None = None
    query: Query
    top_k: TopK | None = None
    injection: StrictBool = Field(
        default=False,
        description="true: the answer also carries `injection`, the memory block a chat whose latest "
        "user turn is `query` would have injected now (the tenant policy's top_k, min_score and token "
        "budget; `top_k` here does not apply to it).",
    )


class ListQuery(WireModel):
    """GET /v1/memories's query (the user is read as everywhere: query, X-Memos-User, the key's user)."""

    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT), _NO_BOOL] = DEFAULT_LIMIT
    cursor: Annotated[
        str,
        StringConstraints(max_length=CURSOR_MAX_CHARS),
        matching(CURSOR_PATTERN, "is not a cursor this endpoint returned"),
        Field(description="`next_cursor` of the previous page; empty or absent: the first page."),
    ] = ""


class EraseQuery(WireModel):
    """DELETE /v1/memories's query: the user is named there, and nowhere else, on purpose."""

    user: Annotated[
        UserId,
        Field(
            description="The user (owner) inside the tenant whose memories are all erased; named here "
            "only (not by X-Memos-User or the key's bound user)."
        ),
    ]

    @model_validator(mode="before")
    @classmethod
    def _user_named(cls, data: Any) -> Any:
        if isinstance(data, dict) and "user" not in data:
            raise PydanticCustomError(
                "missing_required_parameter",
                "(DELETE /v1/memories?user=U erases every memory of U)",
                {"field": "user"},
            )
        return data


PatchState = Literal["active", "archived", "superseded"]
_PATCH_STATES = get_args(PatchState)
_NULL_CLEARS = " null clears it."


def _patch_schema(schema: dict[str, Any]) -> None:
    """Published as the two shapes it takes: at least one change, or `rollback_to` alone."""
    props = schema.pop("properties")
    user = {**props.pop("user"), "description": "Ignored (the memory's id names its user)."}
    rollback = props.pop("rollback_to")
    schema.pop("additionalProperties", None)
    schema["oneOf"] = [
        {
            "type": "object",
            "properties": {**props, "user": user},
            "additionalProperties": False,
            "anyOf": [{"required": [name]} for name in sorted(props)],
        },
        {
            "type": "object",
            "properties": {"rollback_to": rollback, "user": user},
            "additionalProperties": False,
            "required": ["rollback_to"],
        },
    ]
    schema["description"] = "At least one change, or `rollback_to` alone."
    del schema["type"]


class PatchMemory(WireModel):
    """PATCH /v1/memories/{id}: the fields given change (`MISSING`: not given, told apart from null,
    which clears a time and is wrong elsewhere). Unknown fields are an error here: a misspelt change
    must not read as no change."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_patch_schema)

    user: UserId | None = None
    text: Text | MISSING = MISSING
    metadata: Metadata | MISSING = Field(
        MISSING, description="Merged into the first source's metadata; " + _METADATA_RULE
    )
    importance: Annotated[StrictFloat, Field(ge=0, le=1)] | MISSING = MISSING
    state: PatchState | MISSING = MISSING
    expires_at: Time | MISSING | None = Field(MISSING, description=_TIME_RULE + _NULL_CLEARS)
    invalid_at: Time | MISSING | None = Field(
        MISSING, description=_TIME_RULE + _NULL_CLEARS + " Not before `valid_from`."
    )
    valid_from: Time | MISSING | None = Field(
        MISSING,
        description=_TIME_RULE
        + _NULL_CLEARS
        + " Not after `invalid_at` (the one given, else the stored one).",
    )
    observed_at: Time | MISSING = MISSING
    rollback_to: Version | MISSING = Field(
        MISSING, description="Make a new version equal to this earlier version."
    )

    @field_validator("state", mode="wrap")
    @classmethod
    def _state_hint(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if value not in _PATCH_STATES:
            raise PydanticCustomError(
                "invalid_value",
                "expected one of {states} (use DELETE to delete)",
                {"states": ", ".join(_PATCH_STATES)},
            )
        return handler(value)

    @model_validator(mode="after")
    def _one_kind_of_change(self) -> PatchMemory:
        changes = self.model_fields_set - {"user"}
        if not changes:
            raise PydanticCustomError(
                "invalid_request",
                "Nothing to change: give at least one of {names}",
                {"names": ", ".join(sorted(PATCH_FIELDS))},
            )
        if "rollback_to" in changes and len(changes) > 1:
            raise PydanticCustomError(
                "invalid_value", "cannot be combined with other changes", {"field": "rollback_to"}
            )
        return self

    def patch(self) -> Patch:
        def given(value: Any) -> Any:
            return None if value is MISSING else value

        clearable = ("expires_at", "invalid_at", "valid_from")
        return Patch(
            text=given(self.text),
            metadata=given(self.metadata),
            importance=given(self.importance),
            state=None if self.state is MISSING else State(self.state),
            expires_at=given(self.expires_at),
            invalid_at=given(self.invalid_at),
            valid_from=given(self.valid_from),
            observed_at=given(self.observed_at),
            clear=tuple(n for n in clearable if n in self.model_fields_set and getattr(self, n) is None),
            rollback_to=given(self.rollback_to),
        )


# The changes a PATCH may make (every field but `user`).
PATCH_FIELDS = frozenset(PatchMemory.model_fields) - {"user"}

# ---------------------------------------------------------------------------------------------- responses

# Response times: whatever was stored, in UTC, as ISO 8601 (`+00:00`), or null.
Timestamp = Annotated[str, Field(json_schema_extra={"format": "date-time"})] | None


class Source(TypedDict):
    request_id: str | None
    message_index: int | None
    session: str | None
    metadata: dict[str, Any]


class Memory(TypedDict):
    id: str
    object: Literal["memory"]
    user: str
    memory: Annotated[str, Field(description="The memory's text.")]
    metadata: Annotated[dict[str, Any], Field(description="The first source's caller metadata.")]
    sources: list[Source]
    scope: Literal["user", "agent", "tenant"]
    kind: Literal["plaintext", "activation", "parametric"]
    state: Literal["active", "superseded", "archived", "deleted"]
    version: int
    importance: float
    observed_at: Timestamp
    valid_from: Timestamp
    invalid_at: Timestamp
    expires_at: Timestamp
    created_at: Timestamp
    updated_at: Timestamp
    hits: int
    last_hit_at: Timestamp


class ContextSource(TypedDict):
    metadata: dict[str, Any]
    session: str | None


class ContextTurn(TypedDict):
    id: str
    memory: str
    observed_at: Timestamp
    sources: list[ContextSource]


class SearchHit(Memory):
    score: float
    context: Annotated[list[ContextTurn], Field(description="Neighbouring turns of the same session.")]


class Memories(TypedDict):
    object: Literal["list"]
    data: list[Memory]


class InjectionPreview(TypedDict):
    block: Annotated[str, Field(description="The system message's content, exactly; empty: nothing.")]
    memory_ids: Annotated[list[str], Field(description="The memories in the block, best ranked first.")]
    tokens: Annotated[int, Field(description="The block's estimated tokens (the policy's budget bounds it).")]


class SearchHits(TypedDict):
    object: Literal["list"]
    data: list[SearchHit]
    injection: NotRequired[Annotated[InjectionPreview, Field(description="With `injection: true`.")]]


class MemoryList(TypedDict):
    object: Literal["list"]
    data: list[Memory]
    next_cursor: str | None
    has_more: bool


class MemoryDeleted(TypedDict):
    id: str
    object: Literal["memory.deleted"]
    deleted: bool


class MemoryErased(TypedDict):
    object: Literal["memory.erased"]
    user: str
    deleted: bool
    counts: Annotated[dict[str, int], Field(description="What each store removed.")]


class ErrorBody(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class Error(TypedDict):
    """The OpenAI error envelope (proxy/errors.py)."""

    error: ErrorBody


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def memory_json(item: MemoryItem) -> Memory:
    sources: list[Source] = [
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
        "scope": str(item.scope),  # type: ignore[typeddict-item]
        "kind": str(item.kind),  # type: ignore[typeddict-item]
        "state": str(item.state),  # type: ignore[typeddict-item]
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


def hit_json(hit: Hit) -> SearchHit:
    context: list[ContextTurn] = [
        {
            "id": c.id,
            "memory": c.text,
            "observed_at": _iso(c.observed_at),
            "sources": [{"metadata": s.metadata or {}, "session": s.session} for s in c.sources],
        }
        for c in hit.context
    ]
    return {**memory_json(hit.item), "score": round(float(hit.score), 6), "context": context}
