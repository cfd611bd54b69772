"""Export a tenant's (or one user's) memories with their whole history, and import them elsewhere.

Records (see memos.portability.export_file for the file that carries them):

    {"type": "export", "tenant", "user", "exported_at", "memories": n}     first
    {"type": "memory", "id", "owner", "state", "text", "sources", ..., "versions": [...]}   n times

Every memory that still has text is exported (active, superseded, archived; a deleted memory's text
was destroyed on purpose and stays gone), with every version's snapshot and the reason it was made.
Vectors are not exported: the importing side embeds again with its own model.

Import validates the whole document before it writes anything, then replays each memory through the
vault's own write path: version 1 is `add` (encrypted under the target tenant's data key, embedded,
indexed), every later version an `update` with that version's snapshot and reason, so vectors,
blind-index postings, statistics and history stay consistent and version numbers match. Ids are new
(an id names one memory in one tenant). Importing the same document twice adds nothing the second
time: a memory is recognised by a fingerprint of its first version (owner, text, sources, observed
time), which the vault never rewrites, counted so that equal memories are each imported once.
Timestamps of the import itself (created_at, updated_at) and usage counters (hits) start afresh.

Audited with ids only: `memory.export` (the exported ids) and `memory.write` (the imported ids per
user, with `detail.via = "import"`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from memos.embeddings import normalise
from memos.errors import InvalidInput
from memos.item import Kind, MemoryItem, Scope, Source, State, iso, snapshot, source_dict
from memos.ports import AuditSink
from memos.storage.vault import MemVault

EXPORTED_STATES: tuple[State, ...] = (State.ACTIVE, State.SUPERSEDED, State.ARCHIVED)
MAX_TEXT_CHARS = 100_000
MAX_ID_CHARS = 40
MAX_OWNER_CHARS = 256
_AUDIT_IDS_PER_ENTRY = 500
_EMBED_BATCH = 64
_PAGE = 500
_NULLABLE = ("valid_from", "invalid_at", "expires_at")


class InvalidExport(InvalidInput):
    """The document is not a valid export; the message names the record and field (never text)."""


# ---------------------------------------------------------------- export


def memory_record(vault: MemVault, tenant: str, item: MemoryItem) -> dict[str, Any]:
    """One memory as an export record: its current fields and every version's snapshot."""
    reasons = vault.version_reasons(tenant, item.id)
    versions = [
        {"version": v.version, "reason": reasons.get(v.version, ""), **snapshot(v)}
        for v in vault.history(tenant, item.id)
    ]
    return {
        "type": "memory",
        "id": item.id,
        "owner": item.owner,
        "version": item.version,
        "hits": item.hits,
        "last_hit_at": iso(item.last_hit_at),
        **snapshot(item),
        "versions": versions,
    }


def iter_memories(vault: MemVault, tenant: str, user: str | None = None) -> Iterator[MemoryItem]:
    """Every exportable memory of the tenant (or of one user), oldest first per user."""
    owners = [user] if user is not None else vault.owners(tenant)
    for owner in owners:
        items: list[MemoryItem] = []
        cursor: str | None = None
        while True:
            page, cursor = vault.list(tenant, owner, _PAGE, cursor, states=EXPORTED_STATES)
            items.extend(page)
            if cursor is None:
                break
        yield from reversed(items)  # list() is newest first


@dataclass
class ExportResult:
    ids: list[str] = field(default_factory=list)
    versions: int = 0


def export_records(
    vault: MemVault, tenant: str, user: str | None, result: ExportResult
) -> list[dict[str, Any]]:
    """The export document's records (header first); fills `result` with what they hold."""
    memories = []
    for item in iter_memories(vault, tenant, user):
        record = memory_record(vault, tenant, item)
        memories.append(record)
        result.ids.append(item.id)
        result.versions += len(record["versions"])
    header = {
        "type": "export",
        "tenant": tenant,
        "user": user,
        "exported_at": datetime.now(UTC).isoformat(),
        "memories": len(memories),
    }
    return [header, *memories]


def audit_export(
    audit: AuditSink, tenant: str, user: str | None, result: ExportResult, *, encrypted: bool
) -> None:
    """`memory.export` naming every exported id (in parts of a few hundred ids)."""
    parts = [
        result.ids[i : i + _AUDIT_IDS_PER_ENTRY] for i in range(0, len(result.ids), _AUDIT_IDS_PER_ENTRY)
    ]
    for n, ids in enumerate(parts or [[]], start=1):
        audit.record(
            tenant,
            "memory.export",
            user=user,
            memory_ids=ids,
            detail={
                "memories": len(result.ids),
                "versions": result.versions,
                "encrypted": encrypted,
                "part": n,
                "parts": max(1, len(parts)),
            },
        )


# ---------------------------------------------------------------- validation


@dataclass(frozen=True)
class Snapshot:
    version: int
    reason: str
    text: str
    sources: list[Source]
    scope: Scope
    kind: Kind
    state: State
    importance: float
    observed_at: datetime | None
    valid_from: datetime | None
    invalid_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class ImportedMemory:
    origin_id: str
    owner: str
    versions: list[Snapshot]

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.owner, self.versions[0])


