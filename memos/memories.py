"""MemoryService: the async facade over the vault that the memory REST API (and the CLI) use.

Every method takes the caller's Principal and its tenant's Policy, authorises the operation
(memos.governance.acl), works only inside `principal.tenant` (another tenant's id is simply not
found), redacts text before it is stored, audits what it did (ids, never text; the policy's
audit level decides what is recorded) and runs blocking work off the event loop.

Errors: MemoryNotFound (404), AccessDenied (403), InvalidInput (400, names the field).
A memory of another user of the same tenant that the key may not read is "not found" too, so a
user-bound key cannot probe which ids exist.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from memos.embeddings import AsyncEmbedder
from memos.errors import InvalidInput
from memos.governance.acl import AccessDenied, Operation, authorize, is_allowed
from memos.governance.policy import Policy
from memos.governance.principal import Principal
from memos.governance.redaction import Redactor
from memos.item import MemoryItem, Source, State
from memos.logsafe import exception_summary
from memos.ports import AuditSink, UserDataEraser
from memos.recall import injection
from memos.recall.injection import Injection
from memos.recall.retrieval import Hit, RetrievalParams, Retriever, with_context
from memos.storage.batch import NewMemory
from memos.storage.vault import MemoryNotFound, MemVault, VersionNotFound
from memos.writeback.operator import MemOperator
from memos.writeback.reader import Exchange, MemReader, attributed, message_text, speaker_of

log = logging.getLogger(__name__)

MAX_TEXT_CHARS = 20_000
MAX_ENTRIES = 500


@dataclass
class Entry:
    """One entry of POST /v1/memories: text or messages, caller metadata, when it was observed."""

    text: str | None = None
    messages: list[dict[str, Any]] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    observed_at: datetime | None = None


@dataclass
class Patch:
    """PATCH /v1/memories/{id}: the fields to change (None: unchanged)."""

    text: str | None = None
    metadata: dict[str, Any] | None = None
    importance: float | None = None
    state: State | None = None
    expires_at: datetime | None = None
    invalid_at: datetime | None = None
    valid_from: datetime | None = None
    observed_at: datetime | None = None
    clear: tuple[str, ...] = ()
    rollback_to: int | None = None


def _default_redactor(policy: Policy) -> Callable[[str], str]:

    return Redactor.from_policy(policy.memory.redaction).redact


def _redact_value(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_value(v, redact) for v in value]
    if isinstance(value, dict):
        return {k: _redact_value(v, redact) for k, v in value.items()}
    return value


def messages_text(messages: Sequence[dict[str, Any]], owner: str | None = None) -> str:
    """The text of an entry given as messages (infer: false): user turns verbatim, others labelled; a
    turn whose `name` says who spoke is labelled with it ("Caroline: ...", memos.writeback.reader's
    speaker rule: the user's own turns, unnamed, stay in their words)."""

    lines: list[str] = []
    only_user = all(m.get("role") == "user" for m in messages)
    for m in messages:
        if m.get("role") == "system":
            continue
        text = message_text(m).strip()
        if not text:
            continue
        speaker = speaker_of(m, owner) if m.get("role") == "user" else None
        if speaker:
            lines.append(attributed(text, speaker))
        else:
            lines.append(text if only_user else f"{m.get('role', 'user')}: {text}")
    return "\n".join(lines)


class MemoryService:
    def __init__(
        self,
        vault: MemVault,
        retriever: Retriever,
        embedder: AsyncEmbedder,
        audit: AuditSink | None = None,
        *,
        redactor_for: Callable[[Policy], Callable[[str], str]] | None = None,
        reader: Any = None,
        operator: Any = None,
        erasers: Sequence[UserDataEraser] = (),
        neighbours: int = 0,
    ) -> None:
        self.vault = vault
        self.retriever = retriever
        self.embedder = embedder
        self.audit = audit
        self._redactor_for = redactor_for or _default_redactor
        self._reader = reader
        self._operator = operator
        # Every holder of a user's data, in the order erasure visits them (memos.builder sets it).
        self.erasers: tuple[UserDataEraser, ...] = tuple(erasers) or (vault,)
        self.neighbours = neighbours

    # ------------------------------------------------------------------ helpers

    async def _audit_read(
        self,
        principal: Principal,
        policy: Policy,
        op: str,
        user: str | None,
        ids: Sequence[str],
        request_id: str | None,
    ) -> None:
        await self._audit(
            principal, policy, "memory.read", user=user, ids=ids, request_id=request_id, detail={"op": op}
        )

    async def _audit(
        self,
        principal: Principal,
        policy: Policy,
        action: str,
        *,
        user: str | None,
        ids: Sequence[str] = (),
        request_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        if self.audit is None:
            return
        await asyncio.to_thread(
            self.audit.record,
            principal.tenant,
            action,
            key_id=principal.key_id,
            request_id=request_id,
            user=user,
            memory_ids=list(ids),
            detail=detail,
            level=policy.audit_level,
        )

    @staticmethod
    def _user(principal: Principal, user: str | None) -> str:
        user = user or principal.bound_user
        if not user:
            raise InvalidInput("`user` is required: name the user whose memories these are.", "user")
        if len(user) > 256:
            raise InvalidInput("`user` is too long (256 characters at most).", "user")
        return user

    async def _item_for(
        self, principal: Principal, policy: Policy, memory_id: str, op: Operation
    ) -> MemoryItem:
        """The item, if it is in the caller's tenant and the caller may see its owner's memories."""
        item = await asyncio.to_thread(self.vault.get, principal.tenant, memory_id)
        if item is None or not is_allowed(principal, policy, Operation.MEMORY_READ, item.owner):
            raise MemoryNotFound(memory_id)
        authorize(principal, policy, op, item.owner)
        return item

    # ------------------------------------------------------------------ API

    async def add(
        self,
        principal: Principal,
        policy: Policy,
        user: str | None,
        entries: Sequence[Entry],
        infer: bool = False,
        request_id: str | None = None,
        session: str | None = None,
    ) -> list[MemoryItem]:
        owner = self._user(principal, user)
        authorize(principal, policy, Operation.MEMORY_WRITE, owner)
        if not entries:
            raise InvalidInput("`memories` must hold at least one entry.", "memories")
        if len(entries) > MAX_ENTRIES:
            raise InvalidInput(f"`memories` holds at most {MAX_ENTRIES} entries per call.", "memories")
        redact = self._redactor_for(policy)
        if infer:
            # Audited inside, including whatever was written before a failure.
            return await self._add_inferred(principal, policy, owner, entries, redact, request_id, session)
        news: list[NewMemory] = []
        for i, entry in enumerate(entries):
            text = entry.text if entry.text is not None else messages_text(entry.messages or [], owner)
            text = redact(text.strip())
            if not text:
                raise InvalidInput(f"`memories[{i}]` has no text.", f"memories[{i}]")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidInput(
                    f"`memories[{i}]` is longer than {MAX_TEXT_CHARS} characters.", f"memories[{i}].text"
                )
            source = Source(
                request_id=request_id,
                message_index=i,
                session=session,
                metadata=_redact_value(dict(entry.metadata or {}), redact),
            )
            news.append(
                NewMemory(text=text, sources=[source], observed_at=entry.observed_at, session=session)
            )
        vectors = await self.embedder.embed([n.text for n in news])
        for n, v in zip(news, vectors, strict=True):
            n.vector = v

        def audit_in(session: Any, added: list[MemoryItem]) -> None:
            # In the vault's transaction: the memories and their audit entry commit together or not at
            # all, so an answer of 5xx leaves nothing behind.
            if self.audit is None:
                return
            unique = list(dict.fromkeys(i.id for i in added))
            self.audit.record(
                principal.tenant,
                "memory.write",
                key_id=principal.key_id,
                request_id=request_id,
                user=owner,
                memory_ids=unique,
                detail={"count": len(unique), "infer": False},
                level=policy.audit_level,
                session=session,
            )

        items = await asyncio.to_thread(
            lambda: self.vault.add_many(principal.tenant, owner, news, before_commit=audit_in)
        )
        return list({i.id: i for i in items}.values())

    async def _add_inferred(
        self,
        principal: Principal,
        policy: Policy,
        owner: str,
        entries: Sequence[Entry],
        redact: Callable[[str], str],
        request_id: str | None,
        session: str | None,
    ) -> list[MemoryItem]:

        # Every entry is checked before anything is written: a bad entry must change nothing.
        exchanges: list[Exchange] = []
        now = datetime.now(UTC)
        for i, entry in enumerate(entries):
            if entry.messages is not None:
                turns = [
                    (j, {**m, "content": redact(_content_text(m))})
                    for j, m in enumerate(entry.messages)
                    if m.get("role") != "system"
                ]
            else:
                turns = [(0, {"role": "user", "content": redact(entry.text or "")})]
            if not any(_content_text(m).strip() for _, m in turns):
                raise InvalidInput(f"`memories[{i}]` has no text.", f"memories[{i}]")
            if sum(len(_content_text(m)) for _, m in turns) > MAX_TEXT_CHARS:
                raise InvalidInput(
                    f"`memories[{i}]` is longer than {MAX_TEXT_CHARS} characters.", f"memories[{i}]"
                )
            exchanges.append(
                Exchange(
                    tenant=principal.tenant,
                    owner=owner,
                    request_id=request_id or "",
                    session=session,
                    observed_at=entry.observed_at or now,
                    turns=turns,
                    metadata=_redact_value(dict(entry.metadata or {}), redact),
                )
            )
        reader, operator = self._reader_operator()
        ids: list[str] = []
        complete = False
        try:
            for exchange in exchanges:
                facts = await reader.read(exchange, policy.memory.extractor)
                result = await operator.apply(
                    principal.tenant,
                    owner,
                    facts,
                    extractor=policy.memory.extractor,
                    retention_days=policy.memory.retention_days,
                )
                ids.extend([*result.added, *result.merged])
            complete = True
        finally:
            # What was written is audited even when a later entry failed (reader or vault error).
            written = list(dict.fromkeys(ids))
            if written or complete:
                await asyncio.shield(
                    self._audit(
                        principal,
                        policy,
                        "memory.write",
                        user=owner,
                        ids=written,
                        request_id=request_id,
                        detail={"count": len(written), "infer": True, "complete": complete},
                    )
                )
        found = await asyncio.to_thread(self.vault.get_many, principal.tenant, written, owner=owner)
        return [found[i].item for i in written if i in found]

    def _reader_operator(self) -> tuple[Any, Any]:
        if self._reader is None:
            self._reader = MemReader()
        if self._operator is None:
            self._operator = MemOperator(self.vault)
        return self._reader, self._operator

    async def list(
        self,
        principal: Principal,
        policy: Policy,
        user: str | None,
        limit: int = 50,
        cursor: str | None = None,
        request_id: str | None = None,
    ) -> tuple[list[MemoryItem], str | None]:
        owner = self._user(principal, user)
        authorize(principal, policy, Operation.MEMORY_READ, owner)
        try:
            items, next_cursor = await asyncio.to_thread(
                self.vault.list, principal.tenant, owner, limit, cursor
            )
        except ValueError:
            raise InvalidInput("`cursor` is not a cursor this endpoint returned.", "cursor") from None
        await self._audit_read(principal, policy, "list", owner, [i.id for i in items], request_id)
        return items, next_cursor

    async def search(
        self,
        principal: Principal,
        policy: Policy,
        user: str | None,
        query: str,
        top_k: int | None = None,
        request_id: str | None = None,
        *,
        params: RetrievalParams | None = None,
    ) -> builtins.list[Hit]:
        owner = self._user(principal, user)
        authorize(principal, policy, Operation.MEMORY_READ, owner)
        if not query or not query.strip():
            raise InvalidInput("`query` must be a non-empty string.", "query")
        if params is None:
            params = RetrievalParams.from_policy(policy, top_k=top_k, neighbours=self.neighbours)
            # the API's caller asked for top_k results: the injection budget does not apply here
            params = RetrievalParams(
                top_k=params.top_k,
                char_budget=None,
                min_score=params.min_score,
                candidates=max(params.candidates, params.top_k * 2),
                neighbours=params.neighbours,
                rank=params.rank,
            )
        hits = await self.retriever.asearch(principal.tenant, owner, query, self.embedder.embed_one, params)
        await self._audit_read(principal, policy, "search", owner, [h.item.id for h in hits], request_id)
        return hits

    async def injection(
        self,
        principal: Principal,
        policy: Policy,
        user: str | None,
        query: str,
        request_id: str | None = None,
    ) -> Injection:
        """The block a chat whose latest user turn is `query` would have injected for `user` now: the
        chat's own recall (the policy's top_k, min_score and token budget, neighbouring turns) and choice
        (memos.recall.injection.choose). Audited as a read (op `injection`); nothing is injected, so no
        hit is counted."""
        owner = self._user(principal, user)
        authorize(principal, policy, Operation.MEMORY_READ, owner)
        if not query or not query.strip():
            raise InvalidInput("`query` must be a non-empty string.", "query")
        params = RetrievalParams.from_policy(policy, neighbours=self.neighbours)
        hits = await self.retriever.asearch(principal.tenant, owner, query, self.embedder.embed_one, params)
        chosen = Injection(tuple(injection.choose(with_context(hits), policy.memory.token_budget)))
        await self._audit_read(principal, policy, "injection", owner, chosen.memory_ids, request_id)
        return chosen

    async def users(
        self, principal: Principal, policy: Policy, request_id: str | None = None
    ) -> builtins.list[str]:
        """The tenant's users (memory owners) this key may read, sorted; audited as a read."""
        owners = await asyncio.to_thread(self.vault.owners, principal.tenant)
        visible = sorted(o for o in owners if is_allowed(principal, policy, Operation.MEMORY_READ, o))
        await self._audit(
            principal, policy, "memory.read", user=None, request_id=request_id, detail={"op": "users"}
        )
        return visible

    async def get(
        self, principal: Principal, policy: Policy, memory_id: str, request_id: str | None = None
    ) -> MemoryItem:
        item = await self._item_for(principal, policy, memory_id, Operation.MEMORY_READ)
        await self._audit_read(principal, policy, "get", item.owner, [item.id], request_id)
        return item

    async def history(
        self, principal: Principal, policy: Policy, memory_id: str, request_id: str | None = None
    ) -> builtins.list[MemoryItem]:
        item = await self._item_for(principal, policy, memory_id, Operation.MEMORY_READ)
        versions = await asyncio.to_thread(self.vault.history, principal.tenant, memory_id)
        await self._audit_read(principal, policy, "history", item.owner, [item.id], request_id)
        return versions

    async def patch(
        self,
        principal: Principal,
        policy: Policy,
        memory_id: str,
        patch: Patch,
        request_id: str | None = None,
    ) -> MemoryItem:
        item = await self._item_for(principal, policy, memory_id, Operation.MEMORY_WRITE)
        if patch.rollback_to is not None:
            return await self.rollback(principal, policy, memory_id, patch.rollback_to, request_id)
        _check_validity(item, patch)
        redact = self._redactor_for(policy)
        text = None
        vector = None
        if patch.text is not None:
            text = redact(patch.text.strip())
            if not text:
                raise InvalidInput("`text` must be a non-empty string.", "text")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidInput(f"`text` is longer than {MAX_TEXT_CHARS} characters.", "text")
            vector = await self.embedder.embed_one(text)
        elif patch.state == State.ACTIVE and item.state != State.ACTIVE:
            vector = await self.embedder.embed_one(item.text)
        metadata = _redact_value(patch.metadata, redact) if patch.metadata is not None else None
        updated = await asyncio.to_thread(
            lambda: self.vault.update(
                principal.tenant,
                memory_id,
                text=text,
                state=patch.state,
                importance=patch.importance,
                expires_at=patch.expires_at,
                invalid_at=patch.invalid_at,
                valid_from=patch.valid_from,
                observed_at=patch.observed_at,
                metadata=metadata,
                clear=patch.clear,
                reason="api.patch",
                vector=vector,
            )
        )
        await self._audit(
            principal,
            policy,
            "memory.update",
            user=item.owner,
            ids=[item.id],
            request_id=request_id,
            detail={"version": updated.version},
        )
        return updated

    async def rollback(
        self,
        principal: Principal,
        policy: Policy,
        memory_id: str,
        version: int,
        request_id: str | None = None,
    ) -> MemoryItem:
        item = await self._item_for(principal, policy, memory_id, Operation.MEMORY_WRITE)
        try:
            snap = await asyncio.to_thread(self.vault.version, principal.tenant, memory_id, int(version))
        except VersionNotFound:
            raise InvalidInput(f"memory {memory_id} has no version {version}.", "rollback_to") from None
        vector = await self.embedder.embed_one(snap.text) if snap.state == State.ACTIVE else None
        updated = await asyncio.to_thread(
            lambda: self.vault.rollback(principal.tenant, memory_id, int(version), vector=vector)
        )
        await self._audit(
            principal,
            policy,
            "memory.update",
            user=item.owner,
            ids=[item.id],
            request_id=request_id,
            detail={"version": updated.version, "rollback_to": int(version)},
        )
        return updated

    async def delete(
        self, principal: Principal, policy: Policy, memory_id: str, request_id: str | None = None
    ) -> MemoryItem:
        item = await self._item_for(principal, policy, memory_id, Operation.MEMORY_DELETE)
        gone = await asyncio.to_thread(self.vault.delete, principal.tenant, memory_id)
        await self._audit(
            principal, policy, "memory.delete", user=item.owner, ids=[item.id], request_id=request_id
        )
        return gone

    async def erase_user(
        self, principal: Principal, policy: Policy, user: str | None, request_id: str | None = None
    ) -> dict[str, int]:
        """Every registered store forgets the user; returns what each removed (by store name)."""
        owner = self._user(principal, user)
        authorize(principal, policy, Operation.MEMORY_ERASE, owner)
        counts: dict[str, int] = {}
        failures: list[str] = []
        for eraser in list(self.erasers):
            name = type(eraser).__name__
            try:
                if _is_async(eraser):
                    result = await eraser.erase_user(principal.tenant, owner)
                else:
                    result = await asyncio.to_thread(eraser.erase_user, principal.tenant, owner)
                    if inspect.isawaitable(result):
                        result = await result
                counts[name] = counts.get(name, 0) + (int(result) if isinstance(result, int) else 0)
            except Exception as exc:  # keep erasing elsewhere, then report the failure
                log.error("erasing a user from %s failed: %s", name, exception_summary(exc))
                failures.append(name)
        await self._audit(
            principal,
            policy,
            "memory.erase",
            user=owner,
            request_id=request_id,
            detail={**{k[:40]: v for k, v in counts.items()}, "failed": len(failures)},
        )
        if failures:
            raise RuntimeError(f"erasure incomplete in: {', '.join(failures)}")
        return counts


def _check_validity(item: MemoryItem, patch: Patch) -> None:
    """A memory is valid from `valid_from` until `invalid_at`: the patched range (a side not patched
    keeps its stored value, a cleared one is open) must not end before it starts."""

    def after(name: str, stored: datetime | None) -> datetime | None:
        given: datetime | None = getattr(patch, name)
        if given is not None:
            return given
        return None if name in patch.clear else stored

    valid_from = after("valid_from", item.valid_from)
    invalid_at = after("invalid_at", item.invalid_at)
    if valid_from is None or invalid_at is None:
        return
    if valid_from.tzinfo is None:
        valid_from = valid_from.replace(tzinfo=UTC)
    if invalid_at.tzinfo is None:
        invalid_at = invalid_at.replace(tzinfo=UTC)
    if valid_from > invalid_at:
        param = "valid_from" if patch.valid_from is not None else "invalid_at"
        raise InvalidInput("`valid_from` must not be after `invalid_at`.", param)


def _is_async(eraser: Any) -> bool:
    return inspect.iscoroutinefunction(getattr(eraser, "erase_user", None))


def _content_text(message: dict[str, Any]) -> str:

    return message_text(message)


__all__ = [
    "AccessDenied",
    "Entry",
    "InvalidInput",
    "MemoryNotFound",
    "MemoryService",
    "Patch",
    "UserDataEraser",
]
