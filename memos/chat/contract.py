"""The seam between the chat route (proxy/) and memory (memos/): what memory does around one chat call.

The proxy builds a ChatContext, asks `plan` what memory does (the body to send upstream and what to
record), relays the answer, and hands the finished exchange to `complete` before the reply's last
byte, so that nothing acknowledged is lost. Memory never sees HTTP objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from memos.errors import Unavailable
from memos.governance.policy import Policy
from memos.governance.principal import Principal
from memos.modes import MemoryMode

if TYPE_CHECKING:
    from memos.local.runtime import LocalMemory


class MemoryUnavailable(Unavailable):
    """Memory could not be reached and the tenant's policy fails closed: the proxy answers 503."""


class MemorySwitch(StrEnum):
    ON = "on"
    OFF = "off"
    READ = "read"  # inject, do not write back
    WRITE = "write"  # write back, do not inject


class ApiShape(StrEnum):
    """Which OpenAI API a request body has (memos.chat.shapes reads and injects into each)."""

    CHAT = "chat"  # POST /v1/chat/completions: `messages`
    RESPONSES = "responses"  # POST /v1/responses: `instructions` and `input` (a string or items)


class MemoryReason(StrEnum):
    """Why memory did not run on a request, or ran in another mode than asked (x-memos-memory-reason).

    None of these is set when the client itself turned memory off (X-Memos-Memory / -Mode: off)."""

    NO_USER = "no_user"  # nothing named the user (proxy/identity.py lists what may)
    POLICY = "policy"  # the tenant's policy (memory.inject / write / allowed_modes, or its ACL) said no
    OVERLOADED = "overloaded"  # memory could not keep up: answered without it rather than queueing
    VAULT_UNAVAILABLE = "vault_unavailable"  # storage failed and the policy fails open
    # An explicitly requested mode (X-Memos-Memory-Mode) could not serve; another one did:
    NO_MEMORIES = "no_memories"  # activation: the user has no live memories to put in the block
    NO_ADAPTER = "no_adapter"  # parametric: no adapter trained on the user's current memories
    REMOTE_MODEL = "remote_model"  # activation / parametric: only a local model can serve them
    UNSUPPORTED_MODEL = "unsupported_model"  # activation: the model's cache cannot be reused exactly


@dataclass(frozen=True)
class ChatContext:
    """One chat request as memory sees it: who, which user and session, and what the client asked of
    memory (headers). What memory then does is decided once, by `ChatMemory.plan`."""

    principal: Principal
    policy: Policy
    request_id: str
    user: str | None
    session: str | None
    requested_switch: MemorySwitch = MemorySwitch.ON
    requested_mode: MemoryMode = MemoryMode.AUTO
    model: str = ""
    # True when the model is served by the local runtime (activation/parametric become possible).
    local_model: bool = False
    shape: ApiShape = ApiShape.CHAT  # the body's API: where its turns are and where the block goes


@dataclass(frozen=True)
class MemoryPlan:
    """What memory does on one request, decided once (memos.chat.planner): the proxy reads it and never
    re-derives any of it; the upstream gets `body` and, for a local model, `local`."""

    body: dict[str, Any]  # what is sent upstream (the memory block injected for remote plaintext)
    switch: MemorySwitch = MemorySwitch.OFF  # what memory may do: the client's wish narrowed by policy/ACL
    mode: MemoryMode = MemoryMode.OFF
    injected_ids: tuple[str, ...] = ()
    # A local model's memory inputs: the block (any mode), its KV cache (activation), the adapter
    # (parametric). None for remote models, and for local ones when nothing is injected.
    local: LocalMemory | None = None
    # Set when memory was asked for but did not run as asked (None: it did, or it was not asked for).
    reason: MemoryReason | None = None
    block_tokens: int = 0  # the injected plaintext block's size (memos.recall.injection.estimate_tokens)

    @property
    def reads(self) -> bool:
        return self.switch in (MemorySwitch.ON, MemorySwitch.READ)

    @property
    def writes(self) -> bool:
        return self.switch in (MemorySwitch.ON, MemorySwitch.WRITE)

    @property
    def injected_count(self) -> int:
        return len(self.injected_ids)


@dataclass(frozen=True)
class FinishedExchange:
    request_messages: list[dict[str, Any]]
    assistant_text: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class ChatMemory(Protocol):
    async def plan(self, ctx: ChatContext, body: dict[str, Any]) -> MemoryPlan:
        """Decide and prepare what memory does on this request. Raises MemoryUnavailable when memory
        cannot run and the tenant's policy fails closed."""
        ...

    async def complete(self, ctx: ChatContext, plan: MemoryPlan, exchange: FinishedExchange) -> None:
        """Durably record the exchange for write-back (outbox row committed before returning)."""
        ...


class NoChatMemory:
    """Memory off: the body goes through unchanged and nothing is recorded."""

    async def plan(self, ctx: ChatContext, body: dict[str, Any]) -> MemoryPlan:
        return MemoryPlan(body=body)

    async def complete(self, ctx: ChatContext, plan: MemoryPlan, exchange: FinishedExchange) -> None:
        return None
