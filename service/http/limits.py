"""Load protection before parsing: the request body size limit (a pure ASGI middleware).

A body announced larger than `max_body_bytes` (Content-Length) is answered 413 body_too_large
without reading it; a body sent without a length (chunked) is counted as it streams in and cut off
at the limit, so no request can make the service buffer or parse more than `max_body_bytes`.
The answer-size bound (n x events <= settings.max_answer_items) is checked by the event routes.
"""
from __future__ import annotations

from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.errors import error_response
from service.ops.labels import ErrorCode


class BodyTooLarge(HTTPException):
    """Raised from `receive` once the body passes the limit. An HTTPException, so that FastAPI's
    body reading lets it through (it turns other exceptions into 400) to the 413 handler."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes (settings.max_body_bytes);"
                              " nothing was applied")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> Any:
        return error_response(ErrorCode.BODY_TOO_LARGE, f"request body over {self.max_body_bytes}"
                              " bytes (settings.max_body_bytes); nothing was read or applied",
                              "body")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    announced = int(value)
                except ValueError:
                    announced = 0
                if announced > self.max_body_bytes:
                    await self._too_large()(scope, receive, send)
                    return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise BodyTooLarge(self.max_body_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await self._too_large()(scope, receive, send)

