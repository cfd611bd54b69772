"""What memory tells the outside about its work as it happens (the proxy exports it as metrics).

memos/ never imports the proxy: the composition root passes an observer in; the default observes
nothing. Calls are cheap and never block (counters and histograms in memory); no text passes here.
"""

from __future__ import annotations

from typing import Protocol


class MemoryObserver(Protocol):
    def recalled(self, tenant: str, seconds: float) -> None:
        """A chat's retrieval finished (or was given up on) after `seconds`."""

    def query_embedded(self, batch: int, seconds: float) -> None:
        """One forward pass embedded `batch` queries in `seconds`."""

    def memories_embedded(self, batch: int, seconds: float) -> None:
        """One call embedded `batch` memory texts for storage (write-back, patches, imports)."""

    def written_back(self, tenant: str, *, added: int, merged: int, superseded: int) -> None:
        """One exchange was written back: memories added, merged into existing ones, superseded."""

    def write_back_failed(self, tenant: str, error: str) -> None:
        """Writing an exchange back failed (`error`: the exception's class name); it will be retried."""

    def kv_cache_used(self, tenant: str, *, hit: bool) -> None:
        """An activation-mode chat got its memory block's KV cache: stored and current (`hit`), or
        prefilled now (missing or stale)."""

    def adapter_used(self, tenant: str, *, hit: bool) -> None:
        """A parametric-mode chat asked for the user's adapter: current (`hit`) or none that matches."""


class NoObserver:
    def recalled(self, tenant: str, seconds: float) -> None:
        return None

    def query_embedded(self, batch: int, seconds: float) -> None:
        return None

    def memories_embedded(self, batch: int, seconds: float) -> None:
        return None

    def written_back(self, tenant: str, *, added: int, merged: int, superseded: int) -> None:
        return None

    def write_back_failed(self, tenant: str, error: str) -> None:
        return None

    def kv_cache_used(self, tenant: str, *, hit: bool) -> None:
        return None

    def adapter_used(self, tenant: str, *, hit: bool) -> None:
        return None
