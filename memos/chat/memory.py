"""VaultChatMemory: what memory does around one chat call (memos.chat.contract.ChatMemory).

plan(): decide, once (memos.chat.planner), what memory may do and which mode serves; for plaintext,
retrieve the user's memories with their latest turns as the query, keep what fits the policy's token
budget, and place one fenced system block right after the client's own system/developer messages
(memos.recall.injection), or hand the block to the local runtime (which puts it first: its KV cache is
a prefix); audit the injection (memory ids only). complete(): redact the exchange and commit it to
the outbox before returning, so the reply's last byte is only sent once the exchange is durable; the
worker does the rest.

When the vault cannot be reached, `memory.fail_mode` decides: open answers without memory, closed
raises MemoryUnavailable, which the proxy answers with 503.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Protocol

from memos.chat import shapes
from memos.chat.contract import (
    ChatContext,
    FinishedExchange,
    MemoryPlan,
    MemoryReason,
    MemorySwitch,
    MemoryUnavailable,
)
from memos.chat.planner import (
    LocalMemorySource,
    choose_mode,
    memory_switch,
    plan_local,
    remote_reason,
    switch_reason,
)
from memos.chat.skip_audit import SkippedMemoryAudit
from memos.governance.audit import AuditRecord
from memos.governance.policy import FailMode, Policy
from memos.governance.redaction import Redactor
from memos.item import MemoryItem
from memos.local.runtime import LocalMemory
from memos.modes import MemoryMode
from memos.observe import MemoryObserver, NoObserver
from memos.recall import injection
from memos.recall.retrieval import RetrievalParams, with_context
from memos.writeback.outbox import Outbox
from memos.writeback.reader import MAX_SPEAKER_CHARS, bound_turns, message_text
from memos.writeback.write_retry import WriteRetryQueue

log = logging.getLogger(__name__)

# How much of the conversation's tail is used as the retrieval query.
QUERY_CHARS = 1000
# The assistant turn before the user's new turns is kept (cut) as context for the LLM extractor.
CONTEXT_CHARS = 2000


class _Overloaded(Exception):
    """Memory could not keep up with this request (admission control in VaultChatMemory)."""


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

        params = RetrievalParams.from_policy(policy, neighbours=self.neighbours)
        return with_context(await self._retriever.asearch(tenant, owner, query, self._embed_one, params))


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
                turn = {"role": "user", "content": text}
                name = messages[i].get("name")
                if isinstance(name, str) and name.strip():
                    turn["name"] = name[:MAX_SPEAKER_CHARS]  # who spoke (memos.writeback.reader.speaker_of)
                turns.append((i, turn))
    return bound_turns(turns)


def caller_metadata(body: dict[str, Any]) -> dict[str, Any]:
    """The request's `metadata` (OpenAI's string map), kept as provenance of what it teaches."""
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        return {}
    return {str(k)[:64]: v for k, v in list(metadata.items())[:16] if isinstance(v, str | int | float | bool)}


class VaultChatMemory:
    def __init__(
        self,
        *,
        recall: Recall,
        outbox: Outbox,
        audit: InjectionAudit | None = None,
        local: LocalMemorySource | None = None,
        on_enqueued: Callable[[], None] | None = None,
        write_retry: WriteRetryQueue | None = None,
        recall_timeout_s: float = 2.0,
        max_inflight: int = 256,
        observer: MemoryObserver | None = None,
        skips: SkippedMemoryAudit | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._recall = recall
        self._outbox = outbox
        self._audit = audit
        self._local = local  # None: no local runtime (every model is remote)
        self._on_enqueued = on_enqueued
        # Fail-open exchanges whose outbox commit failed wait there (memos.writeback.write_retry).
        self._write_retry = write_retry
        self._recall_timeout_s = recall_timeout_s
        self._max_inflight = max_inflight
        self._inflight = 0  # retrievals running now (admission control; touched on the loop only)
        self._observer: MemoryObserver = observer or NoObserver()
        self._skips = skips  # each reason memory did not run as asked, audited per tenant per window
        self._now = now

    @property
    def retrievals_running(self) -> int:
        """Retrievals in flight now (admission control counts them against `max_inflight`)."""
        return self._inflight

    # -- before the upstream call ---------------------------------------------------------------------

    async def plan(self, ctx: ChatContext, body: dict[str, Any]) -> MemoryPlan:
        plan = await self._decide(ctx, body)
        if plan.reason is not None and self._skips is not None:
            self._skips.count(ctx.principal.tenant, plan.reason, ctx.request_id, ctx.policy.audit_level)
        return plan

    async def _decide(self, ctx: ChatContext, body: dict[str, Any]) -> MemoryPlan:
        switch = memory_switch(ctx.requested_switch, ctx.principal, ctx.policy, ctx.user)
        reason = switch_reason(ctx.requested_switch, switch, ctx.user)
        self._refuse_unrecordable(ctx, switch)
        off = MemoryPlan(body=body, switch=switch, reason=reason)
        if ctx.user is None or switch not in (MemorySwitch.ON, MemorySwitch.READ):
            return off
        try:
            plan = await self._plan(ctx, body, switch, ctx.user)
        except MemoryUnavailable:
            raise
        except _Overloaded:
            return self._overloaded(ctx, off)
        except Exception as exc:
            return self._unavailable(ctx, off, exc)
        return plan if plan.reason is not None or reason is None else replace(plan, reason=reason)

    async def _plan(
        self, ctx: ChatContext, body: dict[str, Any], switch: MemorySwitch, user: str
    ) -> MemoryPlan:
        local = self._local if ctx.local_model else None
        if local is not None:
            mode, local_memory, mode_reason = await plan_local(
                local, ctx.principal.tenant, user, ctx.model, ctx.requested_mode, ctx.policy
            )
            if local_memory is not None:
                ids = list(local_memory.memory_ids)
                await self._audit_injection(ctx, user, ids, mode)
                return MemoryPlan(
                    body=body,
                    switch=switch,
                    mode=mode,
                    injected_ids=tuple(ids),
                    local=local_memory,
                    reason=mode_reason,
                )
        else:
            mode = choose_mode(ctx.requested_mode, ctx.policy.memory.allowed_modes, local=False)
            mode_reason = remote_reason(ctx.requested_mode, mode, ctx.policy.memory.allowed_modes)
        if mode is not MemoryMode.PLAINTEXT:
            # Off although asked for (not `X-Memos-Memory-Mode: off`): no mode the policy allows serves.
            refused = mode is MemoryMode.OFF and ctx.requested_mode is not MemoryMode.OFF
            return MemoryPlan(body=body, switch=switch, reason=MemoryReason.POLICY if refused else None)
        plan = await self._plaintext(ctx, body, switch, user)
        return plan if mode_reason is None else replace(plan, reason=mode_reason)

    async def _plaintext(
        self, ctx: ChatContext, body: dict[str, Any], switch: MemorySwitch, user: str
    ) -> MemoryPlan:
        query = query_of(shapes.conversation_of(ctx.shape, body))
        if not query:
            return MemoryPlan(body=body, switch=switch, mode=MemoryMode.PLAINTEXT)
        items = await self._admitted_recall(ctx, user, query)
        chosen = injection.choose(items, ctx.policy.memory.token_budget)
        ids = [m.id for m in chosen]
        if ids:
            await self._audit_injection(ctx, user, ids, MemoryMode.PLAINTEXT)
            if self._local is not None:
                self._local.count_hits(ctx.principal.tenant, ids)
        block_tokens = injection.block_tokens(chosen)
        if ctx.local_model and ids:
            # The local runtime tokenises the block apart from the conversation, so that its ids are
            # exactly those an activation request has (memos.local.runtime.build_prompt).

            block = LocalMemory(MemoryMode.PLAINTEXT, block=injection.render(chosen), memory_ids=tuple(ids))
            return MemoryPlan(
                body=body,
                switch=switch,
                mode=MemoryMode.PLAINTEXT,
                injected_ids=tuple(ids),
                local=block,
                block_tokens=block_tokens,
            )
        return MemoryPlan(
            body=shapes.inject(
                ctx.shape,
                body,
                chosen,
                single_system_message=ctx.policy.memory.placement.single_system_message,
            ),
            switch=switch,
            mode=MemoryMode.PLAINTEXT,
            injected_ids=tuple(ids),
            block_tokens=block_tokens,
        )

    async def _admitted_recall(self, ctx: ChatContext, user: str, query: str) -> Sequence[MemoryItem]:
        """The recall, unless memory cannot keep up: more than `max_inflight` retrievals running, or
        this one not done within `recall_timeout_s`. Overload is answered at once, never queued."""
        if self._inflight >= self._max_inflight:
            raise _Overloaded
        self._inflight += 1
        started = time.perf_counter()
        try:
            return await asyncio.wait_for(
                self._recall.recall(ctx.principal.tenant, user, query, ctx.policy, session=ctx.session),
                self._recall_timeout_s,
            )
        except TimeoutError:
            raise _Overloaded from None
        finally:
            self._inflight -= 1
            self._observer.recalled(ctx.principal.tenant, time.perf_counter() - started)

    def _overloaded(self, ctx: ChatContext, off: MemoryPlan) -> MemoryPlan:
        if ctx.policy.memory.fail_mode == FailMode.CLOSED:
            raise MemoryUnavailable("Memory is overloaded and this tenant's policy fails closed; retry.")
        log.info("memory overloaded (request %s): answering without", ctx.request_id)
        return replace(off, reason=MemoryReason.OVERLOADED)

    def _unavailable(self, ctx: ChatContext, off: MemoryPlan, exc: Exception) -> MemoryPlan:
        if ctx.policy.memory.fail_mode == FailMode.CLOSED:
            log.warning(
                "memory unavailable (request %s): %s; failing closed", ctx.request_id, type(exc).__name__
            )
            raise MemoryUnavailable("Memory is unavailable and this tenant's policy fails closed.") from exc
        log.warning(
            "memory unavailable (request %s): %s; answering without", ctx.request_id, type(exc).__name__
        )
        return replace(off, reason=MemoryReason.VAULT_UNAVAILABLE)

    async def _audit_injection(self, ctx: ChatContext, user: str, ids: list[str], mode: MemoryMode) -> None:
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
                level=ctx.policy.audit_level,
            )
        )

    # -- after the answer -----------------------------------------------------------------------------

    def _refuse_unrecordable(self, ctx: ChatContext, switch: MemorySwitch) -> None:
        """A fail-closed tenant's chat that would be written back is refused before the upstream call
        while storage is known to fail (exchanges wait for it, or the last write failed): its answer
        could not be recorded, and the upstream's work would be wasted."""
        if (
            self._write_retry is not None
            and ctx.policy.memory.fail_mode == FailMode.CLOSED
            and switch in (MemorySwitch.ON, MemorySwitch.WRITE)
            and self._write_retry.storage_failing
        ):
            log.warning(
                "memory storage failing (request %s); failing closed before the upstream", ctx.request_id
            )
            raise MemoryUnavailable(
                "Memory storage is failing (full or unreachable) and this tenant's policy fails closed; "
                "retry later."
            )

    async def complete(self, ctx: ChatContext, plan: MemoryPlan, exchange: FinishedExchange) -> None:
        if ctx.user is None or not plan.writes:
            return
        policy = ctx.policy
        turns = new_turns(exchange.request_messages)
        if not any(message["role"] == "user" for _, message in turns):
            return
        payload = self.payload(ctx, policy, turns, exchange.assistant_text, plan.body)
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
                [
                    index,
                    {
                        "role": message["role"],
                        "content": redactor.redact(message["content"]),
                        **({"name": redactor.redact(message["name"])} if message.get("name") else {}),
                    },
                ]
                for index, message in turns
            ],
            "assistant_text": redactor.redact(assistant_text[:CONTEXT_CHARS]),
            "metadata": {
                k: redactor.redact(v) if isinstance(v, str) else v for k, v in caller_metadata(body).items()
            },
        }
