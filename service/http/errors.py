"""Every error answer of the API: `{"error": {"code", "message", "field"}}` with a 4xx/5xx status.

Request validation errors (FastAPI's RequestValidationError), HTTP errors (404/405), the state
store's errors and ApiError raised by routes all go through `error_response`, which also counts
them in cmnrec_errors_total. A genuine bug is caught by the request middleware (service/http/middleware.py)
and answered 500 internal_error; no input is meant to get there.
"""
from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.http.schemas import ErrorOut
from service.ops import metrics
from service.ops.labels import ErrorCode
from service.state.domain import StateConflictError, StateStoreUnavailable, UserStateCorrupt

log = logging.getLogger(__name__)

STATUS = {
    ErrorCode.UNKNOWN_ITEM: 422, ErrorCode.EMPTY_ID: 422, ErrorCode.ID_TOO_LONG: 422,
    ErrorCode.INVALID_ID: 422, ErrorCode.EVENT_ID_REQUIRED: 422,
    ErrorCode.N_OUT_OF_RANGE: 422, ErrorCode.MALFORMED_JSON: 400, ErrorCode.BATCH_TOO_LARGE: 413,
    ErrorCode.BODY_TOO_LARGE: 413, ErrorCode.ANSWER_TOO_LARGE: 422,
    ErrorCode.VALIDATION_ERROR: 422, ErrorCode.NOT_FOUND: 404, ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.STATE_CONFLICT: 409, ErrorCode.STATE_CORRUPT: 409,
    ErrorCode.STATE_STORE_UNAVAILABLE: 503, ErrorCode.STATE_STORE_READ_ONLY: 503,
    ErrorCode.STATE_STORE_FULL: 503, ErrorCode.UNAUTHORIZED: 401, ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429, ErrorCode.NOT_READY: 503, ErrorCode.INTERNAL_ERROR: 500,
}

# StateStoreUnavailable.reason -> the code answered, and what the client is told.
STORE_CODES = {
    "unavailable": (ErrorCode.STATE_STORE_UNAVAILABLE,
                    "the state store (Redis) does not answer; retry shortly"),
    "read_only": (ErrorCode.STATE_STORE_READ_ONLY,
                  "the state store (Redis) is read-only (a failover is under way); retry shortly"),
    "full": (ErrorCode.STATE_STORE_FULL,
             "the state store (Redis) is full (maxmemory reached); retry later"),
}

# The error responses a route documents in OpenAPI (every one with the ErrorOut body).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut, "description": description} for status, description in (
        (400, "malformed_json"), (401, "unauthorized: no API key, or an unknown one"),
        (403, "forbidden: the API key lacks the scope of this route"),
        (413, "batch_too_large, body_too_large"),
        (422, "invalid input: unknown_item, empty_id, id_too_long, invalid_id, event_id_required,"
              " n_out_of_range, answer_too_large, validation_error"),
        (409, "state_conflict: too many concurrent updates of one user, retry; state_corrupt: the"
              " user's stored keys have the wrong Redis type, DELETE the user to reset"),
        (429, "rate_limited: over the API key's request rate; retry after Retry-After seconds"),
        (503, "state_store_unavailable, state_store_read_only, state_store_full: Redis cannot"
              " serve now (an event answered 503 may or may not have been applied: ask"
              " GET /v1/users/{user_id}/events/{event_id}); not_ready"))
}


class ApiError(Exception):
    """An error answer raised by a route."""

    def __init__(self, code: ErrorCode, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field


def error_response(code: ErrorCode, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    metrics.ERRORS_TOTAL.labels(code.value).inc()
    return JSONResponse({"error": {"code": code.value, "message": message, "field": field}},
                        status_code=STATUS[code], headers=headers)


def field_path(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """('body', 'events', 3, 'item_id') -> 'events[3].item_id'; ('query', 'n') -> 'n'."""
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or ("body" if loc and loc[0] == "body" else None)


def validation_error_code(error: dict[str, Any]) -> ErrorCode:
    """Our code for one pydantic error of a request."""
    kind, loc = error.get("type", ""), tuple(error.get("loc", ()))
    if kind == "json_invalid":
        return ErrorCode.MALFORMED_JSON
    if kind == "empty_id":
        return ErrorCode.EMPTY_ID
    if kind == "invalid_id":
        return ErrorCode.INVALID_ID
    if loc[:1] == ("query",) and loc[-1:] == ("n",):
        return ErrorCode.N_OUT_OF_RANGE
    return ErrorCode.VALIDATION_ERROR


async def _on_api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.code, exc.message, exc.field)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if not errors:
        return error_response(ErrorCode.VALIDATION_ERROR, "invalid request")
    first = errors[0]
    code = validation_error_code(first)
    field = field_path(first.get("loc", ()))
    if code == ErrorCode.MALFORMED_JSON:
        ctx = first.get("ctx") or {}
        message = f"request body is not valid JSON: {ctx.get('error', first.get('msg', ''))}"
        field = "body"
    elif tuple(first.get("loc", ())) == ("body",):
        message = ("request body: expected a JSON object (Content-Type: application/json); "
                   f"{first.get('msg', 'invalid')}")
    else:
        message = f"{field}: {first.get('msg', 'invalid')}" if field else str(first.get("msg"))
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
    return error_response(code, message, field)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        code = ErrorCode.NOT_FOUND
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        code, message = ErrorCode.METHOD_NOT_ALLOWED, f"{request.method} is not allowed here"
    elif exc.status_code == 413:  # service/http/limits.py: the body passed max_body_bytes
        code, message = ErrorCode.BODY_TOO_LARGE, str(exc.detail)
    elif exc.status_code == 400:  # FastAPI could not parse the body (e.g. JSON nested too deep)
        code, message = ErrorCode.MALFORMED_JSON, f"request body: {exc.detail}"
    else:
        code, message = ErrorCode.VALIDATION_ERROR, str(exc.detail)
    response = error_response(code, message, "body" if code in (
        ErrorCode.MALFORMED_JSON, ErrorCode.BODY_TOO_LARGE) else None)
    if exc.status_code not in (400, 404, 405, 413):
        response.status_code = exc.status_code
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _on_store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StateStoreUnavailable)
    log.warning("state store unavailable: %s", exc)
    code, message = STORE_CODES.get(exc.reason, STORE_CODES["unavailable"])
    return error_response(code, message, headers={"Retry-After": "1"})


async def _on_state_corrupt(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UserStateCorrupt)
    log.warning("%s", exc)
    return error_response(ErrorCode.STATE_CORRUPT,
                          "the user's stored keys have the wrong Redis type; nothing was applied."
                          " DELETE /v1/users/{user_id} resets the user", "user_id")


async def _on_conflict(request: Request, exc: Exception) -> JSONResponse:
    return error_response(ErrorCode.STATE_CONFLICT, str(exc), headers={"Retry-After": "0"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(StateStoreUnavailable, _on_store_unavailable)
    app.add_exception_handler(StateConflictError, _on_conflict)
    app.add_exception_handler(UserStateCorrupt, _on_state_corrupt)
