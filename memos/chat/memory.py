"""PlaintextChatMemory: what memory does around one chat call (memos.chat.contract.ChatMemory).

prepare(): decide the mode (plaintext for remote models; a local planner may answer activation or
parametric for local ones), retrieve the user's memories with their latest turns as the query, keep
what fits the policy's token budget, and place one fenced system block first (memos.recall.injection);
audit the injection (memory ids only). complete(): redact the exchange and commit it to the outbox
before returning, so the reply's last byte is only sent once the exchange is durable; the worker does
the rest.

The switch decided by the proxy is honoured (off: nothing; read: inject, never write; write: write,
never inject), and so are the policy's `memory.inject` / `memory.write`. When the vault cannot be
reached, `memory.fail_mode` decides: open answers without memory, closed raises MemoryUnavailable,
which the proxy answers with 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from memos.chat.contract import (
    ChatContext,
    FinishedExchange,
    MemoryMode,
    MemoryReason,
    MemorySwitch,
    MemoryUnavailable,
    PreparedChat,
)
from memos.governance.audit import AuditRecord
from memos.governance.policy import FailMode, Policy
from memos.governance.redaction import Redactor
from memos.item import MemoryItem
from memos.observe import MemoryObserver, NoObserver
from memos.recall import injection
from memos.writeback.outbox import Outbox
from memos.writeback.reader import bound_turns, message_text
from memos.writeback.worker import PolicySource
from memos.writeback.write_retry import WriteRetryQueue

log = logging.getLogger(__name__)

# How much of the conversation's tail is used as the retrieval query.
QUERY_CHARS = 1000
# The assistant turn before the user's new turns is kept (cut) as context for the LLM extractor.
CONTEXT_CHARS = 2000


class _Overloaded(Exception):
    """Memory could not keep up with this request (admission control in PlaintextChatMemory)."""


class InjectionAudit(Protocol):
    """Where injections are audited before the memories are sent (memos.governance.group_commit)."""

    async def append(self, record: AuditRecord) -> Any: ...


class Recall(Protocol):
    """Ranked retrieval for injection (best first; the policy's top_k and min_score applied). No ACL and
    no audit here: the proxy authorised the chat, and prepare() audits what it injects."""

    async def recall(
        self, tenant: str, owner: str, query: str, policy: Policy, *, session: str | None
    ) -> Sequence[MemoryItem]: ...


class RetrieverRecall:
    """Recall over memos.recall.retrieval.Retriever: the query embedded through the (micro-batched) embedder
    while the search's keyword side runs off the event loop; neighbouring turns a hit brings as context
    follow it."""

    def __init__(
        self, retriever: Any, embed_one: Callable[[str], Awaitable[Any]], *, neighbours: int = 0
    ) -> None:
        self._retriever = retriever
        self._embed_one = embed_one
        self.neighbours = neighbours

    async def recall(
        self, tenant: str, owner: str, query: str, policy: Policy, *, session: str | None
    ) -> list[MemoryItem]:
        from memos.recall.retrieval import RetrievalParams

        params = RetrievalParams.from_policy(policy, neighbours=self.neighbours)
        hits = await self._retriever.asearch(tenant, owner, query, self._embed_one, params)
        items: list[MemoryItem] = []
        for hit in hits:
            items.append(hit.item)
            items.extend(getattr(hit, "context", ()) or ())
        return items


class LocalPlanner(Protocol):
    """For local models (memos.local.scheduler.MemScheduler): activation / parametric / plaintext / off."""

    async def plan_local(
        self, tenant: str, user: str, model_name: str, requested: MemoryMode, policy: Policy
    ) -> tuple[MemoryMode, Any]: ...

    def count_hits(self, tenant: str, memory_ids: Sequence[str]) -> None:
        """Injected memories were used (the heat that promotes them); must not block."""
        ...


def choose_remote_mode(requested: MemoryMode, policy: Policy) -> MemoryMode:
    """A remote model knows plaintext and off; plaintext when the policy allows it."""
    if requested is MemoryMode.OFF or "plaintext" not in policy.memory.allowed_modes:
        return MemoryMode.OFF
    return MemoryMode.PLAINTEXT


def rendered(item: MemoryItem) -> injection.RenderedMemory:
    """A vault item as the block shows it: dated when it was recorded."""
    return injection.RenderedMemory(id=item.id, text=item.text, when=item.observed_at or item.created_at)


def query_of(messages: Sequence[dict[str, Any]]) -> str:
    """The user's latest turn(s): the newest first, earlier user turns added while short."""
    parts: list[str] = []
    length = 0
    for message in reversed(messages):
        if message.get("role") != "user":
            continue
        text = " ".join(message_text(message).split())
        if not text:
            continue
        parts.append(text)
        length += len(text)
        if length >= 200 or len(parts) >= 3:
            break
    return " ".join(reversed(parts))[-QUERY_CHARS:]


def new_turns(messages: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """The turns new in this request: the user messages after the last assistant message, with that
    assistant message first (context), within what one exchange may be written back as
    (memos.writeback.reader.bound_turns). Indices are positions in the client's messages."""
    last_assistant = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    turns: list[tuple[int, dict[str, Any]]] = []
    if last_assistant >= 0:
        text = message_text(messages[last_assistant])[:CONTEXT_CHARS]
        if text:
            turns.append((last_assistant, {"role": "assistant", "content": text}))
    for i in range(last_assistant + 1, len(messages)):
        if messages[i].get("role") == "user":
            text = message_text(messages[i])
            if text.strip():
                turns.append((i, {"role": "user", "content": text}))
    return bound_turns(turns)


def caller_metadata(body: dict[str, Any]) -> dict[str, Any]:
    """The request's `metadata` (OpenAI's string map), kept as provenance of what it teaches."""
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        return {}
    return {str(k)[:64]: v for k, v in list(metadata.items())[:16] if isinstance(v, str | int | float | bool)}


class PlaintextChatMemory:
    def __init__(
        self,
        *,
        recall: Recall,
        outbox: Outbox,
        policies: PolicySource,
        audit: InjectionAudit | None = None,
        local: LocalPlanner | None = None,
        on_enqueued: Callable[[], None] | None = None,
        write_retry: WriteRetryQueue | None = None,
        recall_timeout_s: float = 2.0,
        max_inflight: int = 256,
        observer: MemoryObserver | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._recall = recall
        self._outbox = outbox
        self._policies = policies
        self._audit = audit
        self.local = local  # set by the composition root when the local runtime is configured
        self._on_enqueued = on_enqueued
        # Fail-open exchanges whose outbox commit failed wait there (memos.writeback.write_retry).
        self._write_retry = write_retry
        self.recall_timeout_s = recall_timeout_s
        self.max_inflight = max_inflight
        self._inflight = 0  # retrievals running now (admission control; touched on the loop only)
        self._observer: MemoryObserver = observer or NoObserver()
        self._now = now

    # -- before the upstream call ---------------------------------------------------------------------

    async def prepare(self, ctx: ChatContext, body: dict[str, Any]) -> PreparedChat:
        policy = self._policies.get(ctx.principal.tenant)
        self._refuse_unrecordable(ctx, policy)
        if (
            ctx.user is None
            or ctx.switch not in (MemorySwitch.ON, MemorySwitch.READ)
            or not policy.memory.inject
        ):
            return PreparedChat(body=body)
        try:
            return await self._prepare(ctx, body, policy, ctx.user)
        except MemoryUnavailable:
            raise
        except _Overloaded:
            return self._overloaded(ctx, policy, body)
        except Exception as exc:
            return self._unavailable(ctx, policy, body, exc)

    async def _prepare(
        self, ctx: ChatContext, body: dict[str, Any], policy: Policy, user: str
    ) -> PreparedChat:
        if ctx.local_model and self.local is not None:
            mode, local_memory = await self.local.plan_local(
                ctx.principal.tenant, user, ctx.model, ctx.requested_mode, policy
            )
            if mode in (MemoryMode.ACTIVATION, MemoryMode.PARAMETRIC):
                ids = list(getattr(local_memory, "memory_ids", ()) or ())
                await self._audit_injection(ctx, policy, user, ids, mode)
                return PreparedChat(body=body, mode=mode, injected_ids=ids, local_memory=local_memory)
        else:
            mode = choose_remote_mode(ctx.requested_mode, policy)
        if mode is not MemoryMode.PLAINTEXT:
            return PreparedChat(body=body)
        return await self._plaintext(ctx, body, policy, user)

    async def _plaintext(
        self, ctx: ChatContext, body: dict[str, Any], policy: Policy, user: str
    ) -> PreparedChat:
        messages = body.get("messages") or []
        query = query_of(messages)
        if not query:
            return PreparedChat(body=body, mode=MemoryMode.PLAINTEXT)
        items = await self._admitted_recall(ctx, user, query, policy)
        chosen = injection.fit_budget([rendered(i) for i in items], policy.memory.token_budget)
        ids = [m.id for m in chosen]
        if ids:
            await self._audit_injection(ctx, policy, user, ids, MemoryMode.PLAINTEXT)
            if self.local is not None:
                self.local.count_hits(ctx.principal.tenant, ids)
        return PreparedChat(
            body=injection.inject(body, chosen),
            mode=MemoryMode.PLAINTEXT,
            injected_ids=ids,
            block_tokens=injection.block_tokens(chosen),
        )

    async def _admitted_recall(
        self, ctx: ChatContext, user: str, query: str, policy: Policy
    ) -> Sequence[MemoryItem]:
        """The recall, unless memory cannot keep up: more than `max_inflight` retrievals running, or
        this one not done within `recall_timeout_s`. Overload is answered at once, never queued."""
        if self._inflight >= self.max_inflight:
            raise _Overloaded
        self._inflight += 1
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(
                self._recall.recall(ctx.principal.tenant, user, query, policy, session=ctx.session),
                self.recall_timeout_s,
            )
        except TimeoutError:
            raise _Overloaded from None
        finally:
            self._inflight -= 1
            self._observer.recalled(ctx.principal.tenant, time.perf_counter() - started)

    def _overloaded(self, ctx: ChatContext, policy: Policy, body: dict[str, Any]) -> PreparedChat:
        if policy.memory.fail_mode == FailMode.CLOSED:
            raise MemoryUnavailable("Memory is overloaded and this tenant's policy fails closed; retry.")
        log.info("memory overloaded (request %s): answering without", ctx.request_id)
        return PreparedChat(body=body, reason=MemoryReason.OVERLOADED)

    def _unavailable(
        self, ctx: ChatContext, policy: Policy, body: dict[str, Any], exc: Exception
    ) -> PreparedChat:
        if policy.memory.fail_mode == FailMode.CLOSED:
            log.warning(
                "memory unavailable (request %s): %s; failing closed", ctx.request_id, type(exc).__name__
            )
            raise MemoryUnavailable("Memory is unavailable and this tenant's policy fails closed.") from exc
        log.warning(
            "memory unavailable (request %s): %s; answering without", ctx.request_id, type(exc).__name__
        )
        return PreparedChat(body=body, reason=MemoryReason.VAULT_UNAVAILABLE)

    async def _audit_injection(
        self, ctx: ChatContext, policy: Policy, user: str, ids: list[str], mode: MemoryMode
    ) -> None:
        if self._audit is None or not ids:
            return
        await self._audit.append(
            AuditRecord(
                ctx.principal.tenant,
                "memory.inject",
                key_id=ctx.principal.key_id,
                request_id=ctx.request_id,
                user=user,
                memory_ids=tuple(ids),
                detail={"mode": mode.value},
                level=policy.audit_level,
            )
        )

    # -- after the answer -----------------------------------------------------------------------------

    def _refuse_unrecordable(self, ctx: ChatContext, policy: Policy) -> None:
        """A fail-closed tenant's chat that would be written back is refused before the upstream call
        while storage is known to fail (exchanges wait for it, or the last write failed): its answer
        could not be recorded, and the upstream's work would be wasted."""
        if (
            self._write_retry is not None
            and policy.memory.fail_mode == FailMode.CLOSED
            and ctx.user is not None
            and ctx.switch in (MemorySwitch.ON, MemorySwitch.WRITE)
            and policy.memory.write
            and self._write_retry.storage_failing
        ):
            log.warning(
                "memory storage failing (request %s); failing closed before the upstream", ctx.request_id
            )
            raise MemoryUnavailable(
                "Memory storage is failing (full or unreachable) and this tenant's policy fails closed; "
                "retry later."
            )

    async def complete(self, ctx: ChatContext, prepared: PreparedChat, exchange: FinishedExchange) -> None:
        policy = self._policies.get(ctx.principal.tenant)
        if (
            ctx.user is None
            or ctx.switch not in (MemorySwitch.ON, MemorySwitch.WRITE)
            or not policy.memory.write
        ):
            return
        turns = new_turns(exchange.request_messages)
        if not any(message["role"] == "user" for _, message in turns):
            return
        payload = self.payload(ctx, policy, turns, exchange.assistant_text, prepared.body)
        fails_open = policy.memory.fail_mode != FailMode.CLOSED
        retry = self._write_retry
        if fails_open and retry is not None and retry.holding:
            # Earlier exchanges wait for storage: this one queues behind them (commit order per user).
            retry.hold(ctx.principal.tenant, ctx.user, ctx.request_id, payload)
            return
        try:
            await asyncio.to_thread(
                self._outbox.enqueue, ctx.principal.tenant, ctx.user, ctx.request_id, payload
            )
        except Exception as exc:
            if not fails_open:
                raise MemoryUnavailable("The exchange could not be recorded for memory.") from exc
            if retry is None:
                log.warning(
                    "write-back lost (request %s): %s; policy fails open and no retry queue is wired",
                    ctx.request_id,
                    type(exc).__name__,
                )
                return
            retry.hold(ctx.principal.tenant, ctx.user, ctx.request_id, payload, exc)
            return
        if self._on_enqueued is not None:
            self._on_enqueued()

    def payload(
        self,
        ctx: ChatContext,
        policy: Policy,
        turns: list[tuple[int, dict[str, Any]]],
        assistant_text: str,
        body: dict[str, Any],
    ) -> dict[str, Any]:
        """The outbox row's content, redacted per policy: nothing unredacted is ever stored."""
        redactor = Redactor.from_policy(policy.memory.redaction)
        return {
            "v": 1,
            "session": ctx.session,
            "model": ctx.model,
            "observed_at": self._now().isoformat(),
            "turns": [
                [index, {"role": message["role"], "content": redactor.redact(message["content"])}]
                for index, message in turns
            ],
            "assistant_text": redactor.redact(assistant_text[:CONTEXT_CHARS]),
            "metadata": {
                k: redactor.redact(v) if isinstance(v, str) else v for k, v in caller_metadata(body).items()
            },
        }
