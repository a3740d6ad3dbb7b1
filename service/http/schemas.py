"""The HTTP API's request and response bodies (pydantic).

Limits that come from Settings (longest id, largest n, largest batch) are checked by the routes, so
they can change without touching these classes; the fixed rules (ids are non-blank strings, numbers
accepted as ids, finite timestamps, no unknown fields) live here.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError

from service.state.domain import InvalidEvent, validate_id


def _id_string(value: Any) -> Any:
    """The service's one id rule (service/state/domain.py validate_id); the length limit is a
    setting, checked by the routes with the same function."""
    if not isinstance(value, (str, int, bytes)) or isinstance(value, bool):
        return value  # pydantic's own str validation answers the type error
    try:
        return validate_id(value, "")
    except InvalidEvent as error:
        raise PydanticCustomError(error.code, error.message) from None


Id = Annotated[str, BeforeValidator(_id_string), Field(min_length=1)]


class EventIn(BaseModel):
    """One interaction: user `user_id` consumed item `item_id`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"user_id": "196", "item_id": "242", "event_id": "196-242-881250949",
                      "timestamp": 881250949.0}]})

    user_id: Id
    item_id: Id = Field(description="external item id, as in the model's vocabulary")
    event_id: Id | None = Field(
        None, description="unique per user; repeating it is a no-op (applied=false). Required"
                          " unless the service runs with require_event_id=false")
    timestamp: float | None = Field(None, allow_inf_nan=False, strict=True,
                                    description="seconds since the epoch (informative); a JSON"
                                                " number, never true/false or a string")


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[EventIn] = Field(description="applied in order per user; up to the configured"
                                              " max_batch_size")


class RecommendationOut(BaseModel):
    item_id: str
    score: float
    title: str | None = Field(None, description="when the data set has titles")


class EventOut(BaseModel):
    user_id: str
    item_id: str
    event_id: str | None = None
    applied: bool = Field(description="false for a repeated event_id: nothing changed")
    position: int = Field(description="events absorbed by the user's state after this event")
    chunk_time: bool = Field(description="the event fell on a chunk time (memory written/read)")
    model_version: str
    recommendations: list[RecommendationOut]
    latency_ms: dict[str, float] = Field(
        description="total, state_read, model, state_write and the finer stages; for a batch, "
                    "the figures of the whole batch")


class BatchOut(BaseModel):
    results: list[EventOut]
    latency_ms: dict[str, float]


class UserRecommendationsOut(BaseModel):
    user_id: str
    source: Literal["model", "popularity"] = Field(
        description="popularity when the user has no stored state")
    position: int
    model_version: str
    recommendations: list[RecommendationOut]
    latency_ms: dict[str, float]


class EventStatusOut(BaseModel):
    user_id: str
    event_id: str
    applied: bool = Field(description="the event id is among the user's most recent `window` event"
                                      " ids: it was applied (exactly once). false: not applied, or"
                                      " older than the window")
    window: int = Field(description="event ids remembered per user (settings.event_id_window)")


class ReloadOut(BaseModel):
    previous_version: str
    model_version: str


class DeletedOut(BaseModel):
    user_id: str
    deleted: bool = Field(description="false when nothing was stored for the user")


class ModelOut(BaseModel):
    model_version: str
    model: str
    rule: str
    block_len: int
    slots: int
    chunk_times: list[int]
    num_items: int = Field(description="catalogue size including the padding id 0")
    state_bytes: int = Field(description="size of one user's state blob")
    config: dict[str, Any]
    source: dict[str, Any]


class StatusOut(BaseModel):
    status: str
    checks: dict[str, bool] = Field(default_factory=dict)


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason, e.g. unknown_item")
    message: str
    field: str | None = Field(None, description="the offending field, e.g. events[3].item_id")


class ErrorOut(BaseModel):
    error: ErrorDetail
