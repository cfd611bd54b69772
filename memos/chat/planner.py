"""The decisions memory makes per request, in one place: what memory may do (the switch), which mode
serves (plaintext, activation, parametric, off), and for a local model the runtime's inputs.

Pure functions of the request, the policy, the ACL and what is ready; memos.chat.memory calls them
once per request and returns the result as one MemoryPlan. Nothing else decides these.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol

from memos.chat.contract import MemoryReason, MemorySwitch
from memos.governance.acl import Operation, is_allowed
from memos.governance.policy import Policy
from memos.governance.principal import Principal
from memos.modes import MemoryMode

if TYPE_CHECKING:
    from memos.local.runtime import LocalMemory
    from memos.local.scheduler import LocalReadiness


class LocalMemorySource(Protocol):
    """What the planner needs of the local runtime's memory (memos.local.scheduler.MemScheduler)."""

    async def readiness(self, tenant: str, user: str, model_name: str) -> LocalReadiness: ...

    async def memory_for(
        self, ready: LocalReadiness, mode: MemoryMode, *, with_adapter: bool = False
    ) -> LocalMemory | None: ...

    def count_hits(self, tenant: str, memory_ids: Sequence[str]) -> None:
        """Injected memories were used (the heat that promotes them); must not block."""
        ...


def memory_switch(
    requested: MemorySwitch, principal: Principal, policy: Policy, user: str | None
) -> MemorySwitch:
    """What memory may do on this request: the client's wish narrowed by the policy and the ACL."""
    if requested is MemorySwitch.OFF or user is None:
        return MemorySwitch.OFF
    read = (
        requested in (MemorySwitch.ON, MemorySwitch.READ)
        and policy.memory.inject
        and is_allowed(principal, policy, Operation.MEMORY_READ, user)
    )
    write = (
        requested in (MemorySwitch.ON, MemorySwitch.WRITE)
        and policy.memory.write
        and is_allowed(principal, policy, Operation.MEMORY_WRITE, user)
    )
    if read and write:
        return MemorySwitch.ON
    return MemorySwitch.READ if read else MemorySwitch.WRITE if write else MemorySwitch.OFF


def switch_reason(requested: MemorySwitch, switch: MemorySwitch, user: str | None) -> MemoryReason | None:
    """Why `switch` (what `memory_switch` allowed) is less than what the client asked for: no user was
    named, or the policy (its memory switches or its ACL) narrowed it; None when it is what was asked."""
    if requested is MemorySwitch.OFF or switch is requested:
        return None
    return MemoryReason.NO_USER if user is None else MemoryReason.POLICY


def choose_mode(
    requested: MemoryMode,
    allowed: Iterable[str],
    *,
    local: bool,
    activation_possible: bool = False,
    activation_ready: bool = False,
    parametric_ready: bool = False,
) -> MemoryMode:
    """The mode that serves a request that may read memory.

    An explicit request is honoured when the policy allows it and it can serve (activation needs a
    non-empty block, whose cache is then built if missing; parametric needs a trained adapter);
    otherwise, and for `auto`, the first that is allowed and ready of: activation with its cache built,
    parametric, plaintext, activation (cache to be built), off. Remote models only know plaintext and off.
    For `auto` (and an explicit request that falls back to it) `activation_possible` and
    `activation_ready` are those of promoted memories (LocalReadiness.activation_promoted / _ready).
    """
    allowed_modes = {MemoryMode(m) for m in allowed if m in MemoryMode._value2member_map_}
    if requested is MemoryMode.OFF:
        return MemoryMode.OFF

    def can(mode: MemoryMode, ready: bool) -> bool:
        return mode in allowed_modes and ready

    if not local:
        return MemoryMode.PLAINTEXT if MemoryMode.PLAINTEXT in allowed_modes else MemoryMode.OFF
    possible = {
        MemoryMode.ACTIVATION: activation_possible,
        MemoryMode.PARAMETRIC: parametric_ready,
        MemoryMode.PLAINTEXT: True,
    }
    if requested in possible and can(requested, possible[requested]):
        return requested
    for mode, ready in (
        (MemoryMode.ACTIVATION, activation_ready),
        (MemoryMode.PARAMETRIC, parametric_ready),
        (MemoryMode.PLAINTEXT, True),
        (MemoryMode.ACTIVATION, activation_possible),
    ):
        if can(mode, ready):
            return mode
    return MemoryMode.OFF


