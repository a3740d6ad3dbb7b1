"""The closed sets of values that the service reports: metric label values and error codes.

Metric labels only ever take these values (never a user id or a raw path), so the number of
Prometheus series stays fixed.
"""
from __future__ import annotations

from enum import Enum


class Route(str, Enum):
    """Route templates of the HTTP API; the routers register exactly these paths."""

    EVENTS = "/v1/events"
    EVENTS_BATCH = "/v1/events/batch"
    # `:path` lets a user id hold a "/" (sent as %2F, which ASGI servers decode before routing)
    USER_RECOMMENDATIONS = "/v1/users/{user_id:path}/recommendations"
    USER = "/v1/users/{user_id:path}"
    MODEL = "/v1/model"
    HEALTHZ = "/healthz"
    READYZ = "/readyz"
    METRICS = "/metrics"
    OTHER = "other"  # /docs, /openapi.json and paths that match no route


class Method(str, Enum):
    GET = "GET"
    POST = "POST"
    DELETE = "DELETE"
    OTHER = "OTHER"


# The method(s) each route answers; these pairs are the request-latency series created up front.
ROUTE_METHODS: dict[Route, tuple[Method, ...]] = {
    Route.EVENTS: (Method.POST,), Route.EVENTS_BATCH: (Method.POST,),
    Route.USER_RECOMMENDATIONS: (Method.GET,), Route.USER: (Method.DELETE,),
    Route.MODEL: (Method.GET,), Route.HEALTHZ: (Method.GET,), Route.READYZ: (Method.GET,),
    Route.METRICS: (Method.GET,), Route.OTHER: (Method.GET,),
}


class Stage(str, Enum):
    """Stages of handling events, timed separately."""

    STATE_READ = "state_read"  # the pipelined Redis read
    REBUILD = "rebuild"  # replaying stored items into a state of the current model version
    MODEL = "model"  # the whole engine call: decode, controller, memory, output, encode
    STATE_DECODE = "state_decode"  # blob -> arrays (engine)
    CONTROLLER = "controller"  # the controller pass of every event (engine)
    MEMORY = "memory"  # the DNC write/read at chunk times (engine)
    OUTPUT = "output"  # the output layer: item scores (engine)
    STATE_ENCODE = "state_encode"  # arrays -> blob (engine)
    TOPN = "topn"  # ranking the scores
    STATE_WRITE = "state_write"  # the compare-and-set round trip


class EventOutcome(str, Enum):
    APPLIED = "applied"
    DUPLICATE = "duplicate"  # an event id seen before: a no-op


class CacheResult(str, Enum):
    """What the per-process state cache (service/state/cache.py) did for one user of an apply."""

    HIT = "hit"  # went straight to the compare-and-set, which committed
    STALE = "stale"  # went straight to the compare-and-set, which refused: read and stepped again
    MISS = "miss"  # not cached (or the entry lacked the recent items): read from Redis


class RebuildReason(str, Enum):
    VERSION_MISMATCH = "version_mismatch"  # stored by another model version
    CORRUPT_STATE = "corrupt_state"  # the blob does not decode


class ErrorCode(str, Enum):
    """The `error.code` of every non-2xx answer."""

    UNKNOWN_ITEM = "unknown_item"
    EMPTY_ID = "empty_id"
    ID_TOO_LONG = "id_too_long"
    N_OUT_OF_RANGE = "n_out_of_range"
    MALFORMED_JSON = "malformed_json"
    BATCH_TOO_LARGE = "batch_too_large"
    VALIDATION_ERROR = "validation_error"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    STATE_CONFLICT = "state_conflict"
    STATE_STORE_UNAVAILABLE = "state_store_unavailable"
    NOT_READY = "not_ready"
    INTERNAL_ERROR = "internal_error"


class DeadLetterReason(str, Enum):
    """Why the stream worker moved an entry to the dead-letter stream."""

    MALFORMED = "malformed"  # a field missing, empty, too long, not UTF-8, or a bad timestamp
    UNKNOWN_ITEM = "unknown_item"  # the item is not in the model's vocabulary
