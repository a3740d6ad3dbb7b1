"""The producer side of the event streams, and consumer-group setup.

Applications publish with `publish_events` (redis-py, synchronous) or `publish_events_async`
(redis.asyncio); both validate every event first (service/streams/records.py) and publish nothing if
one is malformed. Entries a worker cannot apply go to the partition's dead-letter stream
`PREFIX:events:{p}:dead`; partition p's keys share the hash tag `{p}`, so in Redis Cluster a worker
can dead-letter and acknowledge an entry in one transaction.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
import redis.asyncio

from service.state.keys import KeySchema
from service.streams.records import entry_fields, partition_of, prepare_events

DEFAULT_GROUP = "cmnrec-workers"


def publish_events(client: redis.Redis, events: Iterable[Mapping[str, Any]], *, partitions: int,
                   prefix: str = "cmnrec", max_id_length: int = 256) -> list[str]:
    """Publish interactions to the partitioned streams; returns the stream entry ids, in input order.

    Each event is a mapping {user_id, item_id, event_id?, timestamp?}; a missing event_id is generated.
    `partitions` must equal the workers' P. One round trip (a non-transactional pipeline); all events
    are validated before anything is sent. Example:

        publish_events(redis.Redis.from_url(url), [{"user_id": "42", "item_id": "302"}], partitions=8)
    """
    prepared = prepare_events(events, max_id_length)
    keys = KeySchema(prefix)
    pipe = client.pipeline(transaction=False)
    for event in prepared:
        pipe.xadd(keys.stream(partition_of(event.user_id, partitions)), entry_fields(event))
    return [_entry_id(entry_id) for entry_id in pipe.execute()] if prepared else []


async def publish_events_async(client: redis.asyncio.Redis, events: Iterable[Mapping[str, Any]], *,
                               partitions: int, prefix: str = "cmnrec",
                               max_id_length: int = 256) -> list[str]:
    """`publish_events` for redis.asyncio clients."""
    prepared = prepare_events(events, max_id_length)
    keys = KeySchema(prefix)
    pipe = client.pipeline(transaction=False)
    for event in prepared:
        pipe.xadd(keys.stream(partition_of(event.user_id, partitions)), entry_fields(event))
    return [_entry_id(entry_id) for entry_id in await pipe.execute()] if prepared else []


def _entry_id(entry_id: bytes | str) -> str:
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


async def ensure_groups(client: redis.asyncio.Redis, keys: KeySchema, partitions: Sequence[int],
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
