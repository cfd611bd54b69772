"""schemathesis hooks for tests/e2e/test_schemathesis.py: the one rule of the memory API that no JSON
Schema can state. A PATCH's `valid_from` must not be after its `invalid_at` (a comparison across two
fields; the document says it in both fields' descriptions, tests/proxy/test_validation.py tests the 400),
so generated bodies that break it are dropped rather than counted as valid data refused."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import schemathesis
from pydantic import ValidationError

from memos.clock import aware
from proxy.memory_wire import PatchMemory


@schemathesis.hook
def filter_body(context: schemathesis.HookContext, body: Any) -> bool:
    operation = context.operation
    if operation is None or operation.method.upper() != "PATCH" or not isinstance(body, dict):
        return True
    try:
        patch = PatchMemory.model_validate(body)
    except ValidationError:
        return True  # data the schema refuses: the server must refuse it too
    start, end = patch.valid_from, patch.invalid_at
    if isinstance(start, datetime) and isinstance(end, datetime):
        return aware(start) <= aware(end)  # type: ignore[operator]
    return True
