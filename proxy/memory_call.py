"""What the routes with memory (chat completions, responses) share around one call: the memory headers a
client sends, memory's plan and the headers the answer carries (counted in the metrics), and the
write-back that must be durable before the answer's last byte.

The decisions themselves are memory's (`services.chat_memory.plan`); this only carries them to HTTP.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from memos import (
    ApiShape,
    ChatContext,
    FinishedExchange,
    MemoryMode,
    MemoryPlan,
    MemorySwitch,
    Operation,
    Principal,
    authorize,
    exception_summary,
)
from proxy.auth import Caller
from proxy.errors import ApiError, bad_request, not_found
from proxy.identity import request_user
from proxy.services import Services
from proxy.targets import check_model_allowed
from proxy.upstream.base import Upstream
from proxy.upstream.router import UnknownModel, UpstreamKind

log = logging.getLogger(__name__)


def header_enum(
    request: Request, name: str, enum: type[MemorySwitch] | type[MemoryMode], default: Any
) -> Any:
    raw = request.headers.get(name)
    if raw is None or raw == "":
        return default
    try:
        return enum(raw.strip().lower())
    except ValueError:
        allowed = " | ".join(m.value for m in enum)
        raise bad_request(f"Invalid value for header {name}: expected {allowed}.", param=name) from None


@dataclass(frozen=True)
class Requested:
    """What the client asked of memory (X-Memos-Memory, X-Memos-Memory-Mode, X-Memos-Session)."""

    switch: MemorySwitch
    mode: MemoryMode
    session: str | None


@dataclass(frozen=True)
class Admitted:
    """A call with memory let in: what memory was asked for, for whom, and the upstream that serves it."""

    requested: Requested
    user: str | None
    model: str
    kind: UpstreamKind
    upstream: Upstream


def admit(request: Request, services: Services, caller: Caller, body: dict[str, Any], model: str) -> Admitted:
    """The checks every route with memory makes, in order, once its body has parsed: the memory
    headers, who the user is (proxy.identity) and that the key may chat for them, that the policy
    allows the model, and which upstream serves it (404 when none does)."""
    asked = requested(request)
    principal, policy = caller.principal, caller.policy
    user = request_user(request, principal, policy, body)
    authorize(principal, policy, Operation.CHAT, user)
    check_model_allowed(policy, model)
    try:
        kind, upstream = services.upstreams.route(model)
    except UnknownModel as exc:
        raise not_found(str(exc), param="model", code="model_not_found") from None
    return Admitted(asked, user, model, kind, upstream)


def requested(request: Request) -> Requested:
    """The memory headers, read (and refused when malformed) before anything is called."""
    return Requested(
        header_enum(request, "x-memos-memory", MemorySwitch, MemorySwitch.ON),
        header_enum(request, "x-memos-memory-mode", MemoryMode, MemoryMode.AUTO),
        request.headers.get("x-memos-session"),
    )


@dataclass(frozen=True)
class MemoryCall:
    """One call's memory: its context, the plan, and the x-memos-* headers its answer carries."""

    ctx: ChatContext
    plan: MemoryPlan
    headers: dict[str, str]

    @property
    def principal(self) -> Principal:
        return self.ctx.principal


async def plan(
    request: Request,
    services: Services,
    caller: Caller,
    body: dict[str, Any],
    admitted: Admitted,
    shape: ApiShape,
) -> MemoryCall:
    """Memory's plan for this call (MemoryUnavailable, a 503, when it fails closed), with its headers;
    a reason memory did not run as asked is sent and counted."""
    principal, asked = caller.principal, admitted.requested
    ctx = ChatContext(
        principal=principal,
        policy=caller.policy,
        request_id=request.state.request_id,
        user=admitted.user,
        session=asked.session,
        requested_switch=asked.switch,
        requested_mode=asked.mode,
        model=admitted.model,
        local_model=admitted.kind is UpstreamKind.LOCAL,
        shape=shape,
    )
    planned = await services.chat_memory.plan(ctx, body)
    headers = {"x-memos-memory-mode": planned.mode.value, "x-memos-memories": str(planned.injected_count)}
    if planned.reason is not None:
        headers["x-memos-memory-reason"] = planned.reason.value
        services.metrics.skipped_memory(principal.tenant, planned.reason.value)
    services.metrics.observe_memory(
        principal.tenant,
        planned.mode.value,
        read=planned.reads,
        injected=planned.injected_count,
        block_tokens=planned.block_tokens,
    )
    return MemoryCall(ctx, planned, headers)


async def record(services: Services, call: MemoryCall, exchange: FinishedExchange) -> None:
    """Hand the finished exchange to memory (durable when this returns); ApiError(503) if it cannot be
    recorded, so that the answer is not acknowledged."""
    if not call.plan.writes:
        return
    try:
        await services.chat_memory.complete(call.ctx, call.plan, exchange)
    except Exception as exc:
        log.error("memory write-back failed (request %s): %s", call.ctx.request_id, exception_summary(exc))
        raise ApiError(
            503,
            "The answer could not be recorded for memory.",
            type="server_error",
            code="memory_unavailable",
        ) from exc
