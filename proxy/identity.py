"""Who the user of a request is: one rule for every route that calls an upstream for a user (chat
completions, responses, embeddings and relayed calls), so that clients need not change to get memory.

The first of these that names a user wins:

1. the `X-Memos-User` header;
2. the user a user-bound key is bound to;
3. the body's `user`;
4. the body's `safety_identifier` (what the OpenAI SDKs now send in place of `user`);
5. the body fields the tenant policy names, in its order (`identity.body_fields`, e.g. `prompt_cache_key`
   where a client sets it per user);
6. the request headers the tenant policy names, in its order (`identity.headers`, e.g. Open WebUI's
   `X-OpenWebUI-User-Id`, sent when ENABLE_FORWARD_USER_INFO_HEADERS=true).

`X-Memos-User` and the body's `user` are explicit: a user-bound key that names another user with them is
refused by the ACL (403), as always (`memos.effective_user`, then the route's `authorize`). Sources 4-6
are only read when nothing before them names a user, so a bound key's user always wins over them.
Every value that is used holds to the one user id rule (`memos.limits`, as the memory API's `user`):
a 400 names the field or header otherwise. An empty value counts as absent; so does a policy-named body
field that is not a string (it is the upstream's field, with its own type). Header values are read as
UTF-8 from their raw bytes, as `X-Memos-User` is.

The memory API (`/v1/memories`) is not covered: there `user` names whose memories are read or changed,
explicitly (its route reads the body, the query and `X-Memos-User`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.requests import Request

from memos import Policy, Principal, effective_user
from proxy.errors import bad_request
from proxy.wire import header_user, header_value, json_type, user_id

# Body fields the OpenAI API defines as naming the end user, after `user`.
BODY_FIELDS = ("safety_identifier",)


def request_user(
    request: Request, principal: Principal, policy: Policy, body: Mapping[str, Any]
) -> str | None:
    """The user this request acts for (not yet authorised: the route calls `authorize` with it)."""
    named = header_user(request) or _body_user(body, "user", strict=True)
    if named is None and principal.bound_user is None:
        named = _implicit_user(request, policy, body)
    return effective_user(principal, named)


def _implicit_user(request: Request, policy: Policy, body: Mapping[str, Any]) -> str | None:
    for field in BODY_FIELDS:
        found = _body_user(body, field, strict=True)
        if found is not None:
            return found
    for field in policy.identity.body_fields:
        found = _body_user(body, field, strict=False)
        if found is not None:
            return found
    for name in policy.identity.headers:
        value = header_value(request, name)
        if value:
            return user_id(value, name)
    return None


def _body_user(body: Mapping[str, Any], field: str, *, strict: bool) -> str | None:
    """The user a body field names. `strict`: a field the OpenAI API defines as a string, so another
    type is the client's error (400); a field the policy names is only read when it is a string."""
    value = body.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        if not strict:
            return None
        raise bad_request(
            f"Invalid type for '{field}': expected a string, but got {json_type(value)}.",
            param=field,
            code="invalid_type",
        )
    return user_id(value, field)
