"""Dependencies shared by the routes, as Annotated aliases so route signatures read like prose.

The objects themselves (settings, engine, store) live on `app.state`, put there by the lifespan.
Every dependency is `async def` although none awaits anything: FastAPI runs a plain `def` dependency
in a thread pool, and those thread hand-offs cost more CPU than the whole model step
(bench/REPORT.md: about 0.5 ms per request on this machine).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Path, Query, Request

from model.engine import Engine
from service.http.coalescer import EventCoalescer
from service.http.errors import ApiError
from service.ops.labels import ErrorCode
from service.ops.settings import Settings
from service.state.domain import InvalidEvent, validate_id
from service.state.store import StateStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> StateStore:
    store = getattr(request.app.state, "store", None)
    if store is None:
        raise ApiError(ErrorCode.NOT_READY, "the service is starting or stopping")
    return store


async def get_coalescer(request: Request) -> EventCoalescer | None:
    """The running EventCoalescer, or None when settings.coalesce is off."""
    return getattr(request.app.state, "coalescer", None)


async def get_engine(request: Request) -> Engine:
    return (await get_store(request)).engine


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[StateStore, Depends(get_store)]
EngineDep = Annotated[Engine, Depends(get_engine)]
CoalescerDep = Annotated[EventCoalescer | None, Depends(get_coalescer)]


@dataclass(frozen=True)
class RecommendationParams:
    n: int
    exclude_seen: bool


async def recommendation_params(
    settings: SettingsDep,
    n: Annotated[int, Query(ge=0, description="how many recommendations; 0 = none")] = 10,
    exclude_seen: Annotated[bool, Query(description="leave out the user's recent items")] = False,
) -> RecommendationParams:
    if n > settings.max_n:
        raise ApiError(ErrorCode.N_OUT_OF_RANGE, f"n: must be between 0 and {settings.max_n}, got {n}",
                       "n")
    return RecommendationParams(n, exclude_seen)


RecommendationParamsDep = Annotated[RecommendationParams, Depends(recommendation_params)]


def check_id(value: str | None, field: str, settings: Settings) -> None:
    """The service's one id rule (validate_id) with the configured length limit, as an ApiError."""
    if value is None:
        return
    try:
        validate_id(value, field, settings.max_id_length)
    except InvalidEvent as error:
        code = {"empty_id": ErrorCode.EMPTY_ID, "id_too_long": ErrorCode.ID_TOO_LONG,
                "invalid_id": ErrorCode.INVALID_ID}.get(error.code, ErrorCode.VALIDATION_ERROR)
        raise ApiError(code, str(error), field) from None


async def user_id_path(
    settings: SettingsDep,
    user_id: Annotated[str, Path(description="the user's external id")],
) -> str:
    check_id(user_id, "user_id", settings)
    return user_id


UserIdDep = Annotated[str, Depends(user_id_path)]
