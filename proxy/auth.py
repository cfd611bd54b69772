"""Who is calling: a tenant key -> Principal, the tenant's policy, and the upstream key to use.

Normal mode: `Authorization: Bearer <tenant key>`. Pass-through mode (a tenant policy with
`upstream.passthrough_auth: true`): the proxy key in `X-Memos-Key` and the client's own upstream key
in `Authorization`, which is then sent upstream instead of the configured one. A missing, malformed,
unknown or revoked key answers 401 in the OpenAI envelope.

Failed attempts are held back per client address and per key id (proxy.auth_limits: 429 with
Retry-After once an address has spent its budget) and audited in aggregate, with the address, by
`AuthFailureAudit`: never one chained entry per guess. The address is the one uvicorn reports, so
behind a reverse proxy it is the forwarded one only when uvicorn is told to trust that proxy.

Resolved keys are cached for `settings.key_cache_ttl_s` (by the key's hash) so the hot path does not
touch the database; a revocation through this process's store is seen at once, one made by another
process within the TTL.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from starlette.requests import Request

from memos import (
    AccessDenied,
    ApiKeyStore,
    AuditSink,
    Operation,
    Policy,
    PolicySource,
    PollingThread,
    Principal,
    authorize,
    exception_summary,
    hash_key,
    parse_key_id,
)
from proxy.auth_limits import Admission, AuthLimiter, FailureSummary
from proxy.errors import ApiError, forbidden, unauthorized
from proxy.identity import request_user

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


def client_address(request: Request) -> str:
    client = request.client
    return client.host if client is not None and client.host else "unknown"


def throttled(retry_after: float) -> ApiError:
    seconds = max(1, math.ceil(retry_after))
    return ApiError(
        429,
        f"Too many failed authentication attempts; retry after {seconds} s.",
        type="rate_limit_error",
        code="auth_rate_limited",
        headers={"Retry-After": str(seconds)},
    )


async def authenticate(request: Request, services: Services) -> Caller:
    headers = request.headers
    bearer = bearer_token(headers.get("authorization"))
    memos_key = headers.get("x-memos-key")
    raw_key = memos_key.strip() if memos_key else bearer
    if not raw_key:
        raise unauthorized("Missing API key: send `Authorization: Bearer <key>`.")
    limits = services.auth_limits
    admission = limits.admit(client_address(request), parse_key_id(raw_key))
    if admission.retry_after is not None:
        raise throttled(admission.retry_after)
    try:
        principal = await services.keys.resolve(raw_key)
    except BaseException:
        limits.abandon(admission)
        raise
    if principal is None:
        retry_after = await anyio.to_thread.run_sync(
            _record_failure, services, admission, raw_key, request.state.request_id
        )
        if retry_after is not None:
            raise throttled(retry_after)
        raise unauthorized("Incorrect API key provided.")
    limits.success(admission, principal.key_id)
    request.state.tenant = principal.tenant
    policy = services.policies.get(principal.tenant)
    origin = headers.get("origin")
    if origin is not None and not policy.cors.allows(origin):
        raise forbidden(
            f"This tenant's keys may not be used from the origin {origin[:256]!r} "
            "(policy cors.allowed_origins).",
            code="origin_not_allowed",
        )
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


def _record_failure(
    services: Services, admission: Admission, raw_key: str, request_id: str | None
) -> float | None:
    """Count a failed check (blocking) and audit what is due; returns the Retry-After of a 429.

    The tenant is the one the key id names (revoked key, wrong secret); a key id that names no key
    is counted against the address only, as it has no tenant's log to go to."""
    try:
        tenant = services.api_keys.tenant_of_failed(raw_key)
    except Exception as exc:  # still counted against the address; only the per-key part is lost
        log.error("could not look up the key id of an auth failure: %s", exception_summary(exc))
        tenant = None
    verdict = services.auth_limits.failure(admission, tenant, request_id)
    write_failure_summaries(services.audit, services.policies, verdict.summaries)
    return verdict.retry_after


def write_failure_summaries(
    audit: AuditSink, policies: PolicySource, summaries: list[FailureSummary]
) -> None:
    """Audit auth failures (blocking): each entry names the key id (public) and the address, with
    counts; never the secret."""
    for summary in summaries:
        try:
            audit.record(
                summary.tenant,
                "auth.failure",
                key_id=summary.key_id,
                request_id=summary.request_id,
                detail=summary.detail(),
                level=policies.get(summary.tenant).audit_level,
            )
        except Exception as exc:
            log.error("could not audit an auth failure: %s", exception_summary(exc))


class AuthFailureAudit:
    """Background job: writes the summaries of auth-failure windows that ended (checked every
    `interval_s` in its own thread), and every open one when the app stops."""

    def __init__(
        self, limits: AuthLimiter, audit: AuditSink, policies: PolicySource, interval_s: float = 1.0
    ) -> None:
        self._limits = limits
        self._audit = audit
        self._policies = policies
        self._thread = PollingThread("auth-failure-audit", interval_s, self.flush)
        # One flush at a time, so a caller of flush() finds what another flush took already written.
        self._flushing = threading.Lock()

    def flush(self, everything: bool = False) -> int:
        """Write what is due now (blocking); returns the number of entries."""
        with self._flushing:
            summaries = self._limits.due(everything)
            write_failure_summaries(self._audit, self._policies, summaries)
        return len(summaries)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        await anyio.to_thread.run_sync(self._thread.stop)
        await anyio.to_thread.run_sync(self.flush, True)


def authorize_upstream_use(request: Request, caller: Caller, body: Mapping[str, Any]) -> None:
    """Calls other than chat that spend the tenant's upstream budget (embeddings, passthrough) need
    the chat right, for the user the request names (proxy.identity); 403 otherwise."""
    user = request_user(request, caller.principal, caller.policy, body)
    try:
        authorize(caller.principal, caller.policy, Operation.CHAT, user)
    except AccessDenied as exc:
        raise forbidden(str(exc)) from None
