"""Who is calling: a tenant key -> Principal, the tenant's policy, and the upstream key to use.

Normal mode: `Authorization: Bearer <tenant key>`. Pass-through mode (a tenant policy with
`upstream.passthrough_auth: true`): the proxy key in `X-Memos-Key` and the client's own upstream key
in `Authorization`, which is then sent upstream instead of the configured one. A missing, malformed,
unknown or revoked key answers 401 in the OpenAI envelope.

Resolved keys are cached for `settings.key_cache_ttl_s` (by the key's hash) so the hot path does not
touch the database; a revocation through this process's store is seen at once, one made by another
process within the TTL.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request

from memos.governance.acl import AccessDenied, Operation, authorize, effective_user
from memos.governance.apikeys import ApiKeyStore, hash_key, parse_key_id
from memos.governance.policy import Policy
from memos.governance.principal import Principal
from memos.logsafe import exception_summary
from proxy.errors import forbidden, unauthorized

if TYPE_CHECKING:
    from proxy.services import Services

log = logging.getLogger(__name__)

_MAX_CACHED = 10_000


class KeyResolver:
    """ApiKeyStore.resolve with a short-lived cache; blocking lookups run off the event loop."""

    def __init__(self, store: ApiKeyStore, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def resolve(self, raw_key: str) -> Principal | None:
        digest = hash_key(raw_key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = await anyio.to_thread.run_sync(self.store.resolve, raw_key)
        if principal is None:
            self._cache.pop(digest, None)
        elif self.ttl_s > 0:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[digest] = (now + self.ttl_s, principal)
        return principal

    def revoke(self, key_id: str) -> bool:
        """Revoke through the store and forget cached resolutions of that key (blocking)."""
        revoked = self.store.revoke(key_id)
        self.forget(key_id)
        return revoked

    def forget(self, key_id: str) -> None:
        for digest, (_, principal) in list(self._cache.items()):
            if principal.key_id == key_id:
                self._cache.pop(digest, None)


@dataclass(frozen=True)
class Caller:
    principal: Principal
    policy: Policy
    # The client's own upstream key (pass-through mode only).
    upstream_key: str | None = None


def bearer_token(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


async def authenticate(request: Request, services: Services) -> Caller:
    headers = request.headers
    bearer = bearer_token(headers.get("authorization"))
    memos_key = headers.get("x-memos-key")
    raw_key = memos_key.strip() if memos_key else bearer
    if not raw_key:
        raise unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
    principal = await services.keys.resolve(raw_key)
    if principal is None:
        await _record_failure(services, raw_key, request)
        raise unauthorized("Incorrect API key provided.")
    request.state.tenant = principal.tenant
    policy = services.policies.get(principal.tenant)
    upstream_key = None
    if memos_key and bearer:
        if not policy.upstream.passthrough_auth:
            raise forbidden(
                "Pass-through authentication (upstream key in Authorization, proxy key in X-Memos-Key) "
                "is not enabled for this tenant.",
                code="passthrough_disabled",
            )
        upstream_key = bearer
    return Caller(principal, policy, upstream_key)


async def _record_failure(services: Services, raw_key: str, request: Request) -> None:
    """Audit an auth failure in the tenant its key id names (revoked key, wrong secret). The entry
    names the key id (public) so an operator can tell which key is failing; never the secret."""

    def record() -> None:
        tenant = services.api_keys.tenant_of_failed(raw_key)
        if tenant is not None:
            level = services.policies.get(tenant).audit_level
            services.audit.record(
                tenant,
                "auth.failure",
                key_id=parse_key_id(raw_key),
                request_id=request.state.request_id,
                level=level,
            )

    try:
        await anyio.to_thread.run_sync(record)
    except Exception as exc:
        log.error("could not audit an auth failure: %s", exception_summary(exc))


def authorize_upstream_use(request: Request, caller: Caller, body: Mapping[str, Any]) -> None:
    """Calls other than chat that spend the tenant's upstream budget (embeddings, passthrough) need
    the chat right, for the user named by `X-Memos-User` or the body's `user`; 403 otherwise."""
    named = request.headers.get("x-memos-user") or body.get("user")
    user = effective_user(caller.principal, named if isinstance(named, str) else None)
    try:
        authorize(caller.principal, caller.policy, Operation.CHAT, user)
    except AccessDenied as exc:
        raise forbidden(str(exc)) from None
