"""Who is calling: resolved from a tenant API key by the proxy, checked by governance."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"  # everything in its tenant
    APP = "app"  # any user of its tenant; no audit, no export
    USER = "user"  # its own bound user only
    READONLY = "readonly"  # reads only


@dataclass(frozen=True)
class Principal:
    tenant: str
    key_id: str
    role: Role
    # For user-bound keys: the only user this key may act for.
    bound_user: str | None = None
