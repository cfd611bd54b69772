"""The audit API's query (`GET /v1/audit`): validated by pydantic like the memory API's, in one place."""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field

from proxy.wire import WireModel, matching, no_bool

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
# ASCII digits only (str.isdigit also takes "²"), and few enough to fit the database's integer.
CURSOR_PATTERN = "^[0-9]{1,18}$"


class AuditQuery(WireModel):
    """GET /v1/audit's query: a page of the caller's tenant's trail, oldest first."""

    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT), BeforeValidator(no_bool)] = DEFAULT_LIMIT
    cursor: Annotated[
        str,
        matching(CURSOR_PATTERN, "is not a cursor this endpoint returned"),
        Field(description="`next_cursor` of the previous page; empty or absent: the first page."),
    ] = ""
