"""What GET /readyz answers (proxy/routes/health.py builds it, proxy/openapi.py publishes it).

Every part is present when this process has it (a server without memory has no vault, vectors,
embedder, write-back or outbox part); each part says its state in counts and states only.
"""

from __future__ import annotations

from typing import Annotated, Literal, NotRequired

from pydantic import Field
from typing_extensions import TypedDict

Reachable = Literal["ok", "unreachable"]


class StorageState(TypedDict):
    writes: Literal["ok", "failing"]
    failure: NotRequired[Annotated[str | None, Field(description="What fails (full, unavailable).")]]
    failing_for_s: NotRequired[float | None]


class EmbedderState(TypedDict):
    name: str
    ready: Annotated[
        bool, Field(description="Embeds without loading first (the bundled model loads at start).")
    ]


class WriteRetryState(TypedDict):
    waiting: int
    capacity: int
    oldest_age_s: float
    lost: int
    losing: Annotated[bool, Field(description="Acknowledged exchanges are being lost (the queue is full).")]


class OutboxState(TypedDict):
    pending: NotRequired[int]
    oldest_age_s: NotRequired[float]
    stalled: NotRequired[
        Annotated[
            bool, Field(description="The oldest exchange has waited over MEMOS_READY_OUTBOX_MAX_AGE_S.")
        ]
    ]
    readable: NotRequired[
        Annotated[bool, Field(description="Present (false) when the outbox cannot be read.")]
    ]


class Readiness(TypedDict):
    """Ready when every part present is: the vault's database answers a read, the vector store
    answers, the embedder is ready, storage takes writes, no acknowledged exchange is being lost, this
    process's write-back worker runs (where it has one) and the outbox is not stalled."""

    status: Literal["ready", "not_ready"]
    storage: StorageState
    vault: NotRequired[Reachable]
    vectors: NotRequired[Reachable]
    embedder: NotRequired[EmbedderState]
    write_retry: NotRequired[WriteRetryState]
    worker: NotRequired[Literal["running", "stopped"]]
    outbox: NotRequired[OutboxState]
