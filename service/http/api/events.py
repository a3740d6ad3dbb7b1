"""POST /v1/events and POST /v1/events/batch: apply interactions, answer recommendations.

The answers are serialised with orjson straight from the store's results (`JsonBytes`), not built
as pydantic models and validated again by FastAPI: EventOut and BatchOut remain the documented
schema (response_model), and tests/service/test_api.py checks the bodies against them.
"""
from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.http.api.deps import (
    CoalescerDep,
    RecommendationParamsDep,
    SettingsDep,
    StoreDep,
    check_id,
)
from service.http.coalescer import CoalescerClosed, EventCoalescer
from service.http.errors import ERROR_RESPONSES, ApiError
from service.http.schemas import BatchIn, BatchOut, EventIn, EventOut
from service.ops.labels import ErrorCode, Route
from service.ops.settings import Settings
from service.state.domain import ApplyResult, Event, UnknownItemError
from service.state.store import StateStore

router = APIRouter(tags=["events"])

# Always reported, 0 when a stage did not run (e.g. a repeated event id never reaches the model).
MAIN_STAGES = ("state_read", "model", "state_write")


def latency_ms(timings: dict[str, float], total_seconds: float,
               queue_seconds: float | None = None) -> dict[str, float]:
    """Stage seconds -> milliseconds, with `total` measured by the route. For a coalesced event
    the stages are those of the whole batch that carried it, and `queue` is the time it waited
    for that batch to be dispatched."""
    out = {stage: 0.0 for stage in MAIN_STAGES}
    out.update({stage: seconds * 1e3 for stage, seconds in timings.items() if stage != "total"})
    if queue_seconds is not None:
        out["queue"] = queue_seconds * 1e3
    out["total"] = total_seconds * 1e3
    return {stage: round(ms, 4) for stage, ms in out.items()}


class JsonBytes(Response):
    """A JSON body already serialised (FastAPI passes a Response through without validation)."""

    media_type = "application/json"


def event_out(result: ApplyResult, latency: dict[str, float]) -> dict[str, Any]:
    """The EventOut body as plain data, None fields left out (response_model_exclude_none)."""
    event = result.event
    out: dict[str, Any] = {"user_id": event.user_id, "item_id": event.item_id}
    if event.event_id is not None:
        out["event_id"] = event.event_id
    out.update(applied=result.applied, position=result.position, chunk_time=result.chunk_time,
               model_version=result.model_version,
               recommendations=[{"item_id": r.item_id, "score": r.score} if r.title is None
                                else {"item_id": r.item_id, "score": r.score, "title": r.title}
                                for r in result.recommendations],
               latency_ms=latency)
    return out


def to_event(body: EventIn, settings: Settings, prefix: str = "") -> Event:
    for name in ("user_id", "item_id", "event_id"):
        check_id(getattr(body, name), prefix + name, settings)
    if body.event_id is None and settings.require_event_id:
        raise ApiError(ErrorCode.EVENT_ID_REQUIRED, f"{prefix}event_id: required, so that a retry"
                       " is recognised and applied once (GET /v1/users/{user_id}/events/{event_id}"
                       " tells whether it was applied)", prefix + "event_id")
    return Event(body.user_id, body.item_id, body.event_id, body.timestamp)


def check_answer_size(n: int, events: int, settings: Settings) -> None:
    """n recommendations per event: at most settings.max_answer_items in one answer."""
    if n * events > settings.max_answer_items:
        raise ApiError(ErrorCode.ANSWER_TOO_LARGE, f"n: {n} recommendations x {events} events is"
                       f" over {settings.max_answer_items} per answer; lower n or split the batch",
                       "n")


@router.post(Route.EVENTS.value, response_model=EventOut, response_model_exclude_none=True,
             responses=ERROR_RESPONSES, summary="Apply one interaction")
