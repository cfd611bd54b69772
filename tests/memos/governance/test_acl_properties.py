"""Property tests for the ACL alone: random roles, keys, bindings, policies and operations.

The end-to-end counterpart (no call returns another tenant's or another user's memory) runs the
memory API in tests/e2e/test_governance_isolation.py.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from memos.governance.acl import USER_SCOPED, AccessDenied, Operation, authorize, role_operations
from memos.governance.policy import AclPolicy, Policy
from memos.governance.principal import Principal, Role

USERS = ["alice", "bob", "carol"]
OPS = list(Operation)
OP_NAMES = [op.value for op in OPS]

principals = st.builds(
    Principal,
    tenant=st.sampled_from(["t1", "t2"]),
    key_id=st.sampled_from(["k1", "k2", "k3"]),
    role=st.sampled_from(list(Role)),
    bound_user=st.one_of(st.none(), st.sampled_from(USERS)),
)
policies = st.builds(
    Policy,
    acl=st.builds(
        AclPolicy,
        roles=st.one_of(
            st.none(),
            st.dictionaries(
                st.sampled_from(["admin", "app", "user", "readonly", "auditor"]),
                st.lists(st.sampled_from([*OP_NAMES, "*"]), max_size=4),
                max_size=3,
            ),
        ),
        key_roles=st.dictionaries(
            st.sampled_from(["k1", "k2", "k3"]),
            st.sampled_from(["admin", "app", "auditor", "nobody"]),
            max_size=2,
        ),
        key_users=st.dictionaries(
            st.sampled_from(["k1", "k2", "k3"]),
            st.lists(st.sampled_from([*USERS, "*"]), max_size=3),
            max_size=2,
        ),
    ),
)


def _allowed(principal, policy, op, user) -> bool:
    try:
        authorize(principal, policy, op, user)
    except AccessDenied:
        return False
    return True


@settings(max_examples=600, deadline=None)
@given(principals, policies, st.sampled_from(OPS), st.one_of(st.none(), st.sampled_from(USERS)))
def test_acl_invariants(principal, policy, op, user):
    allowed = _allowed(principal, policy, op, user)
    role = policy.acl.key_roles.get(principal.key_id, principal.role.value)
    # 1. Nothing outside the (effective) role's operations.
    if allowed:
        assert op in role_operations(policy, role)
    # 2. A bound key never acts for another user, whatever the policy says.
    if principal.bound_user is not None and allowed and op in USER_SCOPED and user is not None:
        assert user == principal.bound_user
    # 3. A user-role key without a binding acts for nobody.
    if principal.role == Role.USER and principal.bound_user is None and user is not None:
        assert not allowed
    # 4. Restricted keys (bound or listed) never get tenant-wide operations.
    listed = policy.acl.key_users.get(principal.key_id)
    restricted = (
        principal.bound_user is not None
        or principal.role == Role.USER
        or (listed is not None and "*" not in listed)
    )
    if restricted and op not in USER_SCOPED:
        assert not allowed
    # 5. ... and act only for their users.
    if listed is not None and "*" not in listed and allowed and user is not None:
        assert user in listed
    # 6. Without a user, only a chat (which touches no memory) passes for a restricted key.
    if restricted and user is None and allowed:
        assert op == Operation.CHAT


@settings(max_examples=200, deadline=None)
@given(principals, st.sampled_from(OPS), st.one_of(st.none(), st.sampled_from(USERS)))
def test_default_policy_matches_the_documented_table(principal, op, user):
    allowed = _allowed(principal, Policy(), op, user)
    if principal.role == Role.READONLY and op not in (Operation.CHAT, Operation.MEMORY_READ):
        assert not allowed
    if principal.role == Role.APP and op in (Operation.AUDIT_READ, Operation.EXPORT, Operation.KEYS_ADMIN):
        assert not allowed
    if principal.role == Role.ADMIN and principal.bound_user is None:
        assert allowed
