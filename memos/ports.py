"""The protocols the parts of memory share: each written once, implemented by the parts named.

Parts depend on these, not on each other's classes, so that the composition root (memos.builder)
can pass any implementation in (tests pass small real ones).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from sqlmodel import Session

    from memos.governance.audit import AuditRecord
    from memos.governance.policy import AuditLevel, Policy


class AuditSink(Protocol):
    """Where governance events are recorded (memos.governance.audit.AuditLog). `record` appends one
    entry (blocking), in the caller's write transaction when given `session`; `record_many` appends
    several in one transaction."""

    def record(
        self,
        tenant: str,
        action: str,
        *,
        key_id: str | None = None,
        request_id: str | None = None,
        user: str | None = None,
        memory_ids: Iterable[str] = (),
        detail: dict[str, Any] | None = None,
        level: AuditLevel | str | None = None,
        session: Session | None = None,
    ) -> object: ...

    def record_many(self, records: Sequence[AuditRecord]) -> object: ...


class PolicySource(Protocol):
    """A tenant's policy as it is now (memos.governance.policy_store.PolicyStore reloads it)."""

    def get(self, tenant: str) -> Policy: ...


class UserDataEraser(Protocol):
    """Anything that holds per-user data and must forget it on erasure (vault, outbox, caches, adapters).
    `erase_user` may be blocking (run in a thread) or async; it returns how many things it removed."""

    def erase_user(self, tenant: str, owner: str) -> Any: ...


class TextCompleter(Protocol):
    """A non-streaming chat call to a named model; returns the assistant's text (the proxy's upstream)."""

    async def complete(self, model: str, messages: list[dict[str, Any]]) -> str: ...


class Background(Protocol):
    """A job started and stopped with the process (outbox worker, scheduler, pools); start()/stop()
    may be sync or async."""

    def start(self) -> Any: ...

    def stop(self) -> Any: ...
