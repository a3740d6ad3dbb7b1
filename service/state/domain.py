"""The serving domain: one interaction (`Event`), what applying it answers, and the errors.

Both sides build on these: the HTTP API turns its request bodies into `Event`s, the stream worker
turns stream entries into `Event`s, and `validate_id` is the one rule for every id either side
accepts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


class InvalidEvent(ValueError):
    """An id or field that cannot be accepted; `code` says why, `field` names the culprit.

    code: empty_id | id_too_long | invalid_id | malformed.
    """

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.code, self.field, self.message = code, field, message


# Characters no id may hold: `{` and `}` would move the Redis Cluster hash tag of the user's keys
# (`PREFIX:{<user>}:state`), so one user's keys would land in different slots; `/` would make
# `/v1/users/{user_id}/...` ambiguous (DELETE /v1/users/x/recommendations: user "x/recommendations"
# or the recommendations of "x"?), and ASGI servers decode %2F before routing.
FORBIDDEN_ID_CHARACTERS = frozenset("{}/")
# Any character an id may not hold: FORBIDDEN_ID_CHARACTERS, control characters (C0, DEL, C1) and
# surrogate code points. One regular-expression search in C instead of a Python loop over the
# characters (three ids per event on the stream worker's hot path).
_BAD_ID_CHARACTER = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff"
                               + re.escape("".join(sorted(FORBIDDEN_ID_CHARACTERS))) + "]")


def validate_id(value: Any, field: str, max_length: int | None = None) -> str:
    """The one id rule of the service (HTTP bodies, URL paths and stream entries alike).

    An id is a non-blank string of at most `max_length` characters that encodes as UTF-8 (no lone
    surrogate), holds no control character (Unicode category Cc: newline, tab, NUL, DEL...) and
    none of `{`, `}`, `/`. Integers are accepted as ids (MovieLens ids are numbers in JSON); bytes must
    decode as UTF-8. Whatever passes can be written, read and deleted over HTTP and the streams.
    Raises InvalidEvent naming `field`.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    elif isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidEvent("malformed", field, "is not valid UTF-8") from None
    if not isinstance(value, str):
        raise InvalidEvent("malformed", field, f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidEvent("empty_id", field, "must be a non-empty string")
    if max_length is not None and len(value) > max_length:
        raise InvalidEvent("id_too_long", field,
                           f"{len(value)} characters, at most {max_length} allowed")
    bad = _BAD_ID_CHARACTER.search(value)
    if bad is not None:
        raise InvalidEvent("invalid_id", field,
                           f"character {bad.group()!r} at position {bad.start()} is not allowed in"
                           " an id (no control characters, lone surrogates, '{', '}' or '/')")
    return value


@dataclass(frozen=True)
class Event:
    """One interaction: the user consumed the item. Ids are external (the vocabulary's strings)."""

    user_id: str
    item_id: str
    event_id: str | None = None  # unique per user; a repeated one is a no-op
    timestamp: float | None = None  # seconds since the epoch, informative only


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float
    title: str | None = None


@dataclass
class ApplyResult:
    """What happened to one event."""

    event: Event
    applied: bool  # False for a repeated event id (nothing changed)
    position: int  # events absorbed by the user's state after this event
    chunk_time: bool  # the event fell on a chunk time (memory written and read)
    model_version: str
    recommendations: list[Recommendation]  # top-n after this event (empty when n = 0)
    timings: dict[str, float]  # seconds per Stage value for the whole apply call
    rebuilt: bool = False  # the stored state was rebuilt for the current model first


@dataclass
class UserRecommendations:
    user_id: str
    known: bool  # False: no stored state, popularity answered
    position: int
    model_version: str
    recommendations: list[Recommendation]
    timings: dict[str, float]


@dataclass
class UserSnapshot:
    """Everything stored for one user (for tests, tooling and offline replays)."""

    state: bytes | None
    model_version: str | None
    position: int | None
    recent_items: list[str]
    event_ids: list[str]
    ttl_seconds: int  # remaining TTL of the state key: -1 none, -2 missing


class UnknownItemError(ValueError):
    """An event's item is not in the model's vocabulary; nothing was applied."""

    def __init__(self, index: int, item_id: str) -> None:
        super().__init__(f"events[{index}].item_id: unknown item {item_id!r}")
        self.index, self.item_id = index, item_id


class StateStoreUnavailable(RuntimeError):
    """Redis cannot serve now. `reason`: unavailable (down, unreachable, loading, busy...),
    read_only (a replica, e.g. during a failover) or full (maxmemory reached under noeviction)."""

    def __init__(self, message: str, reason: str = "unavailable") -> None:
        super().__init__(message)
        self.reason = reason


class UserStateCorrupt(RuntimeError):
    """A user's keys hold values of the wrong Redis type (e.g. a string where a list belongs).

    Nothing was applied for these users; deleting the user (DELETE /v1/users/{id}) resets them.
    """

    def __init__(self, user_ids: list[str]) -> None:
        super().__init__(f"the stored keys of user(s) {user_ids!r} have the wrong Redis type;"
                         " delete the user to reset its state")
        self.user_ids = user_ids


class StateConflictError(RuntimeError):
    """A user's state kept changing under us for `retry_limit` attempts."""

    def __init__(self, user_id: str, attempts: int) -> None:
        super().__init__(f"user {user_id!r}: state changed concurrently {attempts} times in a row;"
                         " retry the request")
        self.user_id, self.attempts = user_id, attempts
