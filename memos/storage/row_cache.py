"""Decoded memory rows of recently searched owners, each owner's entry valid for one value of its
change counter (memos.storage.owners.OwnerStats.changes).

Why: a search reads its ~50 candidates back from SQL and decodes them (rows, then the payload of
each one that ranks), which measured three quarters of the search's CPU under load; the candidates
of one user's searches are mostly the same rows. The change counter moves on every write that changes
a row of the owner (add, merge, update, delete, erasure) and never goes back, so an entry whose
counter equals the caller's holds exactly what SQL would return; any other entry is dropped.

Bounded by a number of rows across owners (least recently used owners go first). Erasure in this
process drops the owner at once; another process's erasure moves the counter, and the entry is
dropped the next time the owner is searched here or when it is evicted.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

Row = TypeVar("Row")
OwnerKey = tuple[str, str]  # (tenant, owner)


class _Entry(Generic[Row]):
    __slots__ = ("changes", "rows")

    def __init__(self, changes: int) -> None:
        self.changes = changes
        self.rows: dict[str, Row] = {}


class OwnerRowCache(Generic[Row]):
    def __init__(self, max_rows: int = 50_000) -> None:
        self.max_rows = max(0, max_rows)
        self._owners: OrderedDict[OwnerKey, _Entry[Row]] = OrderedDict()
        self._owner_of: dict[str, OwnerKey] = {}  # memory id -> its owner's key
        self._size = 0
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def get(self, key: OwnerKey, changes: int, ids: Iterable[str]) -> tuple[dict[str, Row], list[str]]:
        """The cached rows among `ids` and the ids to read from SQL."""
        ids = list(ids)
        with self._lock:
            entry = self._owners.get(key)
            if entry is None or entry.changes != changes:
                if entry is not None and entry.changes < changes:
                    self._drop(key)
                return {}, ids
            self._owners.move_to_end(key)
            found = {mid: entry.rows[mid] for mid in ids if mid in entry.rows}
        return found, [mid for mid in ids if mid not in found]

    def put(self, key: OwnerKey, changes: int, rows: Mapping[str, Row]) -> None:
        """Rows read from SQL after the caller read `changes` (so at least that new)."""
        if not rows or self.max_rows == 0:
            return
        with self._lock:
            entry = self._owners.get(key)
            if entry is not None and entry.changes > changes:
                return  # a newer reader got there first
            if entry is None or entry.changes < changes:
                self._drop(key)
                entry = self._owners[key] = _Entry(changes)
            self._owners.move_to_end(key)
            for mid, row in rows.items():
                if mid not in entry.rows:
                    self._size += 1
                    self._owner_of[mid] = key
                entry.rows[mid] = row
            while self._size > self.max_rows and self._owners:
                self._drop(next(iter(self._owners)))

    def update(self, ids: Iterable[str], change: Callable[[str, Row], Row]) -> None:
        """Rows that changed without a counter move (hit counts): `change` gives the new cached row."""
        with self._lock:
            for mid in ids:
                key = self._owner_of.get(mid)
                entry = self._owners.get(key) if key is not None else None
                if entry is not None and mid in entry.rows:
                    entry.rows[mid] = change(mid, entry.rows[mid])

    def drop(self, key: OwnerKey) -> None:
        with self._lock:
            self._drop(key)

    def _drop(self, key: OwnerKey) -> None:
        entry = self._owners.pop(key, None)
        if entry is None:
            return
        self._size -= len(entry.rows)
        for mid in entry.rows:
            self._owner_of.pop(mid, None)
