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
    # ids hold no "/" (service/state/domain.py validate_id), so one path segment is one id
    USER_RECOMMENDATIONS = "/v1/users/{user_id}/recommendations"
    USER = "/v1/users/{user_id}"
    USER_EVENT = "/v1/users/{user_id}/events/{event_id}"
    MODEL = "/v1/model"
    MODEL_RELOAD = "/v1/admin/model/reload"
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
    Route.USER_EVENT: (Method.GET,), Route.MODEL: (Method.GET,),
    Route.MODEL_RELOAD: (Method.POST,), Route.HEALTHZ: (Method.GET,), Route.READYZ: (Method.GET,),
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
    INVALID_ID = "invalid_id"  # a control character, lone surrogate, '{', '}' or '/'
    EVENT_ID_REQUIRED = "event_id_required"  # settings.require_event_id and none given
    N_OUT_OF_RANGE = "n_out_of_range"
    MALFORMED_JSON = "malformed_json"
    BATCH_TOO_LARGE = "batch_too_large"
    BODY_TOO_LARGE = "body_too_large"  # more bytes than settings.max_body_bytes (not parsed)
    ANSWER_TOO_LARGE = "answer_too_large"  # n x events over settings.max_answer_items
    VALIDATION_ERROR = "validation_error"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    STATE_CONFLICT = "state_conflict"
    STATE_STORE_UNAVAILABLE = "state_store_unavailable"
    STATE_STORE_READ_ONLY = "state_store_read_only"  # Redis is a replica (failover under way)
    STATE_STORE_FULL = "state_store_full"  # Redis reached maxmemory (noeviction)
    STATE_CORRUPT = "state_corrupt"  # a user's keys hold the wrong Redis type
    UNAUTHORIZED = "unauthorized"  # no API key, or an unknown one
    FORBIDDEN = "forbidden"  # the key lacks the route's scope
    RATE_LIMITED = "rate_limited"  # the key's request rate is over its limit
    NOT_READY = "not_ready"
    INTERNAL_ERROR = "internal_error"


class DeadLetterReason(str, Enum):
    """Why the stream worker moved an entry to the dead-letter stream."""

    MALFORMED = "malformed"  # a field missing, empty, too long, not UTF-8, or a bad timestamp
    UNKNOWN_ITEM = "unknown_item"  # the item is not in the model's vocabulary
    WRONG_PARTITION = "wrong_partition"  # the user's partition is not the stream it was read from
    STATE_CORRUPT = "state_corrupt"  # the user's keys hold the wrong Redis type
