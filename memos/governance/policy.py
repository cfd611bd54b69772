"""A tenant's policy: what it may do, its budgets, its upstream and its failure mode.

Loaded from `policies/<tenant>.yaml` (see memos.governance.policy_store); a tenant without a file
gets `Policy()` defaults. The JSON Schema published in policies/ is generated from these models.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FailMode(StrEnum):
    OPEN = "open"  # vault unreachable: answer without memory
    CLOSED = "closed"  # vault unreachable: refuse (503)


class AuditLevel(StrEnum):
    OFF = "off"
    WRITES = "writes"  # writes, deletes, keys, policy, auth failures
    ALL = "all"  # also reads and injections


class UpstreamPolicy(_Strict):
    base_url: str | None = None
    # Name of the environment variable that holds the key (never the key itself).
    api_key_env: str | None = None
    allowed_models: list[str] | None = None  # None: any model
    # Pass-through: the client's own upstream key in Authorization, the proxy key in X-Memos-Key.
    passthrough_auth: bool = False


class RedactionRule(_Strict):
    name: str
    pattern: str  # a Python regular expression
    replacement: str = "[REDACTED]"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return value


BuiltinRedaction = Literal["email", "phone", "card", "iban"]


def _every_builtin() -> list[BuiltinRedaction]:
    return ["email", "phone", "card", "iban"]


class RedactionPolicy(_Strict):
    builtin: list[BuiltinRedaction] = Field(default_factory=_every_builtin)
    custom: list[RedactionRule] = Field(default_factory=list)


class PlacementPolicy(_Strict):
    """Where the memory block goes. By default it is one system message (a system input item on
    /v1/responses) right after the client's own leading system/developer messages, which stay first and
    byte-identical (so provider prefix caches keep hitting them)."""

    # For upstreams (chat templates) that accept only one system message: the block is appended, after a
    # blank line, to the client's (last leading) system message instead; on /v1/responses to its last
    # leading system item, else to a string `instructions`. Without one it is still the first message.
    single_system_message: bool = False


class MemoryPolicy(_Strict):
    inject: bool = True
    write: bool = True
    top_k: int = Field(default=20, ge=1, le=200)
    token_budget: int = Field(default=600, ge=0, le=32000)
    min_score: float = Field(default=0.0, ge=0.0)
    extractor: str = "heuristic"  # "heuristic" or "llm:<model>"
    retention_days: int | None = Field(default=None, ge=1)
    redaction: RedactionPolicy = Field(default_factory=RedactionPolicy)
    fail_mode: FailMode = FailMode.OPEN
    allowed_modes: list[str] = Field(default_factory=lambda: ["plaintext", "activation", "parametric", "off"])
    placement: PlacementPolicy = Field(default_factory=PlacementPolicy)


# A JSON body field name (what `identity.body_fields` may name) and an HTTP header name (a token).
BodyFieldName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
HeaderName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$")]
# Headers that carry secrets: never read as a user id.
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-memos-key"})


class IdentityPolicy(_Strict):
    """Where else the user of a chat may be named, for clients that cannot send X-Memos-User or `user`.

    The order (proxy/identity.py): X-Memos-User, a user-bound key's user, the body's `user`, its
    `safety_identifier`, then these body fields in order, then these headers in order."""

    # Body fields naming the user (string values), e.g. [prompt_cache_key] where a client sets it per user.
    body_fields: list[BodyFieldName] = Field(default_factory=list, max_length=8)
    # Request headers naming the user, e.g. [X-OpenWebUI-User-Id] (Open WebUI with
    # ENABLE_FORWARD_USER_INFO_HEADERS=true). Names are case-insensitive.
    headers: list[HeaderName] = Field(default_factory=list, max_length=8)

    @field_validator("headers")
    @classmethod
    def _no_secrets(cls, value: list[str]) -> list[str]:
        secret = [name for name in value if name.lower() in _SECRET_HEADERS]
        if secret:
            raise ValueError(f"{secret[0]} carries a secret and cannot name a user")
        return value


# A browser origin as sent in the Origin header: scheme://host[:port], no path (compared lower-cased).
OriginName = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#\s]+$", max_length=256, to_lower=True)
]


class CorsPolicy(_Strict):
    """Which browser origins this tenant's keys may be used from. The process's CORS settings
    (MEMOS_CORS_ORIGINS) decide which origins get CORS answers at all; this narrows them per tenant: an
    authenticated request whose Origin header is not listed is refused (403). Requests without an Origin
    (servers, SDKs, curl) are not affected."""

    # Empty: no narrowing (the settings' list).
    allowed_origins: list[OriginName] = Field(default_factory=list, max_length=64)

    def allows(self, origin: str) -> bool:
        return not self.allowed_origins or origin.lower() in self.allowed_origins


# The names of memos.governance.acl.Operation ("*": all of them); kept in step by a test.
OperationName = Literal[
    "*",
    "chat",
    "memory.read",
    "memory.write",
    "memory.delete",
    "memory.erase",
    "audit.read",
    "export",
    "keys.admin",
    "policy.admin",
]


class AclPolicy(_Strict):
    # role -> operations it may perform (see memos.governance.acl.Operation); None: the built-in defaults.
    # Roles named here replace the built-in role of that name; other built-in roles keep their defaults.
    roles: dict[str, list[OperationName]] | None = None
    # key id -> role name (built-in or one defined under `roles`); wins over the role the key was made with.
    key_roles: dict[str, str] = Field(default_factory=dict)
    # key id -> users it may act for ("*" for any); restricts further than its role.
    key_users: dict[str, list[str]] = Field(default_factory=dict)


class Policy(_Strict):
    tenant: str | None = None
    upstream: UpstreamPolicy = Field(default_factory=UpstreamPolicy)
    memory: MemoryPolicy = Field(default_factory=MemoryPolicy)
    acl: AclPolicy = Field(default_factory=AclPolicy)
    identity: IdentityPolicy = Field(default_factory=IdentityPolicy)
    cors: CorsPolicy = Field(default_factory=CorsPolicy)
    audit_level: AuditLevel = AuditLevel.ALL
