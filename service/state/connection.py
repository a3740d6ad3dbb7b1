"""The Redis client of the serving processes (API and stream worker)."""
from __future__ import annotations

from functools import cache
from typing import Any

import redis.asyncio as aioredis

from service.ops.settings import Settings


def open_redis(url: str, settings: Settings) -> aioredis.Redis:
    """A redis.asyncio client with its own blocking pool (the caller closes it with `aclose()`);
    for a cluster URL (service/state/cluster.py) a redis.asyncio RedisCluster.

    No automatic command retries: a retried compare-and-set whose reply was lost could apply an
    event without an event id twice; the caller gets StateStoreUnavailable (503) instead.
    """
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from service.state.cluster import is_cluster_url, open_cluster

    if is_cluster_url(url, settings):
        return open_cluster(url, settings)
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=settings.redis_max_connections,
        timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        socket_connect_timeout=settings.redis_timeout_seconds,
        retry=Retry(NoBackoff(), 0), decode_responses=False)
    pool.connection_class = hiredis_packing(pool.connection_class)
    return aioredis.Redis(connection_pool=pool)


@cache
def hiredis_packing(connection_class: type) -> type:
    """`connection_class` (TCP, TLS or Unix socket) packing commands with hiredis's C packer.

    redis-py's synchronous client packs with `hiredis.pack_command` when hiredis is installed; its
    asyncio Connection always packs in Python, argument by argument. The compare-and-set of a
    stream batch sends ~1,000 commands of ~19 arguments, and that packing was ~30% of the store's
    CPU per event (cProfile, bench/REPORT_NOTES.md section 9). Arguments hiredis refuses (bytearray,
    bool, ...) go to redis-py's own packer, which encodes them or raises its DataError as before.
    """
    try:
        from hiredis import pack_command
    except ImportError:  # hiredis is optional in redis-py: keep its Python packer
        return connection_class

    def pack_command_hiredis(self: Any, *args: Any) -> list[bytes]:
        first = args[0]
        if isinstance(first, str):
            args = (*first.encode().split(), *args[1:])
        elif isinstance(first, bytes) and b" " in first:
            args = (*first.split(), *args[1:])
        try:
            return [pack_command(args)]
        except TypeError:
            return connection_class.pack_command(self, *args)

    return type(f"Hiredis{connection_class.__name__}", (connection_class,),
                {"pack_command": pack_command_hiredis, "__doc__": hiredis_packing.__doc__})
