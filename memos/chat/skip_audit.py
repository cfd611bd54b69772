"""The audit's count of chats memory did not serve as asked (`x-memos-memory-reason`): one
`memory.skipped` entry per tenant per window, with the count of each reason.

Why a summary: a tenant whose client names no user skips memory on every chat, and one chained
entry per request would make the trail as long as the traffic (the metrics count each request,
`memos_memory_skipped_total`). The entry says how many for each reason (`no_user: 3, policy: 1`), the
total, when the window began and ended, and the first request id of each reason to look up in the
logs; never a user, a message or a memory. Audited at the policy's `audit_level` `all` (like
injections, it is about reads).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import anyio

from memos.chat.contract import MemoryReason
from memos.governance.policy import AuditLevel
from memos.logsafe import exception_summary
from memos.polling import PollingThread

log = logging.getLogger(__name__)

ACTION = "memory.skipped"


class SkipAuditSink(Protocol):
    """Where the summaries go (memos.governance.audit.AuditLog.record); blocking."""

    def record(
        self,
        tenant: str,
        action: str,
        *,
        request_id: str | None = ...,
        detail: dict[str, object] | None = ...,
        level: AuditLevel | str | None = ...,
    ) -> object: ...


@dataclass
class _Window:
    started: datetime
    last: datetime
    level: AuditLevel | str | None
    counts: dict[str, int] = field(default_factory=dict)
    example_requests: dict[str, str] = field(default_factory=dict)

    def detail(self) -> dict[str, object]:
        """Flat, as audit details are: each reason's count, the total, the window, and the first
        request of each reason (in reason order)."""
        return {
            **dict(sorted(self.counts.items())),
            "total": sum(self.counts.values()),
            "first_at": self.started.isoformat(),
            "last_at": self.last.isoformat(),
            "request_ids": [self.example_requests[r] for r in sorted(self.example_requests)],
        }


class SkippedMemoryAudit:
    """Counts skips in memory (cheap, any thread) and writes each tenant's window every `interval_s`
    from its own thread, and whatever is open when the process stops."""

    def __init__(
        self,
        audit: SkipAuditSink,
        interval_s: float = 60.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._audit = audit
        self._now = now
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()
        # One flush at a time, so a caller of flush() finds what another flush took already written.
        self._flushing = threading.Lock()
        self._thread = PollingThread("memory-skip-audit", interval_s, self.flush)

    def count(
        self, tenant: str, reason: MemoryReason, request_id: str, level: AuditLevel | str | None
    ) -> None:
        """One request of `tenant` answered without memory (or in another mode) for `reason`."""
        now = self._now()
        with self._lock:
            window = self._windows.get(tenant)
            if window is None:
                window = self._windows[tenant] = _Window(started=now, last=now, level=level)
            window.last, window.level = now, level  # the policy in force when the window closes
            window.counts[reason.value] = window.counts.get(reason.value, 0) + 1
            window.example_requests.setdefault(reason.value, request_id)

    def pending(self) -> dict[str, dict[str, int]]:
        """What the next flush would write: tenant -> reason -> count."""
        with self._lock:
            return {tenant: dict(w.counts) for tenant, w in self._windows.items()}

    def flush(self) -> int:
        """Write every open window (blocking); returns the number of entries written. A window whose
        entry could not be written is kept and merged into the next (nothing counted is dropped)."""
        with self._flushing:
            with self._lock:
                windows, self._windows = self._windows, {}
            written = 0
            for tenant, window in windows.items():
                try:
                    self._audit.record(tenant, ACTION, detail=window.detail(), level=window.level)
                    written += 1
                except Exception as exc:  # storage down: keep the counts for the next tick
                    log.warning("could not audit skipped memory: %s", exception_summary(exc))
                    self._restore(tenant, window)
            return written

    def _restore(self, tenant: str, window: _Window) -> None:
        with self._lock:
            newer = self._windows.get(tenant)
            if newer is None:
                self._windows[tenant] = window
                return
            newer.started = min(newer.started, window.started)
            for reason, n in window.counts.items():
                newer.counts[reason] = newer.counts.get(reason, 0) + n
            for reason, request_id in window.example_requests.items():
                newer.example_requests.setdefault(reason, request_id)

    def start(self) -> None:
        self._thread.start()

    async def stop(self) -> None:
        await anyio.to_thread.run_sync(self._thread.stop)
        await anyio.to_thread.run_sync(self.flush)
