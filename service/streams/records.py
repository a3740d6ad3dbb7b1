"""Stream entries <-> domain events, and the partition of a user.

Interactions arrive in P Redis Streams, `PREFIX:events:{p}` for p = 0..P-1. A user's events always go
to partition `crc32(user_id) mod P`, so they stay in order while several workers share the partitions.
Each entry holds four string fields:

    user_id    the user's external id
    item_id    the item's external id (must be in the model's vocabulary)
    event_id   unique per event; a redelivered entry is recognised by it and applied at most once
    timestamp  seconds since the epoch as a decimal string, or "" when unknown

The record of an entry is the domain `Event` (service/state/domain.py) with its event id always set;
ids follow the one rule of `validate_id`, like the HTTP API's.
"""
from __future__ import annotations

import math
import uuid
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from service.state.domain import Event, InvalidEvent, validate_id

EVENT_FIELDS = ("user_id", "item_id", "event_id", "timestamp")
MAX_PARTITIONS = 1024


def partition_of(user_id: str, partitions: int) -> int:
    """The partition of a user: crc32 of the UTF-8 id mod P.

    Stable across processes, machines and Python versions (Python's own `hash` of a str is
    randomised per process, so it cannot be used here).
    """
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions: must be in [1, {MAX_PARTITIONS}], got {partitions}")
    return zlib.crc32(user_id.encode("utf-8")) % partitions


def entry_fields(event: Event) -> dict[str, str]:
    """A stream entry's fields for an event (whose event id is set)."""
    return {"user_id": event.user_id, "item_id": event.item_id, "event_id": event.event_id or "",
            "timestamp": "" if event.timestamp is None else repr(float(event.timestamp))}


def _timestamp(value: Any) -> float | None:
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, bool):
        raise InvalidEvent("malformed", "timestamp", "must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InvalidEvent("malformed", "timestamp", f"is not a number: {value!r}") from None
    if not math.isfinite(number):
        raise InvalidEvent("malformed", "timestamp", "must be finite")
    return number


def parse_entry(fields: Mapping[Any, Any], max_id_length: int = 256) -> Event:
    """Validate a stream entry's (or an application's) fields into an Event.

    Raises InvalidEvent naming the first bad field. `event_id` is required here: producers add
    one before publishing, so an entry without it did not come from `publish_events`.
    """
    decoded = {(k.decode("utf-8", errors="replace") if isinstance(k, bytes) else k): v
               for k, v in fields.items()}
    for name in ("user_id", "item_id", "event_id"):
        if name not in decoded:
            raise InvalidEvent("malformed", name, "is missing")
    return Event(user_id=validate_id(decoded["user_id"], "user_id", max_id_length),
                 item_id=validate_id(decoded["item_id"], "item_id", max_id_length),
                 event_id=validate_id(decoded["event_id"], "event_id", max_id_length),
                 timestamp=_timestamp(decoded.get("timestamp")))


def prepare_events(events: Iterable[Mapping[str, Any]], max_id_length: int = 256) -> list[Event]:
    """Validate application events, generating a random event id where one is missing.

    The id is generated once, before publishing, so that a redelivered entry keeps it and is
    recognised as a duplicate. Raises InvalidEvent (with the event's index) on the first bad one.
    """
    prepared = []
    for index, event in enumerate(events):
        fields = dict(event)
        if fields.get("event_id") in (None, ""):
            fields["event_id"] = uuid.uuid4().hex
        try:
            prepared.append(parse_entry(fields, max_id_length))
        except InvalidEvent as error:
            raise InvalidEvent(error.code, f"events[{index}].{error.field}",
                               error.message) from None
    return prepared
