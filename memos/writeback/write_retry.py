"""Exchanges whose outbox commit failed, held in memory until storage takes them again.

When a fail-open tenant's exchange cannot be committed to the outbox (full disk, lost database), the
client still gets its answer; the exchange waits here, in commit order, and a background task writes it
to the outbox with a capped exponential back-off (and, while nothing waits but storage is known to
fail, probes with a small write so readiness turns green again). While anything waits, later
exchanges join the end of the queue rather than overtaking it, so one user's exchanges reach the
outbox in the order they were answered.

The queue is bounded (`capacity` exchanges, `capacity_bytes` of payload): an exchange that finds it
full is lost, and that is the only way
one is. Every such loss is counted (`lost`), logged at error level and shown by readiness. The queue is
in memory: a process that dies while exchanges wait loses them too (stop() tries to write them first,
and logs how many it could not). Payloads are already redacted; nothing here logs their text.
Thread-safe: `hold` runs on the event loop, `erase_user` in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from memos.db import StorageHealth, storage_failure

log = logging.getLogger(__name__)

# A failure that is not the storage's (the row itself is refused) is retried this many times, then the
# exchange is given up as lost (counted like an overflow).
MAX_REJECTIONS = 5
IDLE_CHECK_S = 1.0


class OutboxWriter(Protocol):
    def enqueue(self, tenant: str, owner: str, request_id: str, payload: dict[str, Any]) -> int: ...


@dataclass
class _Held:
    tenant: str
    owner: str
    request_id: str
    payload: dict[str, Any]
    held_at: float  # time.monotonic()
    size: int  # bytes of the payload as JSON (the byte bound)
    rejections: int = 0


@dataclass(frozen=True)
class RetrySnapshot:
    """What metrics and readiness show (counts and ages only)."""

    waiting: int
    capacity: int
    oldest_age_s: float
    held: int  # exchanges that ever waited here
    written: int  # of those, committed to the outbox later
    lost: int  # dropped: the queue was full, or the row was refused MAX_REJECTIONS times
    storage_failing: bool
    storage_kind: str | None


@dataclass
class _Counters:
    held: int = 0
    written: int = 0
    lost: int = 0
    lost_since_ok: int = field(default=0)  # losses since the queue last drained (readiness)


class WriteRetryQueue:
    def __init__(
        self,
        outbox: OutboxWriter,
        health: StorageHealth,
        *,
        capacity: int = 10_000,
        capacity_bytes: int = 256 * 1024 * 1024,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 5.0,
        probe: Callable[[], None] | None = None,
        on_written: Callable[[], None] | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError("the retry queue needs room for at least one exchange")
        self._outbox = outbox
        self._health = health
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self._bytes = 0
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._probe = probe
        # Called on the event loop after exchanges reached the outbox (the outbox worker's notify).
        self._on_written = on_written
        self._items: deque[_Held] = deque()
        self._items_lock = threading.Lock()  # short: deque operations only (taken on the event loop)
        self._flush_lock = threading.Lock()  # held across one outbox write; erase_user takes it too
        self._counters = _Counters()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # -- producer (VaultChatMemory.complete) ---------------------------------------------------------

    @property
    def holding(self) -> bool:
        """Exchanges wait: a new one must queue behind them (commit order)."""
        return bool(self._items)

    @property
    def storage_failing(self) -> bool:
        """Known now that a write would not be durable: exchanges wait, or the last write failed."""
        return bool(self._items) or self._health.failing

    @property
    def full(self) -> bool:
        return len(self._items) >= self.capacity or self._bytes >= self.capacity_bytes

    def hold(
        self,
        tenant: str,
        owner: str,
        request_id: str,
        payload: dict[str, Any],
        error: BaseException | None = None,
    ) -> bool:
        """Keep an exchange for a later commit; False when the queue is full and it is lost."""
        now = time.monotonic()
        size = len(orjson.dumps(payload))
        with self._items_lock:
            if len(self._items) >= self.capacity or self._bytes + size > self.capacity_bytes:
                self._counters.lost += 1
                self._counters.lost_since_ok += 1
                lost, waiting = self._counters.lost, len(self._items)
                oldest = now - self._items[0].held_at if self._items else 0.0
                accepted = first = False
            else:
                first = not self._items
                self._items.append(_Held(tenant, owner, request_id, payload, now, size))
                self._bytes += size
                self._counters.held += 1
                waiting, oldest = len(self._items), now - self._items[0].held_at
                accepted = True
        why = f": {type(error).__name__}" if error is not None else " (behind earlier ones)"
        if accepted:
            log.warning(
                "write-back held for retry (request %s)%s; %d waiting, oldest %.1fs",
                request_id,
                why,
                waiting,
                oldest,
            )
            if first:  # the retry task starts now; later ones wait for its back-off
                self._kick()
        else:
            log.error(
                "write-back LOST (request %s): the retry queue is full (%d waiting, oldest %.1fs); "
                "%d lost since start",
                request_id,
                waiting,
                oldest,
                lost,
            )
        return accepted

    def snapshot(self) -> RetrySnapshot:
        now = time.monotonic()
        with self._items_lock:
            waiting = len(self._items)
            oldest = now - self._items[0].held_at if self._items else 0.0
            counters = _Counters(**vars(self._counters))
        state = self._health.state()
        return RetrySnapshot(
            waiting=waiting,
            capacity=self.capacity,
            oldest_age_s=oldest,
            held=counters.held,
            written=counters.written,
            lost=counters.lost,
            storage_failing=state.failing or waiting > 0,
            storage_kind=state.kind,
        )

    @property
    def losing(self) -> bool:
        """Exchanges were lost since the queue last drained (readiness stays red until it does)."""
        return self._counters.lost_since_ok > 0

    # -- erasure (memos.memories.UserDataEraser) ------------------------------------------------------

    def erase_user(self, tenant: str, owner: str) -> int:
        """Forget the user's waiting exchanges. Registered before the outbox's eraser: an exchange being
        written right now finishes first (the flush lock), so the outbox's eraser then finds it."""
        with self._flush_lock, self._items_lock:
            kept = [h for h in self._items if not (h.tenant == tenant and h.owner == owner)]
            return self._keep(kept)

    def erase_tenant(self, tenant: str) -> int:
        with self._flush_lock, self._items_lock:
            kept = [h for h in self._items if h.tenant != tenant]
            return self._keep(kept)

    def _keep(self, kept: list[_Held]) -> int:
        """Replace the items by `kept` (the items lock held); returns how many went."""
        dropped = len(self._items) - len(kept)
        self._items = deque(kept)
        self._bytes = sum(h.size for h in kept)
        return dropped

    # -- the background task -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None and not self._task.done():
            return
        self._wake = asyncio.Event()
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="write-retry")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop retrying; one last attempt to write what waits (bounded), then report what is lost."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._items:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(self.flush), timeout_s)
        left = len(self._items)
        if left:
            with self._items_lock:
                self._counters.lost += left
            log.error("stopping with %d exchanges still waiting for storage: they are LOST", left)

    def _kick(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            if not self._items and not (self._health.failing and self._probe is not None):
                # Idle. A write failing elsewhere (the memory API, the worker) does not wake this task,
                # so look again within IDLE_CHECK_S: readiness must not stay red for want of a probe.
                await self._pause(IDLE_CHECK_S)
                failures = 0
                continue
            try:
                written = await asyncio.to_thread(self.flush)
            except Exception as exc:
                failures += 1
                delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(failures, 16))
                snap = self.snapshot()
                log.warning(
                    "write-back retry: storage still failing (%s); %d waiting, oldest %.1fs; next in %.1fs",
                    type(exc).__name__,
                    snap.waiting,
                    snap.oldest_age_s,
                    delay,
                )
                await self._pause(delay)
                continue
            failures = 0
            if written and self._on_written is not None:
                self._on_written()

    async def _pause(self, seconds: float) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    def flush(self) -> int:
        """Blocking: write the waiting exchanges in order, stopping at the first storage failure (raised).
        With nothing waiting while storage is known to fail, a probe write instead. Returns how many
        were written."""
        if not self._items:
            if self._health.failing and self._probe is not None:
                self._probe()
                log.info("storage accepts writes again")
            return 0
        written = 0
        oldest_age = 0.0
        while True:
            with self._flush_lock:
                with self._items_lock:
                    if not self._items:
                        break
                    head = self._items[0]
                try:
                    self._outbox.enqueue(head.tenant, head.owner, head.request_id, head.payload)
                except Exception as exc:
                    if storage_failure(exc) is not None:
                        raise
                    self._rejected(head, exc)
                    continue
                with self._items_lock:
                    if self._items and self._items[0] is head:
                        self._items.popleft()
                        self._bytes -= head.size
                    self._counters.written += 1
                    if not self._items:
                        self._counters.lost_since_ok = 0
                oldest_age = max(oldest_age, time.monotonic() - head.held_at)
                written += 1
        if written:
            log.warning(
                "write-back retry: %d exchanges written to the outbox (the oldest waited %.1fs)",
                written,
                oldest_age,
            )
        return written

    def _rejected(self, head: _Held, exc: Exception) -> None:
        head.rejections += 1
        if head.rejections < MAX_REJECTIONS:
            log.warning(
                "write-back retry: request %s refused (%s), attempt %d of %d",
                head.request_id,
                type(exc).__name__,
                head.rejections,
                MAX_REJECTIONS,
            )
            raise exc
        with self._items_lock:
            if self._items and self._items[0] is head:
                self._items.popleft()
                self._bytes -= head.size
            self._counters.lost += 1
            self._counters.lost_since_ok += 1
        log.error(
            "write-back LOST (request %s): refused %d times (%s)",
            head.request_id,
            MAX_REJECTIONS,
            type(exc).__name__,
        )