_LOCAL_ONLY = (MemoryMode.ACTIVATION, MemoryMode.PARAMETRIC)


def remote_reason(requested: MemoryMode, mode: MemoryMode, allowed: Iterable[str]) -> MemoryReason | None:
    """Why a remote model's request for a local-only mode is served otherwise (None: nothing to say;
    a mode the policy forbids is the policy's doing, a mode it allows is the remote model's)."""
    if requested not in _LOCAL_ONLY or mode is requested:
        return None
    return MemoryReason.REMOTE_MODEL if requested.value in set(allowed) else MemoryReason.POLICY


def local_reason(
    requested: MemoryMode, mode: MemoryMode, allowed: Iterable[str], ready: LocalReadiness
) -> MemoryReason | None:
    """Why a local model's explicitly requested mode is not the one that serves (None when it is, for
    `auto`, and for `off`)."""
    if requested in (MemoryMode.AUTO, MemoryMode.OFF) or mode is requested:
        return None
    if requested.value not in set(allowed):
        return MemoryReason.POLICY
    if requested is MemoryMode.ACTIVATION:
        return MemoryReason.UNSUPPORTED_MODEL if ready.unsupported is not None else MemoryReason.NO_MEMORIES
    if requested is MemoryMode.PARAMETRIC:
        return MemoryReason.NO_ADAPTER
    return None  # plaintext asked, another served: only `off` (the caller names the policy)


class LocalPlan(NamedTuple):
    mode: MemoryMode
    memory: LocalMemory | None  # the runtime's inputs for activation or parametric
    reason: MemoryReason | None  # why the mode asked for is not the mode that serves


async def plan_local(
    local: LocalMemorySource,
    tenant: str,
    user: str,
    model_name: str,
    requested: MemoryMode,
    policy: Policy,
) -> LocalPlan:
    """A local model's mode and, for activation or parametric, the runtime's inputs (for plaintext the
    caller retrieves and renders the block, as for remote models), and why an explicitly requested
    mode does not serve. Explicit activation serves whenever the user has memories and the model's
    cache is exact (the block is the promoted memories or, while none are, the budget's best fill);
    `auto` only picks activation for promoted memories (LocalReadiness.activation_promoted). When the
    user's adapter is ready and the policy allows parametric memory too, activation also serves through
    the adapter (its cache built under it)."""
    if requested is MemoryMode.OFF:
        return LocalPlan(MemoryMode.OFF, None, None)
    ready = await local.readiness(tenant, user, model_name)
    explicit = requested is MemoryMode.ACTIVATION
    allowed = policy.memory.allowed_modes
    mode = choose_mode(
        requested,
        allowed,
        local=True,
        activation_possible=ready.activation_possible if explicit else ready.activation_promoted,
        activation_ready=ready.activation_ready,
        parametric_ready=ready.parametric_ready,
    )
    reason = local_reason(requested, mode, allowed, ready)
    # Activation and parametric together: the adapter is active and the block's cache built under it.
    with_adapter = (
        mode is MemoryMode.ACTIVATION
        and ready.parametric_ready
        and MemoryMode.PARAMETRIC.value in set(allowed)
    )
    if mode in _LOCAL_ONLY:
        return LocalPlan(mode, await local.memory_for(ready, mode, with_adapter=with_adapter), reason)
    return LocalPlan(mode, None, reason)
