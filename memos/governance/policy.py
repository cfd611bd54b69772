"""A tenant's policy: what it may do, its budgets, its upstream and its failure mode.

Loaded from `policies/<tenant>.yaml` (see memos.governance.policy_store); a tenant without a file
gets `Policy()` defaults. The JSON Schema published in policies/ is generated from these models.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


class MemoryPolicy(_Strict):
    inject: bool = True
    write: bool = True
    top_k: int = Field(default=12, ge=1, le=200)
    token_budget: int = Field(default=600, ge=0, le=32000)
    min_score: float = Field(default=0.0, ge=0.0)
    extractor: str = "heuristic"  # "heuristic" or "llm:<model>"
    retention_days: int | None = Field(default=None, ge=1)
    redaction: RedactionPolicy = Field(default_factory=RedactionPolicy)
    fail_mode: FailMode = FailMode.OPEN
    allowed_modes: list[str] = Field(default_factory=lambda: ["plaintext", "activation", "parametric", "off"])


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
    audit_level: AuditLevel = AuditLevel.ALL
