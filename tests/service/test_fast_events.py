"""The fast path of POST /v1/events (service/http/fast_events.py): it answers the valid requests
itself, exactly as the FastAPI route would, and hands every other request, body included, to
FastAPI."""
from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from service.http.fast_events import FastEventsPath, parse_query
from tests.service.helpers import metric, serving

pytestmark = [pytest.mark.anyio, pytest.mark.redis_modes("system")]

VALID = [
    ("", {"user_id": "u1", "item_id": "101", "event_id": "e1", "timestamp": 8.8e8}),
    ("?n=3", {"user_id": "u1", "item_id": "102", "event_id": "e2"}),
    ("?exclude_seen=true&n=5", {"user_id": "u1", "item_id": "103", "event_id": "e3"}),
    ("?n=0", {"user_id": "u1", "item_id": "103", "event_id": "e3"}),  # a repeat: applied false
    ("?n=4&exclude_seen=0", {"user_id": 7, "item_id": 104, "event_id": "e4"}),
]
# (query, body bytes, content type): what the fast path must leave to FastAPI
INVALID = [
    ("", b'{"user_id": "u2", "item_id": "101"', "application/json"),  # malformed JSON
    ("", b'[1, 2]', "application/json"),
    ("", b'{"user_id": "u2", "event_id": "x"}', "application/json"),  # item_id missing
    ("", b'{"user_id": "u2", "item_id": "101", "event_id": "x", "extra": 1}', "application/json"),
    ("", b'{"user_id": " ", "item_id": "101", "event_id": "x"}', "application/json"),
    ("", b'{"user_id": "a/b", "item_id": "101", "event_id": "x"}', "application/json"),
    ("", b'{"user_id": "u2", "item_id": "999", "event_id": "x"}', "application/json"),
    ("", b'{"user_id": "u2", "item_id": "101"}', "application/json"),  # event id required
    ("", b'{"user_id": "u2", "item_id": "101", "event_id": "x", "timestamp": "5"}',
     "application/json"),
    ("", b'{"user_id": "u2", "item_id": "101", "event_id": "x", "timestamp": NaN}',
     "application/json"),
    ("?n=101", b'{"user_id": "u2", "item_id": "101", "event_id": "x"}', "application/json"),
    ("?n=-1", b'{"user_id": "u2", "item_id": "101", "event_id": "x"}', "application/json"),
    ("?n=2&n=3", b'{"user_id": "u2", "item_id": "101", "event_id": "y"}', "application/json"),
    ("?exclude_seen=maybe", b'{"user_id": "u2", "item_id": "101", "event_id": "x"}',
     "application/json"),
    ("?exclude_seen=yes", b'{"user_id": "u2", "item_id": "101", "event_id": "z"}',
     "application/json"),
    ("", b'{"user_id": "u2", "item_id": "101", "event_id": "w"}', "text/plain"),
    ("", b'', "application/json"),
]


def test_query_strings_the_fast_path_takes() -> None:
    assert parse_query(b"") == (10, False)
    assert parse_query(b"n=7") == (7, False)
    assert parse_query(b"exclude_seen=true&n=0") == (0, True)
    assert parse_query(b"exclude_seen=0") == (10, False)
    for refused in (b"n=", b"n=-1", b"n=1&n=2", b"n=1e3", b"exclude_seen=yes", b"x=1", b"n",
                    b"n=1234567", b"n=1&", b"n%3D1"):
        assert parse_query(refused) is None, refused


async def test_valid_requests_never_reach_fastapi_and_the_rest_arrive_whole(make_settings,
                                                                             engine):
    """The fast path in front of a recorder instead of FastAPI: valid requests are answered
    without it, every invalid one reaches it with its body unchanged."""
    seen: list[tuple[str, bytes]] = []

    async def recorder(scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.append((scope["query_string"].decode(), body))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with serving(make_settings(require_event_id=True), engine) as client:
        probe = FastEventsPath(recorder, api=client.app)
        transport = httpx.ASGITransport(app=probe)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as fast:
            for query, body in VALID:
                response = await fast.post("/v1/events" + query, json=body)
                assert response.status_code == 200, (query, body, response.text)
            assert seen == []
            for query, raw, content_type in INVALID:
                response = await fast.post("/v1/events" + query, content=raw,
                                           headers={"content-type": content_type})
                assert response.status_code == 299
                assert seen[-1] == (query.lstrip("?"), raw)
            other = await fast.get("/v1/model")
    assert other.status_code == 299 and len(seen) == len(INVALID) + 1


def _comparable(response: httpx.Response) -> tuple[int, Any]:
    body = response.json()
    if response.status_code == 200:
        body.pop("latency_ms")
        body["recommendations"] = [(r["item_id"], round(r["score"], 5))
                                   for r in body["recommendations"]]
    return response.status_code, body


async def test_the_fast_path_answers_exactly_as_the_fastapi_route(make_settings, engine,
                                                                  key_prefix):
    """The same requests to an app with the fast path and to one without it (own key prefixes):
    the same status, body (latency aside) and route label, valid and invalid requests alike."""
    label = dict(route="/v1/events", method="POST")
    answers: list[list[tuple[int, Any]]] = []
    async with AsyncExitStack() as stack:
        for fast in (True, False):
            settings = make_settings(require_event_id=True, fast_events_path=fast,
                                     key_prefix=f"{key_prefix}-{fast}")
            client = await stack.enter_async_context(serving(settings, engine))
            before = metric("cmnrec_request_latency_seconds_count", **label)
            mine = []
            for query, body in VALID:
                mine.append(_comparable(await client.post("/v1/events" + query, json=body)))
            for query, raw, content_type in INVALID:
                mine.append(_comparable(await client.post(
                    "/v1/events" + query, content=raw, headers={"content-type": content_type})))
            answers.append(mine)
            assert metric("cmnrec_request_latency_seconds_count", **label) - before == \
                len(VALID) + len(INVALID)
    fast_answers, route_answers = answers
    assert all(status == 200 for status, _ in fast_answers[:len(VALID)])
    # FastAPI accepts two of the refused query strings (the last n wins; "yes" is true)
    assert sum(status >= 400 for status, _ in fast_answers[len(VALID):]) == len(INVALID) - 2
    assert fast_answers == route_answers
    assert fast_answers[3][1]["applied"] is False and fast_answers[0][1]["position"] == 1
