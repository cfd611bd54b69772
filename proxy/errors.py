"""Errors in the OpenAI envelope: `{"error": {"message", "type", "param", "code"}}` with the right status.

Routes raise `ApiError` (or its helpers); the app's exception handler turns it into a response. Messages
name fields and headers, never echo message text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson
from starlette.responses import Response

from memos import Denied, InvalidInput, MemosError, NotFound, StorageFull, Unavailable, storage_failure

if TYPE_CHECKING:
    from proxy.upstream.base import UpstreamError


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def envelope(self) -> dict[str, Any]:
        return error_envelope(self.message, type=self.type, param=self.param, code=self.code)


def error_envelope(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | int | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


def unauthorized(message: str = "Invalid or missing API key.") -> ApiError:
    return ApiError(401, message, type="authentication_error", code="invalid_api_key")


def forbidden(message: str, code: str | None = "permission_denied") -> ApiError:
    return ApiError(403, message, type="permission_error", code=code)


def not_found(message: str, param: str | None = None, code: str | None = "not_found") -> ApiError:
    return ApiError(404, message, type="invalid_request_error", param=param, code=code)


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"Request body is larger than {limit} bytes.", code="request_too_large")


def storage_error(exc: BaseException) -> ApiError | None:
    """A failure of the storage as the client sees it (None when `exc` is something else): a full
    disk answers 507, an unreachable database 503, both at once and saying what to do."""

    failure = storage_failure(exc)
    if failure is None:
        return None
    if isinstance(failure, StorageFull):
        return ApiError(
            507,
            "Storage is full: the memory store cannot write (database or disk full). Retry once space "
            "has been freed.",
            type="server_error",
            code="insufficient_storage",
            headers={"Retry-After": "30"},
        )
    return ApiError(
        503,
        "Storage is unavailable: the memory database cannot be reached. Retry shortly.",
        type="server_error",
        code="storage_unavailable",
        headers={"Retry-After": "5"},
    )


def memos_error(exc: MemosError) -> ApiError:
    """Memory's errors as the client sees them: the one place their kinds become HTTP statuses."""
    storage = storage_error(exc)
    if storage is not None:
        return storage
    if isinstance(exc, InvalidInput):
        return bad_request(exc.message, param=exc.param)
    if isinstance(exc, NotFound):
        return not_found(str(exc), param=exc.param)
    if isinstance(exc, Denied):
        return forbidden(str(exc))
    if isinstance(exc, Unavailable):
        return ApiError(503, str(exc), type="server_error", code="memory_unavailable")
    return ApiError(500, "Internal error.", type="server_error", code="internal_error")


def server_error(exc: BaseException) -> ApiError:
    """What an exception no route handled answers: a storage failure as such, anything else 500."""
    if isinstance(exc, MemosError):
        return memos_error(exc)
    return storage_error(exc) or ApiError(500, "Internal error.", type="server_error", code="internal_error")


def json_response(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers, media_type="application/json")


def raw_json_response(
    content: bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def error_response(error: ApiError) -> Response:
    return json_response(error.envelope(), error.status, error.headers)


def upstream_error_response(error: UpstreamError, headers: Mapping[str, str] | None = None) -> Response:
    """A failed upstream call as the client sees it: the upstream's own envelope and status when it
    sent one (429 and 5xx relayed faithfully, with Retry-After and rate-limit headers), else ours."""
    return json_response(error.envelope(), error.status, {**error.headers, **(headers or {})})


def client_gone_response() -> Response:
    """What a request whose client already left gets (nobody reads it; the status shows in metrics)."""
    return json_response(error_envelope("Client closed the request.", code="client_closed_request"), 499)
