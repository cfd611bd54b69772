"""The seam between the chat route (proxy/) and memory (memos/): what memory does around one chat call.

The proxy builds a ChatContext, asks `prepare` for the body to send upstream, relays the answer, and
hands the finished exchange to `complete` before the reply's last byte, so that nothing acknowledged
is lost. Memory never sees HTTP objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from memos.errors import Unavailable
from memos.governance.principal import Principal


class MemoryUnavailable(Unavailable):
    """Memory could not be reached and the tenant's policy fails closed: the proxy answers 503."""


class MemorySwitch(StrEnum):
    ON = "on"
    OFF = "off"
    READ = "read"  # inject, do not write back
    WRITE = "write"  # write back, do not inject


class MemoryReason(StrEnum):
    """Why memory did not run on a request, or ran in another mode than asked (x-memos-memory-reason)."""

    OVERLOADED = "overloaded"  # memory could not keep up: answered without it rather than queueing
    VAULT_UNAVAILABLE = "vault_unavailable"  # storage failed and the policy fails open


class MemoryMode(StrEnum):
    AUTO = "auto"
    PLAINTEXT = "plaintext"
    ACTIVATION = "activation"
    PARAMETRIC = "parametric"
    OFF = "off"


@dataclass(frozen=True)
class ChatContext:
    principal: Principal
    request_id: str
    user: str | None
    session: str | None
    switch: MemorySwitch = MemorySwitch.ON
    requested_mode: MemoryMode = MemoryMode.AUTO
    model: str = ""
    # True when the model is served by the local runtime (activation/parametric become possible).
    local_model: bool = False


@dataclass
class PreparedChat:
    """What memory decided: the body to send, the mode used, and what to remember for write-back."""

    body: dict[str, Any]
    mode: MemoryMode = MemoryMode.OFF
    injected_ids: list[str] = field(default_factory=list)
    # For the local runtime: a ready activation or parametric memory to run with (opaque to the proxy).
    local_memory: Any = None
    # Set when memory was asked for but did not run as asked (None: it did, or it was not asked for).
    reason: MemoryReason | None = None
    block_tokens: int = 0  # the injected plaintext block's size (memos.recall.injection.estimate_tokens)

    @property
    def injected_count(self) -> int:
        return len(self.injected_ids)


@dataclass(frozen=True)
class FinishedExchange:
    request_messages: list[dict[str, Any]]
    assistant_text: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)


class ChatMemory(Protocol):
    async def prepare(self, ctx: ChatContext, body: dict[str, Any]) -> PreparedChat: ...

    async def complete(self, ctx: ChatContext, prepared: PreparedChat, exchange: FinishedExchange) -> None:
        """Durably record the exchange for write-back (outbox row committed before returning)."""
        ...


class NoChatMemory:
    """Memory off: the body goes through unchanged and nothing is recorded."""

    async def prepare(self, ctx: ChatContext, body: dict[str, Any]) -> PreparedChat:
        return PreparedChat(body=body)

    async def complete(self, ctx: ChatContext, prepared: PreparedChat, exchange: FinishedExchange) -> None:
        return None
