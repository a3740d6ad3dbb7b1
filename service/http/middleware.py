"""Request middleware: latency per route template, and the last line of defence against bugs.

A pure ASGI middleware (no BaseHTTPMiddleware, which copies the body stream and costs latency).
The route label is the matched route's template (`/v1/users/{user_id}`), never the raw path.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.errors import error_response
from service.ops import metrics
from service.ops.labels import ErrorCode, Method, Route

log = logging.getLogger(__name__)

_ROUTES = {route.value: route for route in Route}
_METHODS = {method.value: method for method in Method}


def route_label(scope: Scope) -> Route:
    template = getattr(scope.get("route"), "path", None)
    return _ROUTES.get(template, Route.OTHER) if template else Route.OTHER


class RequestMetricsMiddleware:
    """Times every HTTP request; answers 500 internal_error for an exception nobody handled."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        response_started = False

        async def send_tracking(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception:  # a bug: log it with its traceback, answer a clean 500
            log.exception("unhandled error in %s %s", scope.get("method"), scope.get("path"))
            if response_started:
                raise
            response = error_response(ErrorCode.INTERNAL_ERROR,
                                      "internal error; it has been logged")
            await response(scope, receive, send)
        finally:
            method: Any = _METHODS.get(scope.get("method", ""), Method.OTHER)
            metrics.REQUEST_LATENCY_SECONDS.labels(route_label(scope).value, method.value).observe(
                time.perf_counter() - started)