async def post_event(body: EventIn, params: RecommendationParamsDep, store: StoreDep,
                     coalescer: CoalescerDep, settings: SettingsDep, request: Request) -> JsonBytes:
    """Applies the event to the user's state (exactly once per event_id) and answers the top-n
    next items after it. Concurrent requests are applied together in one batch (settings.coalesce);
    `latency_ms.queue` is the wait for that batch, the stage figures are the batch's."""
    started = time.perf_counter()
    event = checked_event(body, params.n, store, coalescer, settings)
    return JsonBytes(await apply_event(request.app.state, event, params.n, params.exclude_seen,
                                       started))


def checked_event(body: EventIn, n: int, store: StateStore, coalescer: EventCoalescer | None,
                  settings: Settings) -> Event:
    """The checks of POST /v1/events that come before anything is applied (ApiError)."""
    check_answer_size(n, 1, settings)
    event = to_event(body, settings)
    if coalescer is not None and event.item_id not in store.engine.vocab:
        raise unknown_item(event.item_id)  # checked here so that it fails no other request
    return event


async def apply_event(state: Any, event: Event, n: int, exclude_seen: bool,
                      started: float) -> bytes:
    """Apply one checked event with the app's current store or coalescer (`state`: app.state)
    and answer the EventOut body as JSON bytes. Raises the store's errors (StateConflictError,
    StateStoreUnavailable, UserStateCorrupt) and ApiError; the app's error handlers answer them.
    Shared by the FastAPI route and the fast path (service/http/fast_events.py)."""
    store, coalescer = state.store, state.coalescer
    if store is None:
        raise ApiError(ErrorCode.NOT_READY, "the service is starting or stopping")
    if coalescer is None:
        try:
            result = await store.apply(event, n=n, exclude_seen=exclude_seen)
        except UnknownItemError as err:
            raise unknown_item(err.item_id) from None
        return orjson.dumps(event_out(result, latency_ms(result.timings,
                                                         time.perf_counter() - started)))
    try:
        outcome = await coalescer.submit(event, n=n, exclude_seen=exclude_seen)
    except CoalescerClosed:
        current = state.coalescer  # a model reload replaced the coalescer meanwhile
        if current is None or current is coalescer:
            raise ApiError(ErrorCode.NOT_READY, "the service is starting or stopping") from None
        outcome = await current.submit(event, n=n, exclude_seen=exclude_seen)
    return orjson.dumps(event_out(outcome.result, latency_ms(
        outcome.result.timings, time.perf_counter() - started, outcome.queue_seconds)))


def unknown_item(item_id: str) -> ApiError:
    return ApiError(ErrorCode.UNKNOWN_ITEM, f"item_id: unknown item {item_id!r}, not in the"
                    " model's vocabulary; nothing was applied", "item_id")


@router.post(Route.EVENTS_BATCH.value, response_model=BatchOut, response_model_exclude_none=True,
             responses=ERROR_RESPONSES, summary="Apply a batch of interactions")
async def post_events_batch(body: BatchIn, params: RecommendationParamsDep, store: StoreDep,
                            settings: SettingsDep) -> JsonBytes:
    """One result per event, in order. One user's events are applied in the order given; the
    events of different users are stepped together. Nothing is applied if any event is invalid."""
    started = time.perf_counter()
    if len(body.events) > settings.max_batch_size:
        raise ApiError(ErrorCode.BATCH_TOO_LARGE, f"events: {len(body.events)} events, at most"
                       f" {settings.max_batch_size} per batch", "events")
    check_answer_size(params.n, len(body.events), settings)
    events = [to_event(e, settings, f"events[{i}].") for i, e in enumerate(body.events)]
    try:
        results = await store.apply_batch(events, n=params.n, exclude_seen=params.exclude_seen)
    except UnknownItemError as err:
        raise ApiError(ErrorCode.UNKNOWN_ITEM, f"events[{err.index}].item_id: unknown item"
                       f" {err.item_id!r}; nothing was applied",
                       f"events[{err.index}].item_id") from None
    latency = latency_ms(results[0].timings if results else {}, time.perf_counter() - started)
    return JsonBytes(orjson.dumps({"results": [event_out(r, latency) for r in results],
                                   "latency_ms": latency}))
