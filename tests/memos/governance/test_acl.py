from typing import get_args

import pytest

from memos.governance import policy as policy_mod
from memos.governance.acl import (
    AccessDenied,
    Operation,
    authorize,
    effective_user,
    is_allowed,
)
from memos.governance.policy import AclPolicy, Policy
from memos.governance.principal import Principal, Role

ADMIN = Principal("t", "k-admin", Role.ADMIN)
APP = Principal("t", "k-app", Role.APP)
USER = Principal("t", "k-user", Role.USER, bound_user="alice")
RO = Principal("t", "k-ro", Role.READONLY)


def test_operation_names_match_policy_schema():
    names = set(get_args(policy_mod.OperationName)) - {"*"}
    assert names == {op.value for op in Operation}


def test_admin_may_do_everything():
    for op in Operation:
        authorize(ADMIN, Policy(), op, "bob")


@pytest.mark.parametrize("op", [Operation.AUDIT_READ, Operation.EXPORT, Operation.KEYS_ADMIN])
def test_app_has_no_audit_or_export(op):
    with pytest.raises(AccessDenied):
        authorize(APP, Policy(), op, None)


def test_app_acts_for_any_user():
    for user in ("alice", "bob"):
        for op in (Operation.CHAT, Operation.MEMORY_READ, Operation.MEMORY_WRITE, Operation.MEMORY_ERASE):
            authorize(APP, Policy(), op, user)


def test_user_key_only_for_its_user():
    authorize(USER, Policy(), Operation.MEMORY_READ, "alice")
    authorize(USER, Policy(), Operation.MEMORY_ERASE, "alice")
    with pytest.raises(AccessDenied):
        authorize(USER, Policy(), Operation.MEMORY_READ, "bob")
    with pytest.raises(AccessDenied):
        authorize(USER, Policy(), Operation.MEMORY_READ, None)
    authorize(USER, Policy(), Operation.CHAT, None)  # a chat without a user touches no memory
    assert effective_user(USER, None) == "alice"
    assert effective_user(APP, None) is None


def test_user_role_without_bound_user_acts_for_nobody():
    p = Principal("t", "k", Role.USER)
    assert not is_allowed(p, Policy(), Operation.MEMORY_READ, "alice")


def test_readonly_reads_only():
    authorize(RO, Policy(), Operation.MEMORY_READ, "bob")
    authorize(RO, Policy(), Operation.CHAT, "bob")
    for op in (Operation.MEMORY_WRITE, Operation.MEMORY_DELETE, Operation.MEMORY_ERASE, Operation.AUDIT_READ):
        with pytest.raises(AccessDenied):
            authorize(RO, Policy(), op, "bob")


def test_policy_overrides_roles_and_restricts_keys():
    policy = Policy(
        acl=AclPolicy(
            roles={"app": ["chat", "memory.read", "audit.read"], "auditor": ["audit.read"]},
            key_roles={"k-ro": "auditor"},
            key_users={"k-app": ["carol", "dave"]},
        )
    )
    with pytest.raises(AccessDenied):
        authorize(APP, policy, Operation.MEMORY_WRITE, "carol")
    authorize(APP, policy, Operation.MEMORY_READ, "carol")
    with pytest.raises(AccessDenied):
        authorize(APP, policy, Operation.MEMORY_READ, "bob")  # not one of its users
    with pytest.raises(AccessDenied):
        authorize(APP, policy, Operation.AUDIT_READ, None)  # restricted keys get no tenant-wide ops
    authorize(RO, policy, Operation.AUDIT_READ, None)  # remapped to the auditor role
    with pytest.raises(AccessDenied):
        authorize(RO, policy, Operation.MEMORY_READ, "bob")
    # A bound key stays bound even if the policy lists more users for it.
    policy2 = Policy(acl=AclPolicy(key_users={"k-user": ["*"]}))
    with pytest.raises(AccessDenied):
        authorize(USER, policy2, Operation.MEMORY_READ, "bob")