@dataclass(frozen=True)
class ExportDocument:
    tenant: str | None
    user: str | None
    memories: list[ImportedMemory]


def _fail(where: str, message: str) -> InvalidExport:
    return InvalidExport(f"{where}: {message}")


def _str(record: dict[str, Any], name: str, where: str, limit: int, *, required: bool = True) -> str | None:
    value = record.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise _fail(where, f"`{name}` must be a non-empty string of at most {limit} characters")
    return value


def _time(record: dict[str, Any], name: str, where: str) -> datetime | None:
    value = record.get(name)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None:
        raise _fail(where, f"`{name}` must be an ISO 8601 time or null")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _enum(record: dict[str, Any], name: str, where: str, kind: type, allowed: Sequence[Any]) -> Any:
    try:
        value = kind(record.get(name))
    except ValueError:
        value = None
    if value is None or value not in allowed:
        raise _fail(where, f"`{name}` must be one of {', '.join(str(a) for a in allowed)}")
    return value


def _sources(record: dict[str, Any], where: str) -> list[Source]:
    value = record.get("sources", [])
    if not isinstance(value, list):
        raise _fail(where, "`sources` must be a list")
    out = []
    for i, s in enumerate(value):
        if not isinstance(s, dict) or not isinstance(s.get("metadata", {}), dict):
            raise _fail(where, f"`sources[{i}]` must be an object with an object `metadata`")
        index = s.get("message_index")
        if index is not None and (not isinstance(index, int) or isinstance(index, bool)):
            raise _fail(where, f"`sources[{i}].message_index` must be an integer or null")
        for name in ("request_id", "session"):
            if s.get(name) is not None and not isinstance(s.get(name), str):
                raise _fail(where, f"`sources[{i}].{name}` must be a string or null")
        out.append(
            Source(
                request_id=s.get("request_id"),
                message_index=index,
                session=s.get("session"),
                metadata=dict(s.get("metadata") or {}),
            )
        )
    return out


def _snapshot_from(record: dict[str, Any], where: str) -> Snapshot:
    version = record.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(where, "`version` must be a positive integer")
    text = record.get("text")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT_CHARS:
        raise _fail(where, f"`text` must be non-empty and at most {MAX_TEXT_CHARS} characters")
    importance = record.get("importance", 0.5)
    if (
        not isinstance(importance, int | float)
        or isinstance(importance, bool)
        or not math.isfinite(importance)
    ):
        raise _fail(where, "`importance` must be a number")
    reason = record.get("reason") or "update"
    if not isinstance(reason, str):
        raise _fail(where, "`reason` must be a string")
    return Snapshot(
        version=version,
        reason=reason[:64],
        text=text,
        sources=_sources(record, where),
        scope=_enum(record, "scope", where, Scope, list(Scope)),
        kind=_enum(record, "kind", where, Kind, list(Kind)),
        state=_enum(record, "state", where, State, EXPORTED_STATES),
        importance=float(importance),
        observed_at=_time(record, "observed_at", where),
        valid_from=_time(record, "valid_from", where),
        invalid_at=_time(record, "invalid_at", where),
        expires_at=_time(record, "expires_at", where),
    )


def parse_document(records: Sequence[dict[str, Any]]) -> ExportDocument:
    """Check every record of an export; raise InvalidExport naming the first problem."""
    if not records or records[0].get("type") != "export":
        raise InvalidExport("record 0: the document must start with an `export` record")
    header = records[0]
    memories: list[ImportedMemory] = []
    for n, record in enumerate(records[1:], start=1):
        where = f"record {n}"
        if record.get("type") != "memory":
            raise _fail(where, "`type` must be `memory`")
        origin = _str(record, "id", where, MAX_ID_CHARS)
        owner = _str(record, "owner", where, MAX_OWNER_CHARS)
        raw_versions = record.get("versions")
        if not isinstance(raw_versions, list) or not raw_versions:
            raise _fail(where, "`versions` must be a non-empty list")
        versions: list[Snapshot] = []
        for i, v in enumerate(raw_versions):
            if not isinstance(v, dict):
                raise _fail(where, f"`versions[{i}]` must be an object")
            versions.append(_snapshot_from(v, f"{where} versions[{i}]"))
        numbers = [v.version for v in versions]
        if numbers != sorted(set(numbers)):
            raise _fail(where, "`versions` must be in increasing version order, without repeats")
        current = _snapshot_from({**record, "reason": "current"}, where)
        if (current.text, current.state) != (versions[-1].text, versions[-1].state):
            raise _fail(where, "the memory's text and state must equal its last version's")
        memories.append(ImportedMemory(origin_id=str(origin), owner=str(owner), versions=versions))
    if header.get("memories") != len(memories):
        raise InvalidExport("record 0: `memories` does not match the number of memory records")
    return ExportDocument(
        tenant=header.get("tenant") if isinstance(header.get("tenant"), str) else None,
        user=header.get("user") if isinstance(header.get("user"), str) else None,
        memories=memories,
    )


