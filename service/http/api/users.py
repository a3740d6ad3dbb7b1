"""GET /v1/users/{user_id}/recommendations, GET /v1/users/{user_id}/events/{event_id} and
DELETE /v1/users/{user_id}."""
from __future__ import annotations

import time

from fastapi import APIRouter

from typing import Annotated

from fastapi import Path

from service.http.api.deps import (
    RecommendationParamsDep,
    SettingsDep,
    StoreDep,
    UserIdDep,
    check_id,
)
from service.http.api.events import latency_ms
from service.http.errors import ERROR_RESPONSES
from service.http.schemas import (
    DeletedOut,
    EventStatusOut,
    RecommendationOut,
    UserRecommendationsOut,
)
from service.ops.labels import Route

router = APIRouter(tags=["users"])


@router.get(Route.USER_RECOMMENDATIONS.value, response_model=UserRecommendationsOut,
            response_model_exclude_none=True, responses=ERROR_RESPONSES,
            summary="Recommendations from the stored state")
async def get_recommendations(user_id: UserIdDep, params: RecommendationParamsDep,
                              store: StoreDep) -> UserRecommendationsOut:
    """Top-n next items from the user's stored state, which is not changed (except that a state
    of another model version is rebuilt from the user's recent items and saved); the most popular
    items for a user with no stored state."""
    started = time.perf_counter()
    result = await store.recommend(user_id, n=params.n, exclude_seen=params.exclude_seen)
    return UserRecommendationsOut(
        user_id=user_id, source="model" if result.known else "popularity",
        position=result.position, model_version=result.model_version,
        recommendations=[RecommendationOut(item_id=r.item_id, score=r.score, title=r.title)
                         for r in result.recommendations],
        latency_ms=latency_ms(result.timings, time.perf_counter() - started))


@router.delete(Route.USER.value, response_model=DeletedOut, responses=ERROR_RESPONSES,
               summary="Forget a user")
async def delete_user(user_id: UserIdDep, store: StoreDep) -> DeletedOut:
    """Removes the user's state, recent items and event ids."""
    return DeletedOut(user_id=user_id, deleted=await store.delete_user(user_id))


@router.get(Route.USER_EVENT.value, response_model=EventStatusOut, responses=ERROR_RESPONSES,
            summary="Whether an event id was applied")
async def get_event_status(
    user_id: UserIdDep, store: StoreDep, settings: SettingsDep,
    event_id: Annotated[str, Path(description="the event id the client sent")],
) -> EventStatusOut:
    """After a timeout or a 503 on POST /v1/events, tells whether the event was applied before
    retrying (a retry with the same event id is a no-op anyway while the id is in the window)."""
    check_id(event_id, "event_id", settings)
    applied = await store.repo.event_applied(user_id, event_id)
    return EventStatusOut(user_id=user_id, event_id=event_id, applied=applied,
                          window=settings.event_id_window)
