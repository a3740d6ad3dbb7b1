"""The fast path of POST /v1/events: the same answer as the FastAPI route, without FastAPI's
routing, dependency solving and request parsing (a pure ASGI middleware, innermost).

Why: on a quiet machine a request cost about 1.16 ms of service CPU at 800 req/s, of which
FastAPI/pydantic took 0.29 ms and the HTTP stack 0.27 ms, more than the model (onnxruntime 0.13 ms;
bench/REPORT_NOTES.md section 9). This path reads the body, parses it with orjson, validates it
with the route's own pydantic model (`EventIn`, the same python-mode validation FastAPI runs), and
calls the route's own code (`checked_event`, `apply_event` in api/events.py).

It only ever answers the *valid* requests. Anything it is not sure of goes, with the body it has
read, to the FastAPI app behind it, which answers exactly as it always did: a query string other
than `n` and `exclude_seen` with plain values, a Content-Type other than JSON, a body orjson or
EventIn refuses, any check of the route failing (ApiError before anything is applied), a service
not ready. Errors after the event was handed to the store (conflict, Redis unavailable, corrupt
state) are answered by the app's own exception handlers. The middlewares outside it (metrics,
auth, body limit) run as before; the request is labelled with the route's template.

settings.fast_events_path (CMNREC_FAST_EVENTS_PATH) turns it off.
"""
from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.http.api import events
from service.http.api.events import JsonBytes, apply_event, checked_event
from service.http.errors import ApiError
from service.http.schemas import EventIn
from service.ops.labels import Route

_TRUE = {b"true": True, b"1": True, b"false": False, b"0": False}
_MAX_N_DIGITS = 6


class FastEventsPath:
    """Serves POST /v1/events directly when the request is plainly valid; see the module docstring.

    api: the FastAPI app (its state, exception handlers and the route object for the metrics label).
    """

    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self._route: Any = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["method"] != "POST"
                or scope["path"] != Route.EVENTS.value):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        query = parse_query(scope.get("query_string", b""))
        if query is None or not json_content(scope):
            await self.app(scope, receive, send)
            return
        body, disconnected = await read_body(receive)
        if disconnected:
            return  # the client left before sending the whole body: nothing to apply or answer
        replay = replaying(body, receive)
        state = self.api.state
        store, settings = state.store, state.settings
        n, exclude_seen = query
        if store is None or n > settings.max_n:
            await self.app(scope, replay, send)
            return
        try:
            event = checked_event(EventIn.model_validate(orjson.loads(body)), n, store,
                                  state.coalescer, settings)
        except (orjson.JSONDecodeError, ValidationError, ApiError):
            await self.app(scope, replay, send)  # FastAPI answers it, exactly as before
            return
        scope["route"] = self.route()  # the metrics label: the route's template
        try:
            answer: Response = JsonBytes(await apply_event(state, event, n, exclude_seen, started))
        except Exception as error:
            handler = self.handler(error)
            if handler is None:
                raise  # a bug: the request middleware logs it and answers 500
            answer = await handler(Request(scope, replay), error)
        await answer(scope, replay, send)

    def route(self) -> Any:
        """The route object FastAPI would have put in the scope (the metrics label reads its
        template)."""
        if self._route is None:
            self._route = next(r for r in events.router.routes if getattr(r, "path", None)
                               == Route.EVENTS.value and "POST" in getattr(r, "methods", ()))
        return self._route

    def handler(self, error: Exception) -> Any:
        """The app's exception handler for this error (the first of its classes that has one)."""
        handlers = self.api.exception_handlers
        return next((handlers[cls] for cls in type(error).__mro__ if cls in handlers), None)


def parse_query(raw: bytes) -> tuple[int, bool] | None:
    """(n, exclude_seen) from `n=<digits>&exclude_seen=<true|false|1|0>` (each at most once, any
    order, both optional: n=10, exclude_seen=false); None for anything else."""
    n, exclude_seen, seen = 10, False, set()
    if not raw:
        return n, exclude_seen
    for part in raw.split(b"&"):
        name, sep, value = part.partition(b"=")
        if not sep or name in seen:
            return None
        seen.add(name)
        if name == b"n" and value.isdigit() and len(value) <= _MAX_N_DIGITS:
            n = int(value)
        elif name == b"exclude_seen" and value in _TRUE:
            exclude_seen = _TRUE[value]
        else:
            return None
    return n, exclude_seen


def json_content(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"application/json"
    return False


async def read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole request body (the body limit outside counts it), and whether the client left."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), True
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), False


def replaying(body: bytes, receive: Receive) -> Receive:
    """A receive that gives `body` once, then what the client sends (a disconnect)."""
    sent = False

    async def receive_again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again
