"""Access control: which operations a principal may perform, and for which users of its tenant.

Roles (built in; a tenant's policy may redefine them or add its own under `acl.roles`):

| role     | operations                                                           | users             |
|----------|----------------------------------------------------------------------|-------------------|
| admin    | everything                                                           | any of its tenant |
| app      | chat, memory read/write/delete/erase                                 | any of its tenant |
| user     | chat, memory read/write/delete/erase                                 | its bound user    |
| readonly | chat (no write-back), memory read                                    | any, or its bound |

The tenant boundary is not decided here: every query runs with `principal.tenant`, so another
tenant's ids are simply not found (404), never "forbidden" (403).

Callers on the chat path authorize CHAT, then MEMORY_READ before injecting and MEMORY_WRITE before
committing write-back; a denial of those two turns that half of memory off for the request rather
than failing the chat.
"""

from __future__ import annotations

from enum import StrEnum

from memos.errors import Denied
from memos.governance.policy import Policy
from memos.governance.principal import Principal, Role


class Operation(StrEnum):
    CHAT = "chat"
    MEMORY_READ = "memory.read"
    MEMORY_WRITE = "memory.write"
    MEMORY_DELETE = "memory.delete"
    MEMORY_ERASE = "memory.erase"
    AUDIT_READ = "audit.read"
    EXPORT = "export"
    KEYS_ADMIN = "keys.admin"
    POLICY_ADMIN = "policy.admin"


class AccessDenied(Denied):
    """The principal may not do this. The message is safe to show to the caller (HTTP 403)."""

    status_code = 403


_MEMORY_OPS = frozenset(
    {Operation.MEMORY_READ, Operation.MEMORY_WRITE, Operation.MEMORY_DELETE, Operation.MEMORY_ERASE}
)

DEFAULT_ROLES: dict[str, frozenset[Operation]] = {
    Role.ADMIN.value: frozenset(Operation),
    Role.APP.value: frozenset({Operation.CHAT, *_MEMORY_OPS}),
    Role.USER.value: frozenset({Operation.CHAT, *_MEMORY_OPS}),
    Role.READONLY.value: frozenset({Operation.CHAT, Operation.MEMORY_READ}),
}

# Operations that act on one user's memories: a key restricted to some users must name one of them.
USER_SCOPED = frozenset({Operation.CHAT, *_MEMORY_OPS})


def role_operations(policy: Policy, role: str) -> frozenset[Operation]:
    """The operations a role may perform under this policy (policy overrides, else the built-ins)."""
    custom = policy.acl.roles
    if custom is not None and role in custom:
        ops = custom[role]
        if "*" in ops:
            return frozenset(Operation)
        return frozenset(Operation(op) for op in ops if op in _OP_VALUES)
    return DEFAULT_ROLES.get(role, frozenset())


_OP_VALUES = frozenset(op.value for op in Operation)


def effective_role(principal: Principal, policy: Policy) -> str:
    """The key's role: the policy's `acl.key_roles` entry for the key id wins over the key's own role."""
    key_roles = getattr(policy.acl, "key_roles", None) or {}
    return key_roles.get(principal.key_id, str(principal.role))


def allowed_users(principal: Principal, policy: Policy) -> frozenset[str] | None:
    """The users this key may act for; None means any user of its tenant."""
    allowed: frozenset[str] | None = None
    if principal.bound_user is not None:
        allowed = frozenset({principal.bound_user})
    elif principal.role == Role.USER:
        allowed = frozenset()  # a user-role key without a bound user acts for nobody
    listed = policy.acl.key_users.get(principal.key_id)
    if listed is not None and "*" not in listed:
        allowed = frozenset(listed) if allowed is None else allowed & frozenset(listed)
    return allowed


def authorize(principal: Principal, policy: Policy, op: Operation, user: str | None) -> None:
    """Raise AccessDenied unless `principal` may perform `op` for `user` (None: no particular user).

    A key restricted to some users (bound user, or `acl.key_users`) must name one of them for any
    user-scoped operation, except a chat with no user (which involves no memory), and may not perform
    tenant-wide operations (audit, export, keys, policy) even if its role grants them.
    """
    op = Operation(op)
    role = effective_role(principal, policy)
    if op not in role_operations(policy, role):
        raise AccessDenied(f"role '{role}' may not perform '{op.value}'")
    allowed = allowed_users(principal, policy)
    if allowed is None:
        return
    if op not in USER_SCOPED:
        raise AccessDenied(f"this key is restricted to some users and may not perform '{op.value}'")
    if user is None:
        if op == Operation.CHAT:
            return
        raise AccessDenied("this key acts for specific users: name the user")
    if user not in allowed:
        raise AccessDenied("this key may not act for that user")


def is_allowed(principal: Principal, policy: Policy, op: Operation, user: str | None) -> bool:
    try:
        authorize(principal, policy, op, user)
    except AccessDenied:
        return False
    return True


def effective_user(principal: Principal, requested: str | None) -> str | None:
    """The user a request acts for: the requested one, or the key's bound user when none was named."""
    if requested is None or requested == "":
        return principal.bound_user
    return requested