# ---------------------------------------------------------------- import


def fingerprint(owner: str, first: Snapshot | MemoryItem) -> str:
    """What identifies a memory across tenants: its first version, which the vault never rewrites."""
    body = json.dumps(
        [owner, first.text, [source_dict(s) for s in first.sources], iso(first.observed_at)],
        ensure_ascii=False,
        sort_keys=True,
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def existing_fingerprints(vault: MemVault, tenant: str, owner: str) -> Counter[str]:
    """Fingerprints of the owner's memories in the target tenant (counted: equal memories exist)."""
    counts: Counter[str] = Counter()
    for item in iter_memories(vault, tenant, owner):
        counts[fingerprint(owner, vault.version(tenant, item.id, 1))] += 1
    return counts


@dataclass
class ImportPlan:
    tenant: str
    todo: list[ImportedMemory]
    skipped: int


def plan_import(vault: MemVault, tenant: str, document: ExportDocument) -> ImportPlan:
    """Which memories of the document the target tenant does not hold yet (reads only)."""
    todo: list[ImportedMemory] = []
    skipped = 0
    by_owner: dict[str, list[ImportedMemory]] = {}
    for memory in document.memories:
        by_owner.setdefault(memory.owner, []).append(memory)
    for owner, memories in by_owner.items():
        have = existing_fingerprints(vault, tenant, owner)
        for memory in memories:
            fp = memory.fingerprint
            if have[fp] > 0:
                have[fp] -= 1
                skipped += 1
            else:
                todo.append(memory)
    return ImportPlan(tenant, todo, skipped)


def _embed_all(embedder: Any, texts: list[str]) -> dict[str, np.ndarray]:
    """One vector per distinct text, in batches (one event loop for an async upstream embedder)."""
    distinct = list(dict.fromkeys(texts))
    batches = [distinct[i : i + _EMBED_BATCH] for i in range(0, len(distinct), _EMBED_BATCH)]
    if hasattr(embedder, "aembed"):

        async def run() -> list[np.ndarray]:
            return [await embedder.aembed(b) for b in batches]

        arrays = asyncio.run(run()) if batches else []
    else:
        arrays = [embedder.embed(b) for b in batches]
    vectors: dict[str, np.ndarray] = {}
    for batch, array in zip(batches, arrays, strict=True):
        for text, vector in zip(batch, normalise(np.asarray(array, np.float32)), strict=True):
            vectors[text] = vector
    return vectors


@dataclass
class ImportResult:
    imported: dict[str, list[str]] = field(default_factory=dict)  # owner -> new ids
    skipped: int = 0
    versions: int = 0

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.imported.values())


def apply_import(
    vault: MemVault, plan: ImportPlan, embedder: Any, result: ImportResult | None = None
) -> ImportResult:
    """Replay each planned memory through the vault's write path (add, then one update per version).
    `result` is filled as memories are written, so a caller still knows what was written if one fails."""
    result = result if result is not None else ImportResult()
    result.skipped = plan.skipped
    vectors = _embed_all(embedder, [v.text for m in plan.todo for v in m.versions if v.state == State.ACTIVE])
    for memory in plan.todo:
        first = memory.versions[0]
        item = vault.add(
            plan.tenant,
            memory.owner,
            first.text,
            sources=first.sources,
            observed_at=first.observed_at,
            scope=first.scope,
            importance=first.importance,
            kind=first.kind,
            valid_from=first.valid_from,
            expires_at=first.expires_at,
            vector=vectors.get(first.text),
            dedupe=False,
        )
        later = memory.versions[1:]
        if first.state != State.ACTIVE or first.invalid_at is not None:
            later = [first, *later]  # add() makes active items; the first state needs its own version
        for snap in later:
            vault.update(
                plan.tenant,
                item.id,
                text=snap.text,
                state=snap.state,
                importance=snap.importance,
                kind=snap.kind,
                scope=snap.scope,
                observed_at=snap.observed_at,
                sources=snap.sources,
                reason=snap.reason,
                vector=vectors.get(snap.text),
                clear=[name for name in _NULLABLE if getattr(snap, name) is None],
                **{name: getattr(snap, name) for name in _NULLABLE},
            )
        result.imported.setdefault(memory.owner, []).append(item.id)
        result.versions += len(memory.versions)
    return result


def audit_import(audit: AuditSink, tenant: str, result: ImportResult) -> None:
    """`memory.write` per user naming the new ids, marked as an import."""
    for owner, ids in result.imported.items():
        for start in range(0, len(ids), _AUDIT_IDS_PER_ENTRY):
            audit.record(
                tenant,
                "memory.write",
                user=owner,
                memory_ids=ids[start : start + _AUDIT_IDS_PER_ENTRY],
                detail={"via": "import", "imported": len(ids), "skipped": result.skipped},
            )
