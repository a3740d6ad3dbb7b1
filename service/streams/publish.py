"""The event streams: partitioning by user, key names, consumer-group setup and the producer.

Interactions arrive in P Redis Streams, `PREFIX:events:{p}` for p = 0..P-1. A user's events always go
to partition `crc32(user_id) mod P`, so they stay in order while several workers share the partitions.
Each entry holds four string fields:

    user_id    the user's external id
    item_id    the item's external id (must be in the model's vocabulary)
    event_id   unique per event; a redelivered entry is recognised by it and applied at most once
    timestamp  seconds since the epoch as a decimal string, or "" when unknown

Entries a worker cannot apply go to the partition's dead-letter stream `PREFIX:events:{p}:dead` with
the reason and the original fields. Partition p's keys share the hash tag `{p}`, so in Redis Cluster a
worker can dead-letter and acknowledge an entry in one transaction.

Applications publish with `publish_events` (redis-py, synchronous) or `publish_events_async`
(redis.asyncio); both validate every event first and publish nothing if one is malformed.
"""
from __future__ import annotations

import uuid
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

EVENT_FIELDS = ("user_id", "item_id", "event_id", "timestamp")
DEFAULT_GROUP = "cmnrec-workers"
MAX_PARTITIONS = 1024


def partition_of(user_id: str, partitions: int) -> int:
    """The partition of a user: crc32 of the UTF-8 id mod P.

    Stable across processes, machines and Python versions (Python's own `hash` of a str is
    randomised per process, so it cannot be used here).
    """
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions: must be in [1, {MAX_PARTITIONS}], got {partitions}")
    return zlib.crc32(user_id.encode("utf-8")) % partitions


@dataclass(frozen=True)
class StreamKeys:
    """Key builder for the streams of one prefix (the same prefix as the user keys)."""

    prefix: str = "cmnrec"

    def stream(self, partition: int) -> str:
        """The event stream of one partition."""
        return f"{self.prefix}:events:{{{partition}}}"

    def dead_letter(self, partition: int) -> str:
        """The dead-letter stream of one partition."""
        return f"{self.prefix}:events:{{{partition}}}:dead"

    def lease(self, partition: int) -> str:
        """The lease (string: owner consumer name, with a TTL) of one partition."""
        return f"{self.prefix}:events:{{{partition}}}:owner"

    def workers(self) -> str:
        """Sorted set of live worker names, scored by their last heartbeat (ms since the epoch)."""
        return f"{self.prefix}:workers"


@dataclass(frozen=True)
class StreamEvent:
    """One interaction as it travels through a stream (all fields already validated)."""

    user_id: str
    item_id: str
    event_id: str
    timestamp: float | None = None

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields."""
        return {"user_id": self.user_id, "item_id": self.item_id, "event_id": self.event_id,
                "timestamp": "" if self.timestamp is None else repr(float(self.timestamp))}


class MalformedEvent(ValueError):
    """An event or stream entry that cannot be applied; `field` names the culprit, `code` the kind."""

    def __init__(self, code: str, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.code = code
        self.field = field


def _text(value: Any, field: str, max_length: int) -> str:
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedEvent("malformed", field, "is not valid UTF-8") from None
    if not isinstance(value, str):
        raise MalformedEvent("malformed", field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise MalformedEvent("malformed", field, "is empty")
    if len(value) > max_length:
        raise MalformedEvent("malformed", field, f"is longer than {max_length} characters")
    return value


def _timestamp(value: Any) -> float | None:
    if value is None or value == "" or value == b"":
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, bool):
        raise MalformedEvent("malformed", "timestamp", "must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MalformedEvent("malformed", "timestamp", f"is not a number: {value!r}") from None
    if number != number or number in (float("inf"), float("-inf")):
        raise MalformedEvent("malformed", "timestamp", "must be finite")
    return number


def parse_event(fields: Mapping[Any, Any], max_id_length: int = 256) -> StreamEvent:
    """Validate a stream entry's (or an application's) fields into a `StreamEvent`.

    Raises `MalformedEvent` naming the first bad field. `event_id` is required here: producers add
    one before publishing, so an entry without it did not come from `publish_events`.
    """
    decoded = {(k.decode("utf-8", errors="replace") if isinstance(k, bytes) else k): v
               for k, v in fields.items()}
    for name in ("user_id", "item_id", "event_id"):
        if name not in decoded:
            raise MalformedEvent("malformed", name, "is missing")
    return StreamEvent(user_id=_text(decoded["user_id"], "user_id", max_id_length),
                       item_id=_text(decoded["item_id"], "item_id", max_id_length),
                       event_id=_text(decoded["event_id"], "event_id", max_id_length),
                       timestamp=_timestamp(decoded.get("timestamp")))


def prepare_events(events: Iterable[Mapping[str, Any]], max_id_length: int = 256) -> list[StreamEvent]:
    """Validate application events, generating a random event id where one is missing.

    The id is generated once, before publishing, so that a redelivered entry keeps it and is
    recognised as a duplicate. Raises `MalformedEvent` (with the event's index) on the first bad one.
    """
    prepared = []
    for index, event in enumerate(events):
        fields = dict(event)
        if fields.get("event_id") in (None, ""):
            fields["event_id"] = uuid.uuid4().hex
        try:
            prepared.append(parse_event(fields, max_id_length))
        except MalformedEvent as error:
            raise MalformedEvent(error.code, f"events[{index}].{error.field}",
                                 str(error).split(": ", 1)[1]) from None
    return prepared


def publish_events(client: redis.Redis, events: Iterable[Mapping[str, Any]], *, partitions: int,
                   prefix: str = "cmnrec", max_id_length: int = 256) -> list[str]:
    """Publish interactions to the partitioned streams; returns the stream entry ids, in input order.

    Each event is a mapping {user_id, item_id, event_id?, timestamp?}; a missing event_id is generated.
    `partitions` must equal the workers' P. One round trip (a non-transactional pipeline); all events
    are validated before anything is sent. Example:

        publish_events(redis.Redis.from_url(url), [{"user_id": "42", "item_id": "302"}], partitions=8)
    """
    prepared = prepare_events(events, max_id_length)
    keys = StreamKeys(prefix)
    pipe = client.pipeline(transaction=False)
    for event in prepared:
        pipe.xadd(keys.stream(partition_of(event.user_id, partitions)), event.to_fields())
    return [_entry_id(entry_id) for entry_id in pipe.execute()] if prepared else []


async def publish_events_async(client: redis.asyncio.Redis, events: Iterable[Mapping[str, Any]], *,
                               partitions: int, prefix: str = "cmnrec",
                               max_id_length: int = 256) -> list[str]:
    """`publish_events` for redis.asyncio clients."""
    prepared = prepare_events(events, max_id_length)
    keys = StreamKeys(prefix)
    pipe = client.pipeline(transaction=False)
    for event in prepared:
        pipe.xadd(keys.stream(partition_of(event.user_id, partitions)), event.to_fields())
    return [_entry_id(entry_id) for entry_id in await pipe.execute()] if prepared else []


def _entry_id(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


async def ensure_groups(client: redis.asyncio.Redis, keys: StreamKeys, partitions: Sequence[int],
                        group: str = DEFAULT_GROUP) -> None:
    """Create the consumer group on each partition's stream (and the stream) if missing.

    A new group starts at id 0, so events published before the first worker started are consumed too.
    """
    for partition in partitions:
        try:
            await client.xgroup_create(keys.stream(partition), group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise
