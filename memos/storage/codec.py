"""Between memory items and what the vault stores of them, under each tenant's keys (memos.keys).

- Text and sources are stored only as TenantCipher ciphertext bound to (tenant, id, version)
  (`tables.item_aad`); each version's snapshot of the whole item likewise (`tables.version_aad`).
- Keyed hashes (blind indices) stand in for what is looked up: the owner (LanceDB's owner column),
  the normalised text (exact duplicates), the session (neighbouring turns), each keyword term.
- Vectors pass through the tenant's secret rotation before they reach LanceDB.

Plaintext exists only in the MemoryItem decoded here, in memory.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from memos.clock import aware
from memos.item import Kind, MemoryItem, Scope, Source, State, snapshot, source_dict
from memos.keys.keyring import Keyring
from memos.limits import metadata_problem
from memos.storage.keyword import DocTerms, doc_terms, normalise_for_duplicate, tokenize
from memos.storage.tables import MemoryRow, MemoryVersionRow, item_aad, version_aad


class MemoryRecord(Protocol):
    """The columns of a memory row that decode into an item: an ORM MemoryRow, a Core row of the
    `memories` table (read without the ORM's per-object cost), or a row about to be bulk-inserted."""

    id: str
    tenant: str
    owner: str
    scope: str
    kind: str
    state: str
    version: int
    payload: bytes | None
    importance: float
    hits: int
    observed_at: datetime | None
    valid_from: datetime | None
    invalid_at: datetime | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    last_hit_at: datetime | None


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _source_from(data: dict[str, Any]) -> Source:
    return Source(
        request_id=data.get("request_id"),
        message_index=data.get("message_index"),
        session=data.get("session"),
        metadata=dict(data.get("metadata") or {}),
    )


class MemoryCodec:
    """Seals, opens and blinds with the tenant's cipher from the keyring (cached there)."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    # ------------------------------------------------------------------ keyed hashes

    def owner_key(self, tenant: str, owner: str) -> str:
        return self.keyring.cipher(tenant).blind("owner\x00" + owner)

    def content_hash(self, tenant: str, text: str) -> str:
        return self.keyring.cipher(tenant).blind("dup\x00" + normalise_for_duplicate(text))

    def session_key(self, tenant: str, session: str | None) -> str | None:
        return None if not session else self.keyring.cipher(tenant).blind("session\x00" + session)

    def terms(self, tenant: str, text: str) -> DocTerms:
        cipher = self.keyring.cipher(tenant)
        return doc_terms(tokenize(text), cipher.blind)

    def query_terms(self, tenant: str, text: str) -> list[str]:
        cipher = self.keyring.cipher(tenant)
        return sorted({cipher.blind(t) for t in tokenize(text)})

    def rotate(self, tenant: str, vectors: np.ndarray) -> np.ndarray:
        """Unit vectors (n, dim) as LanceDB and the vector cache hold them."""
        return self.keyring.cipher(tenant).rotate(vectors)

    # ------------------------------------------------------------------ payloads

    def seal_payload(
        self, tenant: str, memory_id: str, version: int, text: str, sources: list[Source]
    ) -> bytes:
        # Never seal what could not be read back and answered as JSON (metadata nested too deep).
        for s in sources:
            if s.metadata and (problem := metadata_problem(s.metadata)) is not None:
                raise ValueError(f"source metadata {problem}: not stored")
        body = json.dumps({"text": text, "sources": [source_dict(s) for s in sources]}, ensure_ascii=False)
        return self.keyring.cipher(tenant).encrypt_text(body, item_aad(tenant, memory_id, version))

    def open_payload(self, row: MemoryRecord) -> tuple[str, list[Source]]:
        if row.payload is None:
            return "", []
        body = json.loads(
            self.keyring.cipher(row.tenant).decrypt_text(
                row.payload, item_aad(row.tenant, row.id, row.version)
            )
        )
        return body["text"], [_source_from(s) for s in body.get("sources", [])]

    def to_item(
        self, row: MemoryRecord, text: str | None = None, sources: list[Source] | None = None
    ) -> MemoryItem:
        """The row as an item; its payload is opened unless `text` (and `sources`) are given."""
        if text is None:
            text, sources = self.open_payload(row)
        return MemoryItem(
            id=row.id,
            tenant=row.tenant,
            owner=row.owner,
            text=text,
            scope=Scope(row.scope),
            kind=Kind(row.kind),
            state=State(row.state),
            version=row.version,
            sources=list(sources or []),
            observed_at=aware(row.observed_at),
            valid_from=aware(row.valid_from),
            invalid_at=aware(row.invalid_at),
            created_at=aware(row.created_at),
            updated_at=aware(row.updated_at),
            hits=row.hits,
            last_hit_at=aware(row.last_hit_at),
            importance=row.importance,
            expires_at=aware(row.expires_at),
        )

    # ------------------------------------------------------------------ version snapshots

    def seal_snapshot(self, row: MemoryRecord, item: MemoryItem) -> bytes:
        """The whole item at the row's version, as the payload of its version row."""
        return self.keyring.cipher(row.tenant).encrypt_text(
            json.dumps(snapshot(item), ensure_ascii=False),
            version_aad(row.tenant, row.id, row.version),
        )

    def version_item(self, row: MemoryRow, v: MemoryVersionRow) -> MemoryItem:
        """Version `v` of the item whose current row is `row` (no text once the item was deleted)."""
        snap: dict[str, Any] = {}
        if v.payload is not None:
            snap = json.loads(
                self.keyring.cipher(v.tenant).decrypt_text(
                    v.payload, version_aad(v.tenant, v.memory_id, v.version)
                )
            )
        return MemoryItem(
            id=v.memory_id,
            tenant=v.tenant,
            owner=v.owner,
            text=snap.get("text", ""),
            scope=Scope(snap.get("scope", row.scope)),
            kind=Kind(snap.get("kind", row.kind)),
            state=State(v.state),
            version=v.version,
            sources=[_source_from(s) for s in snap.get("sources", [])],
            observed_at=_from_iso(snap.get("observed_at")),
            valid_from=_from_iso(snap.get("valid_from")),
            invalid_at=_from_iso(snap.get("invalid_at")),
            created_at=_from_iso(snap.get("created_at")) or aware(row.created_at),
            updated_at=aware(v.created_at),
            importance=float(snap.get("importance", row.importance)),
            expires_at=_from_iso(snap.get("expires_at")),
        )
